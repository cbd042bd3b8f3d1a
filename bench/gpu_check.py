"""Check on a CUDA machine that every registered method runs on the GPU and agrees with the CPU.

Run: ``DEEPSCOPE_DATA=... python bench/gpu_check.py [--model SPEC] [--images N]``. For each method it
prints whether the maps stay on the input's device, the largest relative difference to the CPU maps, and
the time per image on each device (after one warm-up call).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from deepscope.catalogue import METHODS, build_method, get_method
from deepscope.errors import DeepscopeError
from deepscope.images import load_inputs, scan_images
from deepscope.models.zoo import load_model


def timed(fn, repeats: int = 2) -> tuple[torch.Tensor, float]:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    data = Path(os.environ.get("DEEPSCOPE_DATA", "../shared/data"))
    parser.add_argument("--model", default=str(data / "models/coral/mobilenet_v2_1.0_224_quant.tflite"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    loaded = load_model(args.model)
    images = scan_images(data / "in20", loaded.classes)
    x_cpu = load_inputs(images.paths[:: len(images) // args.images][: args.images], loaded.preprocess)
    target = torch.as_tensor([label for label in images.labels[:: len(images) // args.images][: args.images]])
    print(f"{torch.cuda.get_device_name()}  model {loaded.name}  {args.images} images")
    print(f"{'method':<16}{'device ok':>10}{'max rel diff':>14}{'cpu s/img':>11}{'gpu s/img':>11}")
    for name in args.methods.split(","):
        try:
            cpu_method = build_method(name, loaded.model.cpu(), **get_method(name).offered(batch_size=64, seed=0))
            cpu_maps, cpu_time = timed(lambda: cpu_method.attribute(x_cpu, target), repeats=1)
            gpu_model = loaded.model.cuda()
            gpu_method = build_method(name, gpu_model, **get_method(name).offered(batch_size=256, seed=0))
            x_gpu, t_gpu = x_cpu.cuda(), target.cuda()
            gpu_maps, gpu_time = timed(lambda: gpu_method.attribute(x_gpu, t_gpu))
        except DeepscopeError as error:
            print(f"{name:<16} not applicable: {error}")
            continue
        on_device = gpu_maps.device.type == "cuda"
        scale = cpu_maps.abs().max().clamp_min(1e-12)
        diff = float((gpu_maps.cpu() - cpu_maps).abs().max() / scale)
        print(f"{name:<16}{str(on_device):>10}{diff:>14.2e}{cpu_time / args.images:>11.3f}{gpu_time / args.images:>11.4f}")
        loaded.model.cpu()


if __name__ == "__main__":
    main()
