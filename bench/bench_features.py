"""Feature extraction of an image folder: deepscope (cold and warm cache) against the plain loop a user writes.

The plain loop: PIL decode, torchvision transforms (resize, centre crop, to tensor, normalise), and the
model's forward pass in batches of the same size, under ``torch.inference_mode()``. deepscope cold =
``extract_features`` with an empty cache (hashing the weights and files, threaded decoding, pooling,
writing the cache); warm = the same call again (a cache hit). All timings come from one run, so load from
other processes on the machine hits all of them; with ``--repeats N`` the best of N is kept.

Targets: cold <= 1.1x the plain loop, warm < 5% of it.

Usage::

    nice python bench/bench_features.py [--model SPEC] [--images DIR] [--batch-size 32] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from deepscope.features import extract_features  # noqa: E402
from deepscope.images import scan_images  # noqa: E402
from deepscope.models.zoo import load_model  # noqa: E402


def data_dir() -> Path:
    return Path(os.environ.get("DEEPSCOPE_DATA", REPO.parent / "shared" / "data"))


def default_model() -> str:
    """The imported reference MobileNet-V2 when the TFLite importer is there, else the built-in model."""
    tflite = data_dir() / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite"
    try:
        import deepscope.models.tflite  # noqa: F401
    except ImportError:
        return "default"
    return str(tflite) if tflite.is_file() else "default"


def plain_loop(model, paths, preprocess, batch_size: int) -> torch.Tensor:
    transform = transforms.Compose([
        transforms.Resize(preprocess.resize_size), transforms.CenterCrop(preprocess.input_size),
        transforms.ToTensor(), transforms.Normalize(preprocess.mean, preprocess.std)])
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]])
            outputs.append(model(batch))
    return torch.cat(outputs)


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: imported MobileNet-V2, else default)")
    parser.add_argument("--images", default=str(data_dir() / "in20"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    loaded = load_model(args.model or default_model())
    images = scan_images(args.images, loaded.classes)
    for path in images.paths:  # the files are in the page cache for every contender
        path.read_bytes()
    print(f"model {loaded.name} ({loaded.source}), {len(images)} images, batch size {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    plain, cold, warm = [], [], []
    for _ in range(args.repeats):
        plain.append(timed(lambda: plain_loop(loaded.model, images.paths, loaded.preprocess, args.batch_size))[0])
        with tempfile.TemporaryDirectory() as cache:
            seconds, bank = timed(lambda: extract_features(loaded, scan_images(args.images, loaded.classes),
                                                           batch_size=args.batch_size, cache=cache))
            cold.append(seconds)
            seconds, again = timed(lambda: extract_features(loaded, scan_images(args.images, loaded.classes),
                                                            batch_size=args.batch_size, cache=cache))
            warm.append(seconds)
            assert torch.equal(bank.features, again.features)
    best = min(plain)
    print(f"plain loop (PIL + torchvision + forward): {best:8.2f} s")
    print(f"deepscope cold cache:                    {min(cold):8.2f} s  = {min(cold) / best:.3f}x  (target <= 1.1x)")
    print(f"deepscope warm cache:                    {min(warm):8.3f} s  = {min(warm) / best:.2%}  (target < 5%)")
    print(f"feature bank: {tuple(bank.features.shape)} at {bank.layer}")


if __name__ == "__main__":
    main()
