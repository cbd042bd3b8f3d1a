"""What the CLI's process-wide settings buy a library user, and why the library does not set them itself.

    nice python bench/bench_process_settings.py [--model PATH] [--images 4] [--threads 2] [--repeat 3]

The console script sets two process-wide things before it runs a command (``deepscope.cli``): glibc keeps
freed memory for reuse (``mallopt``; blocks over 32 MB are otherwise mmapped afresh for every batch) and
denormal floats are flushed to zero. The library sets neither, because it must leave the process as it
found it: the denormal flag could be set and restored around each call, but glibc has no way to read its
malloc settings back and setting any of them turns its adaptive mmap threshold off for good.

Each workload runs in four fresh processes -- library defaults, denormals flushed, freed memory kept, both
(= the console script) -- in interleaved rounds (the fastest of ``--repeat`` counts), so the ratios show
what each setting is worth on this machine. Workloads: a forward pass of 64 photos, gradient saliency of
``--images`` photos, Integrated Gradients (16 steps, 50 rows per pass), occlusion (16 px, stride 8), and
Score-CAM (64 channels), on the imported MobileNet-V2, ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from allocator import FAST_MALLOC

DATA = Path(os.environ.get("DEEPSCOPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_MODEL = DATA / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite"
REGIMES = {"library": (False, False), "flush denormals": (True, False), "keep freed memory": (False, True),
           "both (CLI)": (True, True)}
WORKLOADS = ("forward x64", "gradient", "ig", "occlusion", "scorecam")


def measure(model: str, images: int, threads: int, flush: bool) -> dict[str, float]:
    """In this process: seconds per workload (best of two after a warm-up)."""
    import time

    import torch

    from bench_attribution import photos
    from deepscope.attribution import Gradient, IntegratedGradients, Occlusion, ScoreCAM
    from deepscope.models.zoo import load_model

    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush)
    loaded = load_model(model)
    x = photos(loaded, images)
    batch = x.repeat(-(-64 // len(x)), 1, 1, 1)[:64]
    one = x[:1]

    def forward():
        with torch.inference_mode():
            loaded.model(batch.contiguous(memory_format=torch.channels_last))

    jobs = {"forward x64": forward,
            "gradient": lambda: Gradient(loaded.model)(x),
            "ig": lambda: IntegratedGradients(loaded.model, steps=16, batch_size=50)(x),
            "occlusion": lambda: Occlusion(loaded.model, window=16, stride=8)(one),
            "scorecam": lambda: ScoreCAM(loaded.model, max_channels=64, progress=False)(one)}
    seconds = {}
    for name, job in jobs.items():
        job()
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            job()
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the four processes")
    parser.add_argument("--child", choices=list(REGIMES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.model, args.images, args.threads, REGIMES[args.child][0])))
        return 0
    best = {regime: {} for regime in REGIMES}
    for _ in range(args.repeat):
        for regime, (_, keep) in REGIMES.items():
            env = {**os.environ, **(FAST_MALLOC if keep else {})}
            if not keep:
                for key in FAST_MALLOC:
                    env.pop(key, None)
            out = subprocess.run([sys.executable, __file__, "--child", regime, "--model", args.model,
                                  "--images", str(args.images), "--threads", str(args.threads)],
                                 env=env, check=True, capture_output=True, text=True).stdout
            for name, seconds in json.loads(out.splitlines()[-1]).items():
                best[regime][name] = min(best[regime].get(name, float("inf")), seconds)
    print(f"# {Path(args.model).name}, {args.images} photos, {args.threads} threads, best of {args.repeat} "
          "interleaved rounds of fresh processes; seconds (speed-up over library defaults)")
    print(f"{'workload':<13}" + "".join(f"{regime:>22}" for regime in REGIMES))
    for name in WORKLOADS:
        base = best["library"][name]
        print(f"{name:<13}" + "".join(f"{best[r][name]:>13.3f} ({base / best[r][name]:4.2f}x)" for r in REGIMES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
