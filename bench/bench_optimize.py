"""Seconds per optimisation step (class model) vs the bare model's forward+backward at the same size.

Both sides compute the gradient w.r.t. the input only (parameters frozen), at the model's input size
and the same batch; the runs alternate in rounds and the ratio is taken per round, so load from other
processes on a shared machine partly cancels. Prints the median ratio per preset (target: < 1.3).

    nice python bench/bench_optimize.py [--model default] [--batch 1] [--steps 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepscope.models.zoo import load_model
from deepscope.optimize import PRESETS, class_model


def bare_step(model, preprocess, batch: int, steps: int) -> float:
    for p in model.parameters():
        p.requires_grad_(False)
    start = time.perf_counter()
    for _ in range(steps):
        x = torch.rand(batch, 3, preprocess.input_size, preprocess.input_size, requires_grad=True)
        model(preprocess.normalize(x))[:, 1].sum().backward()
    return (time.perf_counter() - start) / steps


def preset_step(model, preprocess, batch: int, steps: int, preset: str) -> float:
    start = time.perf_counter()
    class_model(model, list(range(batch)), preprocess, preset=preset, steps=steps, progress=False)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--presets", default=",".join(PRESETS))
    args = parser.parse_args()
    loaded = load_model(args.model)
    model = loaded.model.eval()
    presets = args.presets.split(",")
    requires_grad = [p.requires_grad for p in model.parameters()]
    bare_step(model, loaded.preprocess, args.batch, 1)   # warm-up
    ratios: dict[str, list[float]] = {p: [] for p in presets}
    times: dict[str, list[float]] = {p: [] for p in ["bare"] + presets}
    for _ in range(args.rounds):
        bare = bare_step(model, loaded.preprocess, args.batch, args.steps)
        times["bare"].append(bare)
        for preset in presets:
            t = preset_step(model, loaded.preprocess, args.batch, args.steps, preset)
            times[preset].append(t)
            ratios[preset].append(t / bare)
    for p, flag in zip(model.parameters(), requires_grad):
        p.requires_grad_(flag)
    print(f"{loaded.name}, batch {args.batch}, {loaded.preprocess.input_size} px, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"  bare forward+backward: {statistics.median(times['bare']):.3f} s/step")
    for preset in presets:
        print(f"  {preset:<9} {statistics.median(times[preset]):.3f} s/step, ratio to bare "
              f"{statistics.median(ratios[preset]):.2f} (per round: {', '.join(f'{r:.2f}' for r in ratios[preset])})")


if __name__ == "__main__":
    main()
