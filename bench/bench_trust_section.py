"""Where the report's trust section spends its time: in20 with the imported MobileNet-V2, per method and part.

    nice python bench/bench_trust_section.py [METHOD,METHOD,...]

Runs :func:`deepscope.trust_table.evaluate_methods` with the report's settings (one photo per class, its steps,
catalogue metrics and photo counts, each cost class's share of photos and mosaics, the quick method options),
one method at a time, and prints each method's seconds split into its parts (maps, deletion, insertion, pointing game, randomisation, each catalogue
metric) as it finishes, then the table, the total and the peak RSS. The process keeps freed memory and flushes
denormals, as the CLI does.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import torch

from deepscope.catalogue import QUICK_METHOD_OPTIONS, get_method, method_names
from deepscope.cli import keep_freed_memory
from deepscope.images import scan_images
from deepscope.models.zoo import load_model
from deepscope.report.base import cost_share
from deepscope.report.sections import trust
from deepscope.trust_table import evaluate_methods, table_text

DATA = Path(os.environ.get("DEEPSCOPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    keep_freed_memory()
    torch.set_flush_denormal(True)
    loaded = load_model(DATA / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite")
    images = scan_images(DATA / "in20", loaded.classes)
    methods = sys.argv[1].split(",") if len(sys.argv) > 1 else method_names()
    started, results, parts = time.perf_counter(), [], {}
    for name in methods:
        share = cost_share(name)
        if share.trust == 0:
            print(f"{name:15s} not scored in the report ({get_method(name).cost})", flush=True)
            continue
        result, = evaluate_methods(
            loaded, images, [name], images_per_class=trust.PER_CLASS, max_images=share.trust,
            mosaics=share.mosaics, steps=trust.STEPS,
            cascade_steps=trust.CASCADE_STEPS, randomization_images=trust.RANDOMIZATION_IMAGES,
            metric_images=trust.METRIC_IMAGES, batch_size=32, seed=0,
            method_options={name: QUICK_METHOD_OPTIONS.get(name, {})})
        results.append(result)
        for part, seconds in result.parts.items():
            parts[part] = parts.get(part, 0.0) + seconds
        print(f"{name:15s} {result.seconds:6.1f} s  " + " ".join(f"{k}={v:.1f}" for k, v in result.parts.items()),
              result.error[:80], flush=True)
    total = time.perf_counter() - started
    print("by part (s):", {k: round(v, 1) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])})
    print(table_text([result.row() for result in results]))
    print(f"total {total:.0f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
