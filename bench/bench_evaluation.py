"""Seconds per image of deletion and insertion against the bare model's forward cost.

Both curves run ``steps + 1`` forward passes per image (plus one pass over the unperturbed images to
fix the target). The bare cost is the model's batched forward over the same number of inputs, under
``torch.inference_mode()``, in chunks of the same batch size. The ratio is the overhead of building
the perturbed inputs and reading probabilities (target: below 1.3x). Every timing is the best of
``--repeats`` interleaved runs, so load from other processes on a shared machine partly cancels.

Run: ``PYTHONPATH=src nice python bench/bench_evaluation.py [--model default] [--images 4] [--steps 50]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from deepscope.attribution import Gradient
from deepscope.evaluation import deletion_curve, insertion_curve
from deepscope.images import load_inputs, scan_images
from deepscope.models.zoo import load_model
from deepscope.probe import Probe
from deepscope.sample_images import builtin_images


def photos(count: int) -> list[Path]:
    """Real photos: in20 under $DEEPSCOPE_DATA (one per class) or the built-in ones."""
    data = Path(os.environ.get("DEEPSCOPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if (data / "in20").is_dir():
        images = scan_images(data / "in20")
        firsts = {}
        for path, folder in zip(images.paths, images.folders):
            firsts.setdefault(folder, path)
        paths = list(firsts.values())
    else:
        paths = builtin_images().paths
    return (paths * count)[:count]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    loaded = load_model(args.model)
    model = loaded.model.to(args.device)
    inputs = load_inputs(photos(args.images), loaded.preprocess).to(args.device)
    with torch.enable_grad():
        maps = Gradient(model)(inputs)
    evaluations = args.images * (args.steps + 1)
    # the bare model on the same number of inputs, in the same chunks
    bare_inputs = inputs.repeat_interleave(args.steps + 1, dim=0)

    def bare():
        with Probe(model, detach=True), torch.inference_mode():
            for chunk in bare_inputs.split(args.batch_size):
                model(chunk)

    def deletion():
        deletion_curve(model, inputs, maps, steps=args.steps, batch_size=args.batch_size)

    def insertion():
        insertion_curve(model, inputs, maps, steps=args.steps, batch_size=args.batch_size)

    bare()  # warm-up
    timings = {"bare forward": [], "deletion": [], "insertion": []}
    for _ in range(args.repeats):  # interleaved, so slow phases of a shared machine hit all three
        for name, fn in (("bare forward", bare), ("deletion", deletion), ("insertion", insertion)):
            timings[name].append(best_time(fn, 1))
    best = {name: min(values) for name, values in timings.items()}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{loaded.name} on {device}: {args.images} images x {args.steps + 1} evaluations, batch {args.batch_size}, "
          f"best of {args.repeats}")
    for name, seconds in best.items():
        ratio = "" if name == "bare forward" else f"  {seconds / best['bare forward']:.2f}x the bare forward"
        print(f"  {name:<13} {seconds / args.images:8.3f} s/image  ({evaluations / seconds:7.1f} evaluations/s){ratio}")


if __name__ == "__main__":
    main()
