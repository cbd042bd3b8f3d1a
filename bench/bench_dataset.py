"""Dataset jobs: photos per second of each job on the local and the Ray engine, and hours projected for ImageNet.

Each round runs every chosen job once on the local engine and once on the Ray engine, each into a fresh store
(nothing reused), interleaved: local, ray, local, ray, ... The best round of each is kept. Ray's start-up is
timed apart: ``ray.init`` (a local instance, unless ``--address``) and the actor pool (actors started, the
model shipped and loaded); the job times on Ray then include only the job. Both engines run in the same
process environment (this script's threads, allocator setting and denormal flushing; the actors copy them).
Where the Ray cluster has GPUs, the pool has one actor per GPU and the local engine runs on the first GPU.

The projection multiplies each measured rate out to ImageNet's validation (50,000) and training (1,281,167)
sets: for this machine, and for N such machines (rate x N, which assumes the work divides evenly, as shards
do). Decoding is measured apart (one thread, the model's preprocessing): a GPU actor decodes in two
threads, so twice that rate bounds a GPU actor whatever the GPU's speed; GPU rows are projections unless a
GPU was measured here.

``--memory N`` also measures the peak RSS of ``features`` and ``neurons`` (local engine, real model) over the
first 500 photos and over N photos generated from them (cropped, resized to 64-320 px, re-encoded), each in
a fresh process; slow: use it on a quiet machine.

Usage::

    nice python bench/bench_dataset.py [--photos 500] [--jobs classify,features,neurons,explain,evaluate]
        [--explain-photos 64] [--evaluate-photos 16] [--rounds 1] [--address ADDR] [--workers N] [--fast-malloc]
        [--memory 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from allocator import malloc_regime, use_fast_malloc  # noqa: E402
from bench_features import data_dir, default_model  # noqa: E402
from deepscope.images import ImageSet, load_image, scan_images  # noqa: E402
from deepscope.jobs import (ClassifyJob, EvaluateJob, ExplainJob, FeaturesJob, NeuronsJob, RayEngine,  # noqa: E402
                            run_job)
from deepscope.models.zoo import load_model  # noqa: E402

IMAGENET = {"ImageNet val (50,000)": 50_000, "ImageNet train (1,281,167)": 1_281_167}
NEURON_LAYER = "features.14"


def jobs(loaded) -> dict:
    """The job of each kind as benchmarked (the neurons layer falls back to the feature layer's module)."""
    layers = dict(loaded.model.named_modules())
    layer = NEURON_LAYER if NEURON_LAYER in layers else [n for n, m in layers.items() if isinstance(m, torch.nn.Conv2d)][-1]
    return {"classify": ClassifyJob(5), "features": FeaturesJob(), "neurons": NeuronsJob(layer, k=9),
            "explain": ExplainJob("gradient"), "evaluate": EvaluateJob("gradient", steps=10)}


def subset(images: ImageSet, count: int) -> ImageSet:
    chosen = images.subset(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int).tolist())
    return ImageSet(chosen.root, chosen.paths, chosen.folders, chosen.labels, [])


def timed_run(job, loaded, images, engine, batch_size: int) -> float:
    store = Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    try:
        started = time.perf_counter()
        run = run_job(job, loaded, images, store, engine=engine, batch_size=batch_size)
        seconds = time.perf_counter() - started
        assert run.computed == run.shards
        return seconds
    finally:
        shutil.rmtree(store, ignore_errors=True)


def decode_rate(images: ImageSet, preprocess, count: int = 100) -> float:
    """Photos per second one thread decodes and preprocesses."""
    paths = images.paths[:count]
    started = time.perf_counter()
    for path in paths:
        preprocess(load_image(path))
    return len(paths) / (time.perf_counter() - started)


# -- memory --------------------------------------------------------------------------------------------
MEMORY = r"""
import sys
from deepscope.cli import keep_freed_memory
from deepscope.images import scan_images
from deepscope.jobs import FeaturesJob, NeuronsJob, run_job
from deepscope.models.zoo import load_model
keep_freed_memory()
model, kind, folder, store, layer = sys.argv[1:6]
loaded = load_model(model)
job = FeaturesJob() if kind == "features" else NeuronsJob(layer, k=9)
run = run_job(job, loaded, scan_images(folder, loaded.classes), store)
# VmHWM: this process's own peak (ru_maxrss would also count the parent's memory at the fork)
print(run.files, next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def generate(images: ImageSet, count: int, folder: Path) -> None:
    """``count`` photos made from ``images``: seeded crops resized to 64-320 px, re-encoded as JPEG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    copies = -(-count // len(images))
    made = 0
    for path, name in zip(images.paths, images.folders):
        image = load_image(path)
        width, height = image.size
        (folder / (name or "flat")).mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            if made == count:
                return
            side = int(rng.integers(min(width, height) // 2, min(width, height) + 1))
            left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            size = int(rng.integers(64, 321))
            crop = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
            crop.save(folder / (name or "flat") / f"{path.stem}_{copy:03d}.jpg", quality=int(rng.integers(70, 95)))
            made += 1


def memory(model: str, images: ImageSet, count: int, layer: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-dataset-memory-"))
    try:
        small, large = work / "small", work / "large"
        for path, name in zip(images.paths[:500], images.folders[:500]):
            (small / (name or "flat")).mkdir(parents=True, exist_ok=True)
            (small / (name or "flat") / path.name).symlink_to(path)
        generate(subset(images, 500), count, large)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        print(f"\npeak RSS (local engine, {model}; fresh process each):")
        for kind in ("features", "neurons"):
            peaks = []
            for folder in (small, large):
                done = subprocess.run([sys.executable, "-c", MEMORY, model, kind, str(folder), str(work / f"s{kind}"),
                                       layer], capture_output=True, text=True, env=env, check=True)
                files, peak = map(int, done.stdout.split()[-2:])
                peaks.append(peak)
                print(f"  {kind:<9} {files:>7,} photos: {peak / 2**30:.2f} GiB")
                shutil.rmtree(work / f"s{kind}", ignore_errors=True)
            print(f"  {kind:<9} change: {(peaks[1] - peaks[0]) / peaks[0]:+.1%}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: imported MobileNet-V2, else default)")
    parser.add_argument("--images", default=str(data_dir() / "in20"))
    parser.add_argument("--photos", type=int, default=500, help="photos for classify, features, neurons")
    parser.add_argument("--explain-photos", type=int, default=64)
    parser.add_argument("--evaluate-photos", type=int, default=16)
    parser.add_argument("--jobs", default="classify,features,neurons,explain,evaluate")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: a local instance)")
    parser.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU, else per node)")
    parser.add_argument("--fast-malloc", action="store_true", help="keep freed memory (see bench/allocator.py)")
    parser.add_argument("--memory", type=int, default=0, metavar="N", help="also measure peak RSS at 500 and N photos")
    args = parser.parse_args()
    if args.fast_malloc:
        use_fast_malloc()

    model = args.model or default_model()
    loaded = load_model(model)
    images = scan_images(args.images, loaded.classes)
    for path in images.paths:  # every contender finds the files in the page cache
        path.read_bytes()
    chosen = [name.strip() for name in args.jobs.split(",") if name.strip()]
    counts = {"explain": args.explain_photos, "evaluate": args.evaluate_photos}
    photos = {name: subset(images, counts.get(name, args.photos)) for name in chosen}
    job_of = jobs(loaded)

    engine = RayEngine(address=args.address, workers=args.workers)
    with engine:
        pool = engine.warm_up(loaded)
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            loaded.model.to("cuda")
        print(f"model {loaded.name}; {torch.get_num_threads()} torch threads here, {os.cpu_count()} CPUs; "
              f"{malloc_regime()}; batch {args.batch_size}")
        print(f"Ray start-up: ray.init {engine.start_seconds:.1f} s, actor pool {pool:.1f} s ({engine.log[0]})")
        best: dict = {}
        for _ in range(args.rounds):
            for name in chosen:
                for label, runner in (("local", "local"), ("ray", engine)):
                    seconds = timed_run(job_of[name], loaded, photos[name], runner, args.batch_size)
                    best[name, label] = min(best.get((name, label), float("inf")), seconds)
        decode = decode_rate(images, loaded.preprocess)

    print(f"\n{'job':<9} {'photos':>6} {'local s':>8} {'ray s':>8} {'ray/local':>9} {'local photos/s':>15} "
          f"{'ray photos/s':>13}")
    for name in chosen:
        n = len(photos[name])
        local, ray_seconds = best[name, "local"], best[name, "ray"]
        print(f"{name:<9} {n:>6} {local:>8.1f} {ray_seconds:>8.1f} {ray_seconds / local:>9.2f} {n / local:>15.1f} "
              f"{n / ray_seconds:>13.1f}")
    print(f"decoding + preprocessing, one thread: {decode:.0f} photos/s (a GPU actor decodes in 2 threads: "
          f"at most {2 * decode:.0f} photos/s per GPU actor)")

    machine = f"{os.cpu_count()} CPUs" + (f" + {gpus} GPU(s)" if gpus else "")
    print(f"\nprojected hours (rate measured on the local engine here, {machine}; N machines: rate x N)")
    print(f"{'job':<9} {'photos/s':>9} " + " ".join(f"{name + ', N=' + str(n):>34}" for name in IMAGENET
                                                        for n in (1, 8)))
    for name in chosen:
        rate = len(photos[name]) / best[name, "local"]
        cells = [f"{count / (rate * n) / 3600:>34.1f}" for count in IMAGENET.values() for n in (1, 8)]
        print(f"{name:<9} {rate:>9.1f} " + " ".join(cells))
    print(json.dumps({"rates": {f"{k[0]}/{k[1]}": len(photos[k[0]]) / v for k, v in best.items()},
                      "decode_per_thread": decode, "ray_init_s": engine.start_seconds, "ray_pool_s": pool}))
    if args.memory:
        memory(model, images, args.memory, job_of["neurons"].layer)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
