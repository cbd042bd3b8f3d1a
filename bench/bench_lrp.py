"""LRP speed: deepscope vs zennit 0.5.1 (its fastest settings) vs the bare forward + backward, in one run.

    nice python bench/bench_lrp.py [--images 8] [--threads 2] [--repeat 3] [--composites epsilon-plus-flat,...]
                                   [--models mobilenet_v2_import,resnet18] [--fast-malloc]

Models at 224 px: the imported MobileNet-V2 (``mobilenet_v2_1.0_224_quant.tflite``) on ``--images`` photos of
in20 (one per class), and torchvision's ResNet-18 with seeded random weights (BatchNorm statistics of a
random batch) on the same photos. Each call explains the whole batch (the predicted classes), as a user
of either library calls it.

- deepscope: ``LRP(model, composite)(photos, targets)``; it runs the model channels-last on the CPU.
- zennit: ``zennit.attribution.Gradient`` with the composite of the same name and its canonizers
  (``ResNetCanonizer``; for the TFLite import the residual ``Block`` canonizer of
  ``tests/zennit_reference.py``, built from zennit's ``AttributeCanonizer`` and ``Sum``), attributor and
  hooks set up per call as deepscope does; the model's parameters frozen (``requires_grad=False``: no weight
  gradients); input in the default and in the channels-last layout, the faster counts.
- bare: the model's forward and backward to the input (the gradient), channels-last, parameters frozen.
- Each round runs every contender and setting once, interleaved; the fastest of ``--repeat`` rounds counts.
  Threads, allocator and denormal settings are the same for all (one process).
Also prints the largest difference from zennit's map (zennit run with its BatchNorm ``eps`` quirk removed,
see ``tests/zennit_reference.py``), relative to the map's largest value.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

from allocator import malloc_regime, use_fast_malloc
from bench_attribution import DEFAULT_MODEL as TFLITE, photos
from deepscope.attribution.lrp import LRP
from deepscope.models.zoo import load_model
from deepscope.probe import fast_layout

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the zennit canonizers zennit lacks, shared with the tests
import zennit_reference  # noqa: E402


def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 224, 224))
    return model.eval()


def bare(model, x, targets):
    batch = fast_layout(x).clone().requires_grad_(True)
    scores = model(batch).gather(1, targets[:, None])
    torch.autograd.grad(scores.sum(), batch)


def contenders(model, x, targets, composite, low, high):
    """{contender: {setting: thunk}}; the thunks return maps (or None)."""
    zennit_composite = zennit_reference.composite
    target_rows = torch.eye(1000)[targets]

    def zennit(layout):
        with zennit_reference.Gradient(model=model, composite=zennit_composite(composite, model, low, high)) as attr:
            return attr(layout(x), lambda y: target_rows * y)[1]

    return {
        "deepscope": {"channels-last": lambda: LRP(model, composite, low=low, high=high)(x, targets)},
        "zennit": {"default layout": lambda: zennit(lambda t: t), "channels-last": lambda: zennit(fast_layout)},
        "bare": {"channels-last": lambda: bare(model, x, targets)},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="photos per batch (default 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the fastest counts")
    parser.add_argument("--composites", default="epsilon-plus-flat,epsilon-gamma-box,epsilon-alpha2-beta1")
    parser.add_argument("--models", default="mobilenet_v2_import,resnet18")
    parser.add_argument("--fast-malloc", action="store_true", help="run with glibc keeping freed memory")
    args = parser.parse_args(argv)
    if args.fast_malloc:
        use_fast_malloc()
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    loaded = load_model(str(TFLITE))
    x = photos(loaded, args.images)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (loaded.preprocess.mean, loaded.preprocess.std))
    low, high = -mean / std, (1 - mean) / std
    print(f"# {len(x)} photos at {x.shape[-1]} px; {args.threads} threads; torch {torch.__version__}; "
          f"zennit {version('zennit')}\n# {malloc_regime()}")
    print(f"{'model':<20} {'composite':<21} {'deepscope s/img':>15} {'zennit s/img':>13} {'bare s/img':>11} "
          f"{'zennit/deepscope':>17} {'deepscope/bare':>15} {'max rel diff':>13}  zennit setting (fastest)")
    for model_name in [m.strip() for m in args.models.split(",")]:
        model = loaded.model if model_name == "mobilenet_v2_import" else resnet18()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        with torch.no_grad():
            targets = model(x).argmax(1)
        for composite in [c.strip() for c in args.composites.split(",")]:
            table = contenders(model, x, targets, composite, low, high)
            for settings in table.values():  # warm-up at the benchmark's shapes
                next(iter(settings.values()))()
            best = {(who, s): float("inf") for who, settings in table.items() for s in settings}
            for _ in range(args.repeat):
                for who, settings in table.items():
                    for setting, thunk in settings.items():
                        start = time.perf_counter()
                        thunk()
                        best[who, setting] = min(best[who, setting], time.perf_counter() - start)
            fastest = {who: min((best[who, s], s) for s in settings) for who, settings in table.items()}
            ours, theirs, bare_s = (fastest[who][0] / len(x) for who in ("deepscope", "zennit", "bare"))
            reference = zennit_reference.zennit_lrp(model, x, targets.tolist(),
                                                    zennit_reference.composite(composite, model, low, high))
            maps = table["deepscope"]["channels-last"]()
            diff = float((maps - reference).abs().max() / reference.abs().max())
            print(f"{model_name:<20} {composite:<21} {ours:>15.3f} {theirs:>13.3f} {bare_s:>11.3f} "
                  f"{theirs / ours:>16.2f}x {ours / bare_s:>14.2f}x {diff:>13.1e}  {fastest['zennit'][1]}; "
                  f"target >= 1x {'met' if theirs >= ours else 'NOT met'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
