"""Published findings about the metrics, checked on in20 photos with the imported MobileNet-V2.

    nice python bench/metric_findings.py [--images 8] [--threads 2] [--samples 5] [--only road]

1. SmoothGrad lowers sensitivity-max against the plain gradient (Yeh et al. 2019); infidelity is shown too.
2. ROAD's most- and least-relevant-first orders rank the methods alike (Rong et al. 2022): the Spearman
   correlation of the two rankings (MoRF ascending, LeRF descending) over the methods and the controls, of
   the means over the photos and, paired, photo by photo. ``--only road`` computes ROAD alone (on more photos).
3. The controls sit at chance where a metric defines one: the random map's ROAD gap (chance 0), its eMPRT
   (0) and cascading / sMPRT correlation (1); the centred map is shown beside it.

Methods: deepscope's signed Gradient, SmoothGrad of it (n=25, noise 0.15), Integrated Gradients (50 steps),
Grad-CAM, and the random and centred controls, each explaining its photo's predicted class. Photos: the first
of each of ``--images`` in20 classes. Every number is a mean over the photos, ± its standard error.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from scipy.stats import spearmanr

from bench_attribution import DEFAULT_MODEL, photos
from deepscope.attribution import Gradient, GradCAM, IntegratedGradients, SmoothGrad
from deepscope.attribution.controls import CenterMap, RandomMap
from deepscope.evaluation import (cascading_randomization, confidence_change, efficient_mprt, infidelity,
                                  region_perturbation, road, sensitivity_max, smooth_mprt, smooth_mprt_score)
from deepscope.models.zoo import load_model

BUILDERS = {
    "gradient": lambda m: Gradient(m, absolute=False),
    "smoothgrad": lambda m: SmoothGrad(Gradient(m, absolute=False), n=25, noise=0.15),
    "ig": lambda m: IntegratedGradients(m, steps=50),
    "gradcam": lambda m: GradCAM(m),
    "random": lambda m: RandomMap(m, seed=0),
    "center": lambda m: CenterMap(m),
}


def mean_sem(values: torch.Tensor) -> str:
    values = values.float()
    sem = float(values.std() / len(values) ** 0.5) if len(values) > 1 else float("nan")
    return f"{float(values.mean()):.3f} ± {sem:.3f}"


def road_finding(rows: dict, photos: int) -> None:
    """Finding 2: do ROAD's two orders rank the methods alike (means over photos, and photo by photo)?"""
    print("\nFinding 2 (Rong et al. 2022): ROAD's MoRF and LeRF rank the methods alike")
    names = list(rows)
    morf = torch.stack([rows[n]["road-morf"] for n in names])  # (methods, photos)
    lerf = torch.stack([rows[n]["road-lerf"] for n in names])
    by_morf = [names[i] for i in morf.mean(1).argsort().tolist()]
    by_lerf = [names[i] for i in lerf.mean(1).argsort(descending=True).tolist()]
    rho = spearmanr(-morf.mean(1), lerf.mean(1)).statistic
    paired = torch.tensor([spearmanr(-morf[:, k], lerf[:, k]).statistic for k in range(photos)])
    print(f"  best first by MoRF: {', '.join(by_morf)}\n  best first by LeRF: {', '.join(by_lerf)}\n"
          f"  Spearman of the two rankings of the means: {rho:.2f} ({'agree' if rho > 0.5 else 'do not agree'}); "
          f"photo by photo: {mean_sem(paired)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=5, help="perturbations for sensitivity-max")
    parser.add_argument("--only", choices=("road",), help="compute only this metric (finding 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model = loaded.model.eval()
    x = photos(loaded, args.images)
    with torch.no_grad():
        targets = model(x).argmax(1)
    print(f"# {loaded.name}; {len(x)} in20 photos; {args.threads} threads")
    rows = {}
    for name, build in BUILDERS.items():
        started = time.perf_counter()
        maps = build(model)(x, targets)
        result = road(model, x, maps, targets)
        row = {"road-morf": result.morf_mean, "road-lerf": result.lerf_mean, "road-gap": result.gap}
        rows[name] = row
        if args.only == "road":
            print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
            continue
        confidence = confidence_change(model, x, maps, targets)
        row.update({
            "region-aopc": region_perturbation(model, x, maps, targets, patch=16, regions=40).aopc,
            "infidelity": infidelity(model, x, maps, targets, samples=20),
            "average-drop": confidence.drop, "increase": confidence.increase,
            "emprt": efficient_mprt(build, model, x, targets).rise,
            "cascade-rho": cascading_randomization(build, model, x, targets, depth=2, max_steps=1).spearman[1],
        })
        if name in ("gradient", "smoothgrad", "gradcam", "random", "center"):
            row["sensitivity-max"] = sensitivity_max(build, model, x, targets, samples=args.samples, batch_size=8)
        if name in ("gradient", "gradcam", "random", "center"):
            row["smprt"] = smooth_mprt_score(smooth_mprt(build, model, x, targets, samples=5, depth=2, max_steps=4))
        print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)

    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    print("\n| method | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for name, row in rows.items():
        cells = [mean_sem(row[c]) if c in row else "-" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")

    road_finding(rows, len(x))
    if args.only == "road":
        return 0
    print("\nFinding 1 (Yeh et al. 2019): SmoothGrad lowers sensitivity-max against the gradient")
    plain, smooth = rows["gradient"]["sensitivity-max"], rows["smoothgrad"]["sensitivity-max"]
    lower = int((smooth < plain).sum())
    print(f"  gradient {mean_sem(plain)}, SmoothGrad {mean_sem(smooth)}; lower on {lower}/{len(x)} photos: "
          f"{'reproduced' if lower > len(x) / 2 and smooth.mean() < plain.mean() else 'NOT reproduced'}")
    infid_plain, infid_smooth = rows["gradient"]["infidelity"], rows["smoothgrad"]["infidelity"]
    print(f"  infidelity (normalised, sigma 0.1): gradient {mean_sem(infid_plain)}, "
          f"SmoothGrad {mean_sem(infid_smooth)}; lower on {int((infid_smooth < infid_plain).sum())}/{len(x)} photos")

    print("\nFinding 3: the controls sit at chance")
    random = rows["random"]
    print(f"  random ROAD gap {mean_sem(random['road-gap'])} "
          f"(chance 0; gradient {mean_sem(rows['gradient']['road-gap'])})")
    print(f"  random eMPRT rise {mean_sem(random['emprt'])} (chance 0); cascade rho {mean_sem(random['cascade-rho'])} "
          f"(chance 1); sMPRT rho {mean_sem(random['smprt'])} (chance 1)")
    print(f"  random region AOPC {mean_sem(random['region-aopc'])} vs centre {mean_sem(rows['center']['region-aopc'])} "
          f"vs gradient {mean_sem(rows['gradient']['region-aopc'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
