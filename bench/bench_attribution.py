"""Attribution speed: deepscope vs captum (its fastest settings) vs the bare model, in one run.

    nice python bench/bench_attribution.py [--model PATH] [--images 8] [--threads 2] [--repeat 2] [--fast-malloc]

Methods: occlusion (16 px window, stride 8: 729 windows at 224 px), SmoothGrad (n=25), Integrated
Gradients (50 steps), gradient saliency, on ``--images`` photos of in20 (one per class) at 224 px.

- Gradient, SmoothGrad and Integrated Gradients get all photos as one batch, as a user of a batch-first
  library calls them. Each contender runs with each of a few rows-per-pass settings (deepscope's
  ``batch_size``, captum's ``nt_samples_batch_size`` / ``internal_batch_size``, the bare passes' chunk) and
  the fastest counts; the table names it.
- Occlusion runs image by image (both libraries work per image), ``--batch-size`` windows per forward.
- "bare" is the model alone doing the passes the method needs: forward + backward to the input for the
  gradient methods, the occluded images' forwards under ``torch.inference_mode()`` for occlusion.
- Each round runs every contender and setting once, interleaved, so a burst of load from other processes
  hits one round; the fastest of ``--repeat`` rounds (at least 5 for the one-pass gradient) counts. Ratios
  are measured in the same run.
- ``--fast-malloc`` re-runs the script with glibc keeping freed memory (see ``allocator.py``); on machines
  where page faults are expensive it speeds up every contender, and the ratios change.
Also prints the largest difference from captum's maps, relative to the map's largest value.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from allocator import malloc_regime, use_fast_malloc
from deepscope.attribution import Gradient, IntegratedGradients, Occlusion, SmoothGrad
from deepscope.images import load_inputs, scan_images
from deepscope.models.zoo import load_model

DATA = Path(os.environ.get("DEEPSCOPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_MODEL = DATA / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite"
TARGETS = {"occlusion": 5.0, "smoothgrad": 2.5, "ig": 1.3, "gradient": 1.3}


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
    """``count`` forwards of each image (in batches of ``batch_size``), as occlusion needs."""
    with torch.inference_mode():
        for image in x.split(1):
            for start in range(0, count, batch_size):
                model(image.expand(min(batch_size, count - start), -1, -1, -1).clone())


def bare_backwards(model, x, targets, copies, batch_size):
    """Forward + backward to the input for ``copies`` copies of each image, ``batch_size`` rows per pass."""
    rows, row_targets = x.repeat_interleave(copies, 0), targets.repeat_interleave(copies)
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size].clone().requires_grad_(True)
        scores = model(batch).gather(1, row_targets[start:start + batch_size, None])
        torch.autograd.grad(scores.sum(), batch)


def contenders(name, model, x, targets, args):
    """{contender: {setting: thunk over all photos}} for one method; the thunks return maps (or None)."""
    n = len(x)
    import captum.attr as captum
    if name == "occlusion":
        ours = Occlusion(model, window=16, stride=8, batch_size=args.batch_size)
        count = len(range(0, x.shape[-1] - 15, 8)) * len(range(0, x.shape[-2] - 15, 8))
        theirs = captum.Occlusion(model)
        return {
            "deepscope": {f"batch_size={args.batch_size}": lambda: torch.cat(
                [ours(x[i:i + 1], target=targets[i:i + 1]) for i in range(n)])[:, 0]},
            "captum": {f"perturbations_per_eval={args.batch_size}": lambda: torch.cat(
                [theirs.attribute(x[i:i + 1], sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0,
                                  target=int(targets[i]), perturbations_per_eval=args.batch_size)
                 for i in range(n)])[:, 0]},
            "bare": {f"batch {args.batch_size}": lambda: bare_forwards(model, x, count, args.batch_size)},
        }, ours
    if name == "smoothgrad":
        sigma = 0.15 * float(x.max() - x.min())
        return {
            "deepscope": {f"batch_size={rows}": (lambda rows=rows: SmoothGrad(
                Gradient(model, absolute=False), n=25, noise=0.15, batch_size=rows)(x, target=targets))
                for rows in (25, 25 * n)},
            "captum": {f"nt_samples_batch_size={per}": (lambda per=per: captum.NoiseTunnel(captum.Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=25, nt_samples_batch_size=per, stdevs=sigma, target=targets,
                abs=False)) for per in (max(1, 25 // n), 25)},
            "bare": {f"{rows} rows": (lambda rows=rows: bare_backwards(model, x, targets, 25, rows))
                     for rows in (25, 25 * n)},
        }, None
    if name == "ig":
        return {
            "deepscope": {f"batch_size={rows}": (lambda rows=rows: IntegratedGradients(
                model, steps=50, batch_size=rows)(x, target=targets)) for rows in (50, 200)},
            "captum": {f"internal_batch_size={rows}": (lambda rows=rows: captum.IntegratedGradients(model).attribute(
                x, target=targets, n_steps=50, internal_batch_size=rows)) for rows in (50, 200)},
            "bare": {f"{rows} rows": (lambda rows=rows: bare_backwards(model, x, targets, 50, rows))
                     for rows in (50, 200)},
        }, None
    ours = Gradient(model, absolute=False)
    return {
        "deepscope": {"one batch": lambda: ours(x, target=targets)},
        "captum": {"one batch": lambda: captum.Saliency(model).attribute(x, target=targets, abs=False)},
        "bare": {"one batch": lambda: bare_backwards(model, x, targets, 1, n)},
    }, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--images", type=int, default=8, help="photos to explain (default 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="occlusion,smoothgrad,ig,gradient")
    parser.add_argument("--batch-size", type=int, default=64, help="occluded images per forward (both libraries)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the fastest counts")
    parser.add_argument("--fast-malloc", action="store_true", help="run with glibc keeping freed memory")
    args = parser.parse_args(argv)
    if args.fast_malloc:
        use_fast_malloc()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    import captum

    loaded = load_model(args.model)
    model = loaded.model.eval()
    x = photos(loaded, args.images)
    with torch.no_grad():
        targets = model(x).argmax(1)
    print(f"# {loaded.name} ({loaded.source}); {len(x)} photos at {x.shape[-1]} px; {args.threads} threads; "
          f"torch {torch.__version__}; captum {captum.__version__}\n# {malloc_regime()}")

    # warm-up: first calls at a batch shape pay for allocations and kernel selection
    for thunk in contenders("gradient", model, x, targets, args)[0].values():
        next(iter(thunk.values()))()
    print(f"{'method':<11} {'deepscope s/img':>15} {'captum s/img':>13} {'bare s/img':>11} "
          f"{'captum/deepscope':>17} {'deepscope/bare':>15} {'max rel diff':>13}  settings (fastest)")
    for name in [m.strip() for m in args.methods.split(",")]:
        table, method = contenders(name, model, x, targets, args)
        best = {(who, setting): float("inf") for who, settings in table.items() for setting in settings}
        maps = {}
        for _ in range(max(args.repeat, 5) if name == "gradient" else args.repeat):  # one pass: noisy
            for who, settings in table.items():
                for setting, thunk in settings.items():
                    start = time.perf_counter()
                    result = thunk()
                    best[who, setting] = min(best[who, setting], time.perf_counter() - start)
                    if result is not None:
                        maps[who] = result
        fastest = {who: min(((best[who, s], s) for s in settings)) for who, settings in table.items()}
        ours_s, theirs_s, bare_s = (fastest[who][0] / len(x) for who in ("deepscope", "captum", "bare"))
        if name == "smoothgrad":  # different random noise: no exact comparison
            shown_diff = "(noise)"
        else:
            shown_diff = f"{float((maps['deepscope'] - maps['captum']).abs().max() / maps['captum'].abs().max()):.1e}"
        notes = f"deepscope {fastest['deepscope'][1]}, captum {fastest['captum'][1]}"
        if method is not None:
            notes += f"; cut at {method.cut_layer_}" if method.cut_layer_ else "; full forwards"
        ratio = theirs_s / ours_s
        verdict = "met" if ratio >= TARGETS.get(name, 0) else "NOT met"
        print(f"{name:<11} {ours_s:>15.3f} {theirs_s:>13.3f} {bare_s:>11.3f} {ratio:>16.2f}x "
              f"{ours_s / bare_s:>14.2f}x {shown_diff:>13}  {notes}; target {TARGETS.get(name)}x {verdict}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
