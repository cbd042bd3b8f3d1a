"""Wall time of ``deepscope report`` per section, against the bare model's forward cost in the same run.

Builds the report as the CLI does (fresh cache in a temporary folder, unless ``--cache``), then re-runs it
on the warm cache. Each section's seconds are also given in "bare forward passes": the section's time
divided by the model's batched forward time per image (measured before and after, best of both), so
a reader can scale the figures to another machine; on a shared machine the ratios are steadier than the
seconds.

Run: ``PYTHONPATH=src nice python bench/bench_report.py [--model default] [--images builtin] [--sections all]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from deepscope.images import iter_batches, scan_images
from deepscope.models.zoo import load_model
from deepscope.probe import Probe
from deepscope.report import Cache, ReportContext, ReportSettings, write_report
from deepscope.sample_images import builtin_images


def forward_seconds_per_image(loaded, images, batch_size: int = 32, limit: int = 64) -> float:
    """Best-of-two batched forward time per image under inference mode (decoding excluded)."""
    batches = [b.inputs for b in iter_batches(images.subset(range(min(limit, len(images)))), loaded.preprocess,
                                              batch_size)]
    count = sum(len(b) for b in batches)
    best = float("inf")
    with Probe(loaded.model, detach=True), torch.inference_mode():
        for _ in range(2):
            start = time.perf_counter()
            for inputs in batches:
                loaded.model(inputs)
            best = min(best, time.perf_counter() - start)
    return best / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", default="builtin")
    parser.add_argument("--sections", default="all")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--cache", default=None, help="cache folder (default: a fresh temporary one)")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = load_model(args.model)
    images = builtin_images() if args.images == "builtin" else scan_images(args.images, loaded.classes)
    load_seconds = time.perf_counter() - started
    bare = forward_seconds_per_image(loaded, images)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(args.cache or Path(tmp) / "cache")
        runs = []
        for run in ("cold", "warm"):
            ctx = ReportContext(loaded, images, ReportSettings(per_class=args.per_class, progress=False), cache)
            start = time.perf_counter()
            path = write_report(ctx, Path(tmp) / run, args.sections)
            runs.append((run, ctx.timer.seconds, time.perf_counter() - start, path.stat().st_size))
    bare = min(bare, forward_seconds_per_image(loaded, images))
    print(f"{loaded.name} on {len(images)} image(s) from {images.root}; torch threads {torch.get_num_threads()}; "
          f"model and images loaded in {load_seconds:.1f} s; bare forward {bare * 1000:.1f} ms per image")
    print(f"{'step':<18}" + "".join(f"{run + ' s':>10}{'fwd-equiv':>11}" for run, *_ in runs))
    for step in runs[0][1]:
        print(f"{step:<18}" + "".join(f"{seconds.get(step, 0):>10.1f}{seconds.get(step, 0) / bare:>11.0f}"
                                      for _, seconds, _, _ in runs))
    print(f"{'page written':<18}" + "".join(f"{total:>10.1f}{total / bare:>11.0f}" for _, _, total, _ in runs))
    print(f"page size {runs[0][3] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
