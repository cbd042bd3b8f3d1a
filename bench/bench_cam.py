"""Time deepscope's CAMs against pytorch-grad-cam, captum's LayerGradCam and the bare model, in one run.

    nice python bench/bench_cam.py                       # imported MobileNet-V2 (or the default model)
    nice python bench/bench_cam.py --model default --skip-scorecam-peer

Photos: ``--images`` (8) from $DEEPSCOPE_DATA/in20, one per class, preprocessed to 224 px; 2 CPU threads.
Every map is computed for the predicted class at the same layer (the default CAM layer). Times are the
median of ``--repeats`` interleaved runs after one warm-up, per image. All libraries run in the same process, so
load from other processes on the machine slows them alike and the ratios stay comparable.

Score-CAM costs one forward per channel and image; pytorch-grad-cam's takes about a minute per image,
so Score-CAM runs on ``--scorecam-images`` (1) photo, ``--scorecam-repeats`` (1) times per batch size;
``--scorecam-layer features.14`` (160 channels) measures the same per-forward costs in a tenth of the time.
``--fast-malloc`` re-runs the script with glibc keeping freed memory (see ``allocator.py``): on machines where
page faults are expensive every library runs faster, and the ratios change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from allocator import malloc_regime, use_fast_malloc
from deepscope.attribution.cam import GradCAM, ScoreCAM, default_cam_layer
from deepscope.images import load_inputs, scan_images
from deepscope.models.zoo import load_model
from deepscope.probe import Probe, get_layer

DATA = Path(os.environ.get("DEEPSCOPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TFLITE = DATA / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite"


def default_model_spec() -> str:
    try:
        import deepscope.models.tflite  # noqa: F401
    except ImportError:
        return "default"
    return str(TFLITE) if TFLITE.exists() else "default"


def timed(functions: dict, repeats: int, warm_up: bool = True) -> dict:
    """Median seconds per call of each function: one warm-up each, then ``repeats`` interleaved rounds
    (so a burst of load from other processes hits every function alike)."""
    for fn in functions.values() if warm_up else ():
        fn()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model_spec())
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scorecam-images", type=int, default=1)
    parser.add_argument("--batch-sizes", default="8,16,64", help="deepscope Score-CAM batch sizes to try")
    parser.add_argument("--peer-batch-sizes", default="8,16,32,64", help="pytorch-grad-cam ScoreCAM batch sizes to try")
    parser.add_argument("--scorecam-layer", help="Score-CAM layer (default: the CAM layer); fewer channels run faster")
    parser.add_argument("--scorecam-repeats", type=int, default=1, help="interleaved Score-CAM rounds (no warm-up)")
    parser.add_argument("--skip-scorecam", action="store_true")
    parser.add_argument("--skip-scorecam-peer", action="store_true", help="skip pytorch-grad-cam's slow ScoreCAM")
    parser.add_argument("--fast-malloc", action="store_true", help="run with glibc keeping freed memory")
    args = parser.parse_args(argv)
    if args.fast_malloc:
        use_fast_malloc()
    torch.set_num_threads(args.threads)

    import pytorch_grad_cam as pgc
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    loaded = load_model(args.model)
    model = loaded.model
    images = scan_images(DATA / "in20")
    firsts = [images.labels.index(label) for label in sorted(set(images.labels))] if images.labelled else []
    picks = (firsts or list(range(len(images))))[:args.images]
    x = load_inputs([images.paths[i] for i in picks], loaded.preprocess)
    n = len(x)
    with torch.no_grad():  # not inference_mode: captum cannot use inference tensors as targets
        classes = model(x).argmax(1)
    layer = default_cam_layer(model, x)
    module = get_layer(model, layer)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    print(f"model {loaded.name} ({args.model}), layer {layer}, {n} photos of {tuple(x.shape[1:])}, "
          f"{args.threads} threads, torch {torch.__version__}, median of {args.repeats}\n{malloc_regime()}")

    def bare():
        with torch.inference_mode():
            model(x)

    ours = GradCAM(model, layer=layer)
    captum = LayerGradCam(model, module)

    def captum_gradcam():
        maps = captum.attribute(x, target=classes, relu_attributions=True)
        LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), "bilinear")

    def peer_gradcam():
        with pgc.GradCAM(model, [module]) as cam:
            cam(x, targets)

    def bare_channels_last():
        with torch.inference_mode():
            model(x.contiguous(memory_format=torch.channels_last))

    rows = list(timed({"bare model forward": bare,
                       "bare model forward, channels-last": bare_channels_last,
                       "deepscope GradCAM": lambda: ours.attribute(x, classes),
                       "captum LayerGradCam + upsample": captum_gradcam,
                       "pytorch-grad-cam GradCAM": peer_gradcam}, args.repeats).items())
    for parameter in model.parameters():
        parameter.grad = None  # captum and pytorch-grad-cam leave gradients on the weights
    print(f"\n{'Grad-CAM, batch of ' + str(n):34s} {'ms/image':>10s} {'x deepscope':>12s}")
    times = dict(rows)
    ours_time = times["deepscope GradCAM"]
    for name, seconds in rows:
        print(f"{name:34s} {1000 * seconds / n:10.1f} {seconds / ours_time:12.2f}")
    print(f"deepscope Grad-CAM: {times['pytorch-grad-cam GradCAM'] / ours_time:.1f}x faster than pytorch-grad-cam "
          f"(target >= 3), captum takes {times['captum LayerGradCam + upsample'] / ours_time:.2f}x as long "
          "(target >= 1)")

    if args.skip_scorecam:
        return 0
    k = args.scorecam_images
    xs, cs = x[:k], classes[:k]
    layer = args.scorecam_layer or layer
    module = get_layer(model, layer)
    print(f"\nScore-CAM at layer {layer} on {k} photo(s), median of {args.scorecam_repeats} interleaved runs, "
          "no warm-up (seconds per image)")
    bare_batch = x[:1].expand(64, -1, -1, -1).contiguous()
    with torch.inference_mode():
        model(bare_batch)
        per_forward = once(lambda: model(bare_batch)) / 64
    with torch.inference_mode():
        with Probe(model, [layer], detach=True) as probe:
            probe(xs)
            activation = probe.activations[layer]
    c = activation.shape[1]
    flat = activation.flatten(2)
    varying = int((flat.amax(2) > flat.amin(2)).sum())
    print(f"bare model, {c} forwards per image at batch 64: {per_forward * c:.1f} s "
          f"({varying / k:.0f} of {c} channels per image vary over space)")
    runs = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        method = ScoreCAM(model, layer=layer, batch_size=batch_size, progress=False)
        runs[f"deepscope ScoreCAM batch_size={batch_size}"] = lambda method=method: method.attribute(xs, cs)
    for batch_size in [] if args.skip_scorecam_peer else [int(b) for b in args.peer_batch_sizes.split(",")]:
        def peer_scorecam(batch_size=batch_size):
            with pgc.ScoreCAM(model, [module]) as cam:
                cam.batch_size = batch_size
                cam(xs, targets[:k])
        runs[f"pytorch-grad-cam ScoreCAM batch_size={batch_size}"] = peer_scorecam
    seconds = timed(runs, args.scorecam_repeats, warm_up=False)
    for name, value in seconds.items():
        print(f"{name:44s} {value / k:8.1f} s")
    best = min(v for name, v in seconds.items() if name.startswith("deepscope"))
    if args.skip_scorecam_peer:
        return 0
    peer_best = min(v for name, v in seconds.items() if name.startswith("pytorch"))
    print(f"deepscope Score-CAM (best batch size): {peer_best / best:.1f}x faster than pytorch-grad-cam "
          "at its best batch size (target >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
