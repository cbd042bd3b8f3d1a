"""Attribution speed: deepscope vs captum (its fastest settings) vs the bare model, in one run.

    nice python bench/bench_attribution.py [--model PATH] [--images 8] [--threads 2]

Methods: occlusion (16 px window, stride 8: 729 windows at 224 px), SmoothGrad (n=25), Integrated
Gradients (50 steps), gradient saliency. For each image the three contenders run back to back, so load
from other processes on a shared machine hits them alike; ratios are measured in the same run.
"bare" is the model alone doing the same passes: the occluded batches' forwards under
``torch.inference_mode()``, or forward + backward to the input in batches for the gradient methods.
Also prints the largest difference from captum's maps, relative to the map's largest value.
With ``--repeat R`` each contender runs R times per image, interleaved, and the fastest run counts
(robust to bursts of load on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from deepscope.attribution import Gradient, IntegratedGradients, Occlusion, SmoothGrad
from deepscope.images import load_inputs, scan_images
from deepscope.models.zoo import load_model

DATA = Path(os.environ.get("DEEPSCOPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_MODEL = DATA / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite"


def load(spec: str):
    try:
        return load_model(spec)
    except Exception as error:  # the TFLite importer may not be merged yet
        print(f"# could not load {spec} ({type(error).__name__}: {str(error)[:80]}); using the default model")
        return load_model("default")


def photos(loaded, count: int) -> torch.Tensor:
    """One photo from each of the first ``count`` in20 class folders (or the built-in photos)."""
    if (DATA / "in20").is_dir():
        found = scan_images(DATA / "in20", loaded.classes)
        firsts = {}
        for path, folder in zip(found.paths, found.folders):
            firsts.setdefault(folder, path)
        paths = list(firsts.values())[:count]
    else:
        from deepscope.sample_images import builtin_images
        paths = builtin_images().paths[:count]
    return load_inputs(paths, loaded.preprocess)


def bare_forwards(model, x, count, batch_size):
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            model(x.expand(min(batch_size, count - start), -1, -1, -1).clone())


def bare_backwards(model, x, target, count, batch_size):
    for start in range(0, count, batch_size):
        batch = x.expand(min(batch_size, count - start), -1, -1, -1).clone().requires_grad_(True)
        torch.autograd.grad(model(batch)[:, target].sum(), batch)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--images", type=int, default=8, help="photos to explain (default 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="occlusion,smoothgrad,ig,gradient")
    parser.add_argument("--batch-size", type=int, default=64, help="occluded images per forward (both libraries)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each contender this many times per image (interleaved) and keep the fastest")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import captum.attr as captum

    loaded = load(args.model)
    model = loaded.model.eval()
    x = photos(loaded, args.images)
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    print(f"# {loaded.name} ({loaded.source}); {len(x)} photos at {x.shape[-1]} px; {args.threads} threads; "
          f"torch {torch.__version__}; captum {sys.modules['captum'].__version__}")

    def contenders(name, xi, t):
        """(deepscope, captum, bare) thunks for one image."""
        if name == "occlusion":
            ours = Occlusion(model, window=16, stride=8, batch_size=args.batch_size)
            count = len(range(0, xi.shape[-1] - 15, 8)) * len(range(0, xi.shape[-2] - 15, 8))
            return (lambda: ours(xi, target=t)[:, 0],
                    lambda: captum.Occlusion(model).attribute(xi, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                              baselines=0, target=t,
                                                              perturbations_per_eval=args.batch_size)[:, 0],
                    lambda: bare_forwards(model, xi, count, args.batch_size), ours)
        if name == "smoothgrad":
            sigma = 0.15 * float(xi.max() - xi.min())
            ours = SmoothGrad(Gradient(model, absolute=False), n=25, noise=0.15, batch_size=25)
            return (lambda: ours(xi, target=t),
                    lambda: captum.NoiseTunnel(captum.Saliency(model)).attribute(
                        xi, nt_type="smoothgrad", nt_samples=25, nt_samples_batch_size=25, stdevs=sigma, target=t,
                        abs=False),
                    lambda: bare_backwards(model, xi, t, 25, 25), None)
        if name == "ig":
            ours = IntegratedGradients(model, steps=50, batch_size=50)
            return (lambda: ours(xi, target=t),
                    lambda: captum.IntegratedGradients(model).attribute(xi, target=t, n_steps=50, internal_batch_size=50),
                    lambda: bare_backwards(model, xi, t, 50, 50), None)
        ours = Gradient(model, absolute=False)
        return (lambda: ours(xi, target=t), lambda: captum.Saliency(model).attribute(xi, target=t, abs=False),
                lambda: bare_backwards(model, xi, t, 1, 1), None)

    # warm-up: first calls pay for allocations and kernel selection
    bare_forwards(model, x[:1], args.batch_size, args.batch_size)
    bare_backwards(model, x[:1], targets[0], 50, 50)
    for name in ("gradient", "smoothgrad"):
        for thunk in contenders(name, x[:1], targets[0])[:3]:
            thunk()
    print(f"{'method':<11} {'deepscope s/img':>15} {'captum s/img':>13} {'bare s/img':>11} "
          f"{'captum/deepscope':>17} {'deepscope/bare':>15} {'max rel diff':>13}  notes")
    for name in [m.strip() for m in args.methods.split(",")]:
        totals, diff, notes = [0.0, 0.0, 0.0], 0.0, ""
        for i in range(len(x)):
            xi, t = x[i:i + 1], targets[i]
            ours, theirs, bare, method = contenders(name, xi, t)
            best = [float("inf")] * 3
            for _ in range(args.repeat):  # interleaved, so a burst of load from elsewhere hits one round
                t_ours, a = timed(ours)
                t_theirs, b = timed(theirs)
                t_bare, _ = timed(bare)
                best = [min(old, new) for old, new in zip(best, (t_ours, t_theirs, t_bare))]
            for k, value in enumerate(best):
                totals[k] += value
            if name != "smoothgrad":  # different random noise: no exact comparison
                diff = max(diff, float((a - b).abs().max() / b.abs().max()))
            if method is not None:
                notes = f"cut at {method.cut_layer_}" if method.cut_layer_ else "full forwards"
        ours_s, theirs_s, bare_s = (value / len(x) for value in totals)
        shown_diff = f"{diff:.1e}" if name != "smoothgrad" else "(noise)"
        print(f"{name:<11} {ours_s:>15.3f} {theirs_s:>13.3f} {bare_s:>11.3f} {theirs_s / ours_s:>16.2f}x "
              f"{ours_s / bare_s:>14.2f}x {shown_diff:>13}  {notes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
