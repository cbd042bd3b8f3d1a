"""Speed of issue 15's methods: deepscope vs pytorch-grad-cam / captum (their fastest settings) vs the bare model.

    nice python bench/bench_methods.py [--model PATH] [--images 2] [--masks 4000] [--threads 2] [--repeat 3]
                                       [--sections ablation,rise,cams,shap] [--fast-malloc]

Photos: one from each of the first ``--images`` in20 class folders at 224 px; every map explains the
predicted class at the default CAM layer. Sections:

- ``ablation``: Ablation-CAM, deepscope (``batch_size`` 32, 64, 128) against pytorch-grad-cam's ``AblationCAM``
  (``batch_size`` 32, its default, and 64, 128), image by image as both libraries work. Both run only part of
  the model per ablation (pytorch-grad-cam swaps the layer's module for its ablation layer, so the layers up to
  it still run on every batch; deepscope, where the model allows, runs none of them), so there is no single
  bare-model figure to set beside them. Target: deepscope >= 2x faster.
- ``rise``: RISE with ``--masks`` masks (the paper's 4,000) at ``--rise-batch-size`` masked images per pass,
  against the bare model doing the same number of forwards of the same batch size under
  ``torch.inference_mode()``, in the faster channels-last layout (1.7x the default layout for MobileNet-V2 on
  the development machine; RISE uses it too). Target: RISE <= 1.1x the bare forwards.
- ``cams``: the one-pass CAMs (HiResCAM, XGrad-CAM, Eigen-CAM) and FullGrad against pytorch-grad-cam's
  (for FullGrad pytorch-grad-cam's layer test is widened to subclasses, else it skips the import's
  ``Conv2dSame`` layers and does less work); informative, no target.
- ``shap``: GradientSHAP (16 samples, noise 0.1 of the range, 4 reference photos) against captum's
  ``GradientShap`` (its draws come from the global RNGs, so the maps differ by the draws); informative.

Every contender runs in this process with ``--threads`` threads; each round runs every contender and
setting once, interleaved, so a burst of load from other processes hits one round; the fastest of
``--repeat`` rounds counts (after one warm-up call each). ``--fast-malloc`` re-runs the script with glibc
keeping freed memory (see ``allocator.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from allocator import malloc_regime, use_fast_malloc
from deepscope.attribution import RISE, AblationCAM, EigenCAM, FullGrad, GradientSHAP, HiResCAM, XGradCAM
from deepscope.attribution.cam import default_cam_layer
from deepscope.images import load_inputs, scan_images
from deepscope.models.zoo import load_model
from deepscope.probe import Probe, get_layer

DATA = Path(os.environ.get("DEEPSCOPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_MODEL = DATA / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite"


def first_photos(loaded, count: int, skip: int = 0) -> torch.Tensor:
    """One photo from each of in20's class folders ``skip`` to ``skip + count``."""
    found = scan_images(DATA / "in20", loaded.classes)
    firsts = {}
    for path, folder in zip(found.paths, found.folders):
        firsts.setdefault(folder, path)
    return load_inputs(list(firsts.values())[skip:skip + count], loaded.preprocess)


def fastest(table: dict, repeat: int) -> dict:
    """{(contender, setting): fastest seconds} over ``repeat`` interleaved rounds, after one warm-up call each."""
    for settings in table.values():
        for thunk in settings.values():
            thunk()
    best = {(who, setting): float("inf") for who, settings in table.items() for setting in settings}
    for _ in range(repeat):
        for who, settings in table.items():
            for setting, thunk in settings.items():
                start = time.perf_counter()
                thunk()
                best[who, setting] = min(best[who, setting], time.perf_counter() - start)
    return best


def report(title: str, table: dict, best: dict, per: int, unit: str = "s/img") -> dict:
    """Print each contender's fastest setting; return {contender: seconds per item}."""
    print(f"\n{title}")
    result = {}
    for who, settings in table.items():
        seconds, setting = min((best[who, s], s) for s in settings)
        result[who] = seconds / per
        print(f"  {who:<28} {seconds / per:9.3f} {unit}   ({setting})")
    return result


def pgc_cam(cam_class, model, layer, x, targets, **settings):
    def run():
        with cam_class(model, [get_layer(model, layer)] if layer else []) as cam:
            for key, value in settings.items():
                setattr(cam, key, value)
            cam(x, targets)
    return run


def clear_grads(model: nn.Module) -> None:
    for parameter in model.parameters():  # pytorch-grad-cam and captum leave gradients on the weights
        parameter.grad = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL) if DEFAULT_MODEL.exists() else "default")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--masks", type=int, default=4000, help="RISE masks per image (the paper's 4,000)")
    parser.add_argument("--rise-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the fastest counts")
    parser.add_argument("--sections", default="ablation,rise,cams,shap")
    parser.add_argument("--fast-malloc", action="store_true", help="run with glibc keeping freed memory")
    args = parser.parse_args(argv)
    if args.fast_malloc:
        use_fast_malloc()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import captum
    import captum.attr
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    loaded = load_model(args.model)
    model = loaded.model.eval()
    x = first_photos(loaded, args.images)
    with torch.no_grad():
        classes = model(x).argmax(1)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    layer = default_cam_layer(model, x)
    with Probe(model, [layer], detach=True) as probe, torch.inference_mode():
        probe(x[:1])
        channels = probe.activations[layer].shape[1]
    sections = [s.strip() for s in args.sections.split(",")]
    print(f"# {loaded.name} ({loaded.source}); {len(x)} photos at {x.shape[-1]} px; layer {layer} ({channels} "
          f"channels); {args.threads} threads; torch {torch.__version__}; captum {captum.__version__}; "
          f"fastest of {args.repeat} interleaved rounds\n# {malloc_regime()}")

    if "ablation" in sections:
        def ours(batch_size):
            method = AblationCAM(model, layer=layer, batch_size=batch_size)
            return lambda: [method(x[i:i + 1], classes[i:i + 1]) for i in range(len(x))]

        table = {"deepscope AblationCAM": {f"batch_size={b}": ours(b) for b in (32, 64, 128)},
                 "pytorch-grad-cam AblationCAM": {
                     f"batch_size={b}": (lambda b=b: [pgc_cam(pgc.AblationCAM, model, layer, x[i:i + 1],
                                                              targets[i:i + 1], batch_size=b)()
                                                      for i in range(len(x))]) for b in (32, 64, 128)}}
        times = report(f"Ablation-CAM at {layer}, image by image", table, fastest(table, args.repeat), len(x))
        ratio = times["pytorch-grad-cam AblationCAM"] / times["deepscope AblationCAM"]
        probe_method = AblationCAM(model, layer=layer)
        probe_method(x[:1], classes[:1])
        print(f"  deepscope is {ratio:.1f}x faster than pytorch-grad-cam (target >= 2: "
              f"{'met' if ratio >= 2 else 'NOT met'}); layers before {layer} run: {probe_method.prefix_runs_}")

    if "rise" in sections:
        b = args.rise_batch_size
        rise = RISE(model, n=args.masks, batch_size=b)

        def bare(layout):
            def run():
                with torch.inference_mode():
                    for image in x.split(1):
                        for start in range(0, args.masks, b):
                            model(image.expand(min(b, args.masks - start), -1, -1, -1).contiguous(memory_format=layout))
            return run

        table = {"deepscope RISE": {f"n={args.masks}, batch_size={b}": lambda: rise(x, classes)},
                 "bare forwards": {f"{args.masks} per image, batch {b}, channels-last": bare(torch.channels_last)}}
        times = report(f"RISE, {args.masks} masks", table, fastest(table, args.repeat), len(x))
        ratio = times["deepscope RISE"] / times["bare forwards"]
        print(f"  RISE takes {ratio:.3f}x the bare forwards (target <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'})")

    if "cams" in sections:
        import pytorch_grad_cam.fullgrad_cam as fullgrad_cam

        search = fullgrad_cam.find_layer_predicate_recursive
        fullgrad_cam.find_layer_predicate_recursive = lambda m, predicate: search(
            m, lambda module: isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and module.bias is not None)
        try:
            for ours, theirs, where in [(HiResCAM(model, layer=layer), pgc.HiResCAM, layer),
                                        (XGradCAM(model, layer=layer), pgc.XGradCAM, layer),
                                        (EigenCAM(model, layer=layer), pgc.EigenCAM, layer),
                                        (FullGrad(model), pgc.FullGrad, None)]:
                table = {f"deepscope {type(ours).__name__}": {"one batch": lambda ours=ours: ours(x, classes)},
                         f"pytorch-grad-cam {theirs.__name__}": {
                             "one batch": pgc_cam(theirs, model, where, x, targets)}}
                times = report(f"{type(ours).__name__}, batch of {len(x)}", table, fastest(table, args.repeat), len(x))
                first, second = times.values()
                print(f"  deepscope is {second / first:.1f}x faster")
                clear_grads(model)
        finally:
            fullgrad_cam.find_layer_predicate_recursive = search

    if "shap" in sections:
        references = first_photos(loaded, 4, skip=args.images)
        ours = GradientSHAP(model, references, n=16, noise=0.1, batch_size=32)
        sigma = 0.1 * float(x.max() - x.min())
        table = {"deepscope GradientSHAP": {"batch_size=32": lambda: ours(x, classes)},
                 "captum GradientShap": {"n_samples=16": lambda: captum.attr.GradientShap(model).attribute(
                     x, references, n_samples=16, stdevs=sigma, target=classes)}}
        times = report("GradientSHAP, 16 samples", table, fastest(table, args.repeat), len(x))
        first, second = times.values()
        print(f"  deepscope is {second / first:.1f}x faster")
        clear_grads(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
