"""Approximate occlusion (projective-field thresholding, adaptive drill-down) vs the exact incremental path vs full
forward passes.

    nice python bench/bench_occlusion_approx.py [--model PATH] [--images 2] [--taus 0.9,0.5] [--drill 0.1,0.05@3]
                                                [--combine] [--threads 2] [--repeat 1] [--batch-size 64] [--no-full]
                                                [--fast-malloc]

Occlusion with a 16 px window and stride 4 (2,809 windows per 224 px photo) on ``--images`` in20 photos (one
per class), by default with the imported MobileNet-V2 (Coral's quantised TFLite file, dequantised).
Contenders, all deepscope's ``Occlusion`` in the same process, image by image, ``--batch-size`` windows per pass:

- ``full``: a full forward pass per window (``incremental=False``);
- ``exact``: the exact incremental path (the default, cut where its estimated cost is lowest);
- ``tau=T``: approximate occlusion, ``approximate=T``, without the exact check (``check=0``) and with the
  default check (``check=4``: every 4th row and column of windows also computed exactly, for ``ssim_``);
- ``drill=D@F``: adaptive drill-down, ``drill_down=D, coarse_factor=F`` (``--drill 0.1`` is at the default
  factor), without and with the default check (windows off the coarse grid: every ``ceil(4 / F)``-th middle of
  its gaps);
- with ``--combine``: ``tau=T drill=D@F`` for every pair, with the check.

Each round runs every contender once, interleaved, so a burst of load from other processes hits one round;
the fastest of ``--repeat`` rounds counts (wall time; the process's CPU seconds per photo are printed too,
less disturbed by other processes on a shared machine). Printed: seconds per photo, the speed ratios against the exact
path and against full passes, and the SSIM of each approximate map against the exact map (signed maps,
the exact map's range as data range; mean and lowest over photos) next to the check's estimate
(``ssim_``, mean and lowest), and the windows computed per photo (the check's among them). Then, per contender,
the estimated cost per window relative to a full pass (multiply-adds
plus memory traffic, :func:`~deepscope.attribution.incremental.plan_costs`), split into the layers before
the 14x14 maps, the 14x14 and 7x7 maps, and the copying at the cuts: what remains after the truncation.
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
from deepscope.attribution import Occlusion
from deepscope.attribution.incremental import ConePlan, conv_costs, local_stages, plan_costs
from deepscope.attribution.occlusion import DEFAULT_COARSE_FACTOR, map_ssim
from deepscope.images import load_inputs, scan_images
from deepscope.models.zoo import load_model
from deepscope.probe import Probe

DATA = Path(os.environ.get("DEEPSCOPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_MODEL = DATA / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite"
WINDOW, STRIDE = 16, 4
TARGET_RATIO, TARGET_SSIM = 3.0, 0.9


def photos(loaded, count: int) -> torch.Tensor:
    """One photo from each of the first ``count`` in20 class folders."""
    found = scan_images(DATA / "in20", loaded.classes)
    firsts = {}
    for path, folder in zip(found.paths, found.folders):
        firsts.setdefault(folder, path)
    return load_inputs(list(firsts.values())[:count], loaded.preprocess)


def cost_shares(model, x, method: Occlusion) -> str:
    """Where the estimated cost per window of ``method``'s last plan goes, relative to a full pass."""
    if method.cut_layer_ is None:
        return "full passes: 1.00"
    stages = local_stages(model)
    costs = conv_costs(model, x[:1])
    with Probe(model, [s.name for s in stages], detach=True) as probe, torch.inference_mode():
        probe(x[:1])
        maps = {name: value for name, value in probe.activations.items() if value.ndim == 4}
    sizes = {name: tuple(value.shape[-2:]) for name, value in maps.items()}
    plan = ConePlan.build([s for s in stages if s.name in sizes], sizes, tuple(x.shape[-2:]), (WINDOW, WINDOW),
                          method.approximate)
    names = [segment.name for segment in plan.segments]
    plan = plan.truncated(names.index(method.cut_layer_) + 1)
    channels = {name: value.shape[1] for name, value in maps.items()}
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    ends = [max(i for name, i in order.items() if name == s.name or name.startswith(s.name + "."))
            for s in plan.segments]
    full = sum(cost for _, cost in costs)
    shares = {"early": 0.0, "14x14 and smaller": 0.0}
    for name, cost in costs:
        k = next((k for k, end in enumerate(ends) if order[name] <= end), len(ends))
        fraction = plan.segments[k].crop_fraction if k < len(ends) else 1.0
        small = (plan.segments[k].out_size if k < len(ends) else (0, 0))[0] <= x.shape[-1] // 16
        shares["14x14 and smaller" if small or k == len(ends) else "early"] += cost * fraction / full
    total = plan_costs(model, plan, costs, channels)[-1] / full
    shares["copying at cuts"] = total - sum(shares.values())
    return f"{total:.2f} = " + " + ".join(f"{name} {share:.2f}" for name, share in shares.items())


def drill_spec(text: str) -> tuple[float, int]:
    """``0.1`` or ``0.1@3`` -> (drill_down, coarse_factor)."""
    fraction, _, factor = text.partition("@")
    return float(fraction), int(factor) if factor else DEFAULT_COARSE_FACTOR


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--images", type=int, default=2, help="in20 photos (default 2)")
    parser.add_argument("--taus", default="0.9,0.5", help="projective-field thresholds to time ('' for none)")
    parser.add_argument("--drill", default="", help="drill-down fractions to time, each at the default coarse factor "
                        f"({DEFAULT_COARSE_FACTOR}) or at F with D@F, e.g. 0.1,0.05@3")
    parser.add_argument("--combine", action="store_true", help="also time every tau with every drill-down")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="occluded images per forward (all contenders)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the fastest counts")
    parser.add_argument("--no-full", action="store_true", help="skip the full forward passes (slow)")
    parser.add_argument("--fast-malloc", action="store_true", help="run with glibc keeping freed memory")
    args = parser.parse_args(argv)
    if args.fast_malloc:
        use_fast_malloc()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="approximate occlusion")  # the SSIM is printed below

    loaded = load_model(args.model)
    model = loaded.model.eval()
    x = photos(loaded, args.images)
    with torch.no_grad():
        targets = model(x).argmax(1)
    n, windows = len(x), len(range(0, x.shape[-2] - WINDOW + 1, STRIDE)) * len(range(0, x.shape[-1] - WINDOW + 1, STRIDE))
    print(f"# {loaded.name} ({loaded.source}); {n} photos at {x.shape[-1]} px; window {WINDOW}, stride {STRIDE} "
          f"({windows} windows per photo); batch {args.batch_size}; {args.threads} threads; torch {torch.__version__}"
          f"\n# {malloc_regime()}")

    def occlusion(**options):
        return Occlusion(model, window=WINDOW, stride=STRIDE, batch_size=args.batch_size, **options)

    contenders = {"exact": occlusion()}
    if not args.no_full:
        contenders["full"] = occlusion(incremental=False)
    taus = [float(t) for t in args.taus.split(",") if t.strip()]
    drills = [drill_spec(d) for d in args.drill.split(",") if d.strip()]
    for tau in taus:
        contenders[f"tau={tau:g}"] = occlusion(approximate=tau, check=0)
        contenders[f"tau={tau:g} checked"] = occlusion(approximate=tau, check=4)
    for fraction, factor in drills:
        contenders[f"drill={fraction:g}@{factor}"] = occlusion(drill_down=fraction, coarse_factor=factor, check=0)
        contenders[f"drill={fraction:g}@{factor} checked"] = occlusion(drill_down=fraction, coarse_factor=factor,
                                                                        check=4)
    for tau in taus if args.combine else []:
        for fraction, factor in drills:
            contenders[f"tau={tau:g} drill={fraction:g}@{factor} checked"] = occlusion(
                approximate=tau, drill_down=fraction, coarse_factor=factor, check=4)
    occlusion()(x[:1, :, :64, :64], target=targets[:1])  # warm-up: first calls pay for kernel selection
    best = {name: float("inf") for name in contenders}
    cpu = dict(best)
    maps, estimates = {}, {}
    for _ in range(args.repeat):
        for name, method in contenders.items():
            parts, checks = [], []
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(n):
                parts.append(method(x[i:i + 1], target=targets[i:i + 1]))
                checks.append(method.ssim_)
            best[name] = min(best[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
            maps[name] = torch.cat(parts)
            if checks[0] is not None:
                estimates[name] = torch.cat(checks)

    exact_s = best["exact"] / n
    width = max(map(len, contenders))
    print(f"{'contender':<{width}} {'s/photo':>8} {'cpu s':>7} {'exact/this':>11} {'full/this':>10} {'SSIM mean':>10} "
          f"{'SSIM min':>9} {'check mean':>10} {'check min':>9} {'windows':>7} {'checked':>7}  "
          "cut at; estimated cost per window / full pass")

    def approximating(method):
        return method.approximate is not None or method.drill_down is not None

    for name, method in contenders.items():
        seconds = best[name] / n
        full = f"{best['full'] / best[name]:>9.2f}x" if "full" in best else f"{'-':>10}"
        if approximating(method):
            ssim = map_ssim(maps[name], maps["exact"])
            quality = f"{float(ssim.mean()):>10.3f} {float(ssim.min()):>9.3f}"
            estimate = f"{float(estimates[name].mean()):>10.3f} {float(estimates[name].min()):>9.3f}" \
                if name in estimates else f"{'-':>10} {'-':>9}"
        else:
            quality, estimate = f"{'(exact)':>10} {'':>9}", f"{'':>10} {'':>9}"
        windows, checked = method.windows_
        print(f"{name:<{width}} {seconds:>8.2f} {cpu[name] / n:>7.1f} {exact_s / seconds:>10.2f}x {full} {quality} "
              f"{estimate} {windows + checked:>7} {checked:>7}  {method.cut_layer_}; {cost_shares(model, x, method)}",
              flush=True)
    reached = [name for name, method in contenders.items() if approximating(method)
               and best["exact"] / best[name] >= TARGET_RATIO
               and float(map_ssim(maps[name], maps["exact"]).min()) >= TARGET_SSIM]
    print(f"# target: >= {TARGET_RATIO}x faster than exact at SSIM >= {TARGET_SSIM}: "
          + (f"met by {', '.join(reached)}" if reached else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
