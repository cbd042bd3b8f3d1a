"""Metric speed: deepscope vs each metric's reference library vs the bare model, in one run.

    nice python bench/bench_metrics.py [--model PATH] [--images 4] [--threads 2] [--repeat 2] [--fast-malloc]
                                       [--metrics road,pixel-flipping,...] [--maps gradient|gradcam]

On ``--images`` in20 photos (one per class) and the imported MobileNet-V2, with the same maps for both
libraries (``--maps``: deepscope's per-channel gradient, or Grad-CAM):

- road: MoRF and LeRF at 10..90 % (18 imputed images per photo) vs pytorch-grad-cam's
  ``ROADMostRelevantFirstAverage`` + ``ROADLeastRelevantFirstAverage`` (noise 0.01 in both; the draws differ);
- pixel-flipping: per colour value, ``--flip-step`` values per step, baseline "black", vs Quantus 0.6's
  ``PixelFlipping``. The paper's setting (one value per step, 150,528 steps at 224 px) takes hours for both,
  so both run at ``--flip-step`` (7,168: 21 steps) and the table extrapolates each library's measured cost per
  step to the full setting (Quantus: one forward of the whole batch per step, cost independent of the step
  size; deepscope: one batched forward per step and image);
- region-perturbation: 8 px regions, 100 regions, baseline "black", vs Quantus's ``RegionPerturbation``;
- irof: SLIC superpixels, replaced by 0, vs Quantus's ``IROF`` (which needs two workarounds to run at all:
  its one-channel mask broadcast over colours, and ``np.trapz``, gone in NumPy 2);
- infidelity: 50 Gaussian perturbations (sigma 0.1), the same draws, vs ``captum.metrics.infidelity``;
- sensitivity-max: 10 uniform perturbations (radius 0.02), the same draws, explainer: deepscope's gradient
  in both, vs ``captum.metrics.sensitivity_max``;
- average-drop: Grad-CAM maps and the average drop / increase in confidence (deepscope's GradCAM +
  ``confidence_change`` vs torchcam 0.5's ``GradCAM`` + ``ClassificationMetric``).

Each contender runs with a few batch settings and the fastest counts (the table names it). "bare" is the
model alone doing the forward passes the metric needs, batched (4, 16 or 64 per pass, the fastest counts), under
``torch.inference_mode()``; a reference that comes close to it is bound by the model, so no implementation that
runs the same forward passes can be much faster than it (the last line says by how much at most). Rounds are
interleaved and the fastest of ``--repeat`` counts. The last column is the largest relative difference of the
per-image values from the reference's (ROAD: the imputation noise differs, so it is left out).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from functools import partial

import numpy as np
import torch

from allocator import malloc_regime, use_fast_malloc
from bench_attribution import DEFAULT_MODEL, photos
from deepscope.attribution import Gradient, GradCAM
from deepscope.evaluation import (confidence_change, infidelity, irof, pixel_flipping, region_perturbation, road,
                                  sensitivity_max)
from deepscope.maps import upsample
from deepscope.models.zoo import load_model
from deepscope.probe import Probe, fast_layout

TARGETS = {"road": 1.0, "pixel-flipping": 20.0, "region-perturbation": 20.0, "irof": 1.0, "infidelity": 1.0,
           "sensitivity-max": 1.0, "average-drop": 1.0}


def bare(model, x, count, batch_size=64):
    """``count`` forward passes per photo, batched."""
    rows = x.repeat_interleave(count, 0)
    with Probe(model, detach=True), torch.inference_mode():
        for chunk in rows.split(batch_size):
            model(fast_layout(chunk))


def bare_settings(model, x, count):
    """The bare contender at a few batch sizes (the fastest counts, as for the libraries)."""
    return {f"{count} forwards, batch {b}": partial(bare, model, x, count, b) for b in (4, 16, 64)}


def values_of(result):
    return torch.as_tensor(np.asarray(result, dtype=np.float64))


def contenders(name, model, x, maps, targets, args):
    """{contender: {setting: thunk -> per-image values (or None)}} and a note for one metric."""
    import quantus

    n = len(x)
    y = targets.numpy()
    if name == "road":
        from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        cams = upsample(maps.abs().amax(1, keepdim=True), x.shape[-2:])[:, 0].double().numpy()
        classes = [ClassifierOutputSoftmaxTarget(int(c)) for c in targets]

        def gradcam():
            morf = ROADMostRelevantFirstAverage()(x, cams, classes, model)
            lerf = ROADLeastRelevantFirstAverage()(x, cams, classes, model)
            return values_of(lerf - morf)

        return {
            "deepscope": {f"batch_size={b}": (lambda b=b: road(model, x, maps, batch_size=b).gap) for b in (18, 36)},
            "reference": {"per image": gradcam},
            "bare": bare_settings(model, x, 18),
        }, "pytorch-grad-cam ROADCombined x 2; noise differs"
    if name == "pixel-flipping":
        step = args.flip_step
        steps = math.ceil(x[0].numel() / step)
        quantus_metric = quantus.PixelFlipping(features_in_step=step, disable_warnings=True)
        return {
            "deepscope": {f"batch_size={b}": (lambda b=b: pixel_flipping(
                model, x, maps, features_per_step=step, reduction=None, batch_size=b).probabilities[:, 1:])
                for b in (8, 32, 64)},
            "reference": {"quantus": lambda: values_of(quantus_metric(
                model=model, x_batch=x.numpy(), y_batch=y, a_batch=maps.numpy(), device="cpu"))},
            "bare": bare_settings(model, x, steps),
        }, f"{steps} steps of {step} values"
    if name == "region-perturbation":
        quantus_metric = quantus.RegionPerturbation(patch_size=8, regions_evaluation=100, perturb_baseline="black",
                                                    disable_warnings=True)

        def ours(b):
            curve = region_perturbation(model, x, maps, patch=8, regions=100, baseline="min", reduction=None,
                                        batch_size=b)
            return curve.probabilities[:, :1] - curve.probabilities[:, 1:]

        return {
            "deepscope": {f"batch_size={b}": (lambda b=b: ours(b)) for b in (8, 32, 64)},
            "reference": {"quantus": lambda: values_of(quantus_metric(
                model=model, x_batch=x.numpy(), y_batch=y, a_batch=maps.numpy(), device="cpu"))},
            "bare": bare_settings(model, x, 100),
        }, "100 regions of 8 px"
    if name == "irof":
        from quantus.functions.perturb_func import baseline_replacement_by_mask

        def broadcast(arr, mask, **kwargs):
            return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

        np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz, removed in NumPy 2
        quantus_metric = quantus.IROF(perturb_func=broadcast, perturb_baseline=0.0, return_aggregate=False,
                                      disable_warnings=True)

        def ours(b):
            result = irof(model, x, maps, baseline=0.0, reduction=None, batch_size=b)
            most = int(result.counts.max())
            aocs = []
            for probabilities, count in zip(result.probabilities, result.counts.tolist()):
                relative = (probabilities[1:count + 1] / probabilities[0]).double()
                aocs.append(count - float(torch.trapezoid(torch.cat([relative, relative.new_zeros(most - count)]))))
            return torch.tensor(aocs)  # Quantus's unnormalised area, for the comparison

        return {
            "deepscope": {f"batch_size={b}": (lambda b=b: ours(b)) for b in (32, 64)},
            "reference": {"quantus": lambda: values_of(quantus_metric(
                model=model, x_batch=x.numpy(), y_batch=y, a_batch=maps.numpy(), device="cpu"))},
            "bare": bare_settings(model, x, 100),
        }, "SLIC ~100 segments"
    if name == "infidelity":
        from captum.metrics import infidelity as captum_infidelity

        generator = torch.Generator().manual_seed(0)
        noise = 0.1 * torch.stack([torch.randn(x.shape[1:], generator=generator) for _ in range(n * 50)])

        def perturb(inputs):
            return noise, inputs - noise

        return {
            "deepscope": {f"batch_size={b}": (lambda b=b: infidelity(model, x, maps, samples=50, sigma=0.1, seed=0,
                                                                     batch_size=b)) for b in (64, 200)},
            "reference": {f"max_examples_per_batch={b}": (lambda b=b: captum_infidelity(
                model, perturb, x, maps, target=targets, n_perturb_samples=50, normalize=True,
                max_examples_per_batch=b)) for b in (None,)},
            "bare": bare_settings(model, x, 51),
        }, "50 samples, sigma 0.1, normalized"
    if name == "sensitivity-max":
        from captum.metrics import sensitivity_max as captum_sensitivity

        generator = torch.Generator().manual_seed(0)
        draws = torch.stack([torch.rand(x.shape[1:], generator=generator) for _ in range(10 * n)])
        delta = (0.02 * (2 * draws - 1)).view(10, n, *x.shape[1:]).transpose(0, 1)  # (image, sample): our draws

        class Perturb:  # captum asks for the samples in chunks, image-major within each chunk
            def __init__(self):
                self.done = 0

            def __call__(self, inputs):
                count = len(inputs) // n
                chunk = delta[:, self.done:self.done + count].reshape(len(inputs), *x.shape[1:])
                self.done += count
                return inputs + chunk

        explainer = Gradient(model, absolute=False)

        def explain(inputs, target):
            if isinstance(inputs, tuple):
                return (explainer(inputs[0], target),)
            return explainer(inputs, target)

        return {
            "deepscope": {f"common_noise={c}, batch_size={b}": (lambda b=b, c=c: sensitivity_max(
                lambda m: Gradient(m, absolute=False), model, x, samples=10, radius=0.02, seed=0, batch_size=b,
                common_noise=c)) for c, b in ((True, 16), (False, 16), (False, 10 * n))},
            "reference": {f"max_examples_per_batch={b}": (lambda b=b: captum_sensitivity(
                explain, x, perturb_func=Perturb(), n_perturb_samples=10, target=targets.tolist(),
                max_examples_per_batch=b)) for b in (None, 4 * n)},
            "bare": bare_settings(model, x, 11),
        }, "10 samples, radius 0.02, gradient explainer in both"
    if name == "average-drop":
        from torchcam.methods import GradCAM as TorchcamGradCAM
        from torchcam.metrics import ClassificationMetric

        def ours():
            result = confidence_change(model, x, GradCAM(model, layer=args.cam_layer)(x))
            return torch.stack([result.drop.mean(), result.increase.mean()])

        def torchcam():
            extractor = TorchcamGradCAM(model, target_layer=args.cam_layer)
            try:
                metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
                metric.update(x)
                summary = metric.summary()
            finally:
                extractor.remove_hooks()
            return torch.tensor([summary["avg_drop"], summary["conf_increase"]], dtype=torch.float64)

        return {
            "deepscope": {"one batch": ours},
            "reference": {"one batch": torchcam},
            "bare": bare_settings(model, x, 2),
        }, "Grad-CAM computed by each library (torchcam's of the probability); values not compared"
    raise SystemExit(f"unknown metric {name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--metrics", default=",".join(TARGETS))
    parser.add_argument("--maps", default="gradient", choices=("gradient", "gradcam"))
    parser.add_argument("--flip-step", type=int, default=7168, help="colour values flipped per step (both libraries)")
    parser.add_argument("--cam-layer", default=None, help="torchcam's Grad-CAM layer (default: deepscope's choice)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the fastest counts")
    parser.add_argument("--fast-malloc", action="store_true", help="run with glibc keeping freed memory")
    args = parser.parse_args(argv)
    if args.fast_malloc:
        use_fast_malloc()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import captum
    import pytorch_grad_cam
    import quantus
    import torchcam

    loaded = load_model(args.model)
    model = loaded.model.eval()
    x = photos(loaded, args.images)
    with torch.no_grad():
        targets = model(x).argmax(1)
    if args.cam_layer is None:
        from deepscope.attribution.cam import default_cam_layer
        args.cam_layer = default_cam_layer(model, x)
    if args.maps == "gradient":
        maps = Gradient(model, absolute=False)(x, targets)
    else:
        maps = upsample(GradCAM(model)(x, targets), x.shape[-2:]).expand(-1, 3, -1, -1).contiguous()
    print(f"# {loaded.name}; {len(x)} photos at {x.shape[-1]} px; {args.maps} maps; {args.threads} threads; "
          f"torch {torch.__version__}; captum {captum.__version__}; quantus {quantus.__version__}; "
          f"grad-cam {getattr(pytorch_grad_cam, '__version__', '1.5.7')}; torchcam {torchcam.__version__}\n"
          f"# {malloc_regime()}")
    bare(model, x, 16)  # warm-up
    print(f"{'metric':<20} {'deepscope s/img':>15} {'reference s/img':>15} {'bare s/img':>11} "
          f"{'ref/deepscope':>14} {'deepscope/bare':>15} {'ref/bare':>9} {'max rel diff':>13}  notes")
    for name in [m.strip() for m in args.metrics.split(",")]:
        table, note = contenders(name, model, x, maps, targets, args)
        best = {(who, setting): float("inf") for who, settings in table.items() for setting in settings}
        values = {}
        for _ in range(args.repeat):
            for who, settings in table.items():
                for setting, thunk in settings.items():
                    start = time.perf_counter()
                    result = thunk()
                    best[who, setting] = min(best[who, setting], time.perf_counter() - start)
                    if result is not None:
                        values[who] = torch.as_tensor(result).detach().double()
        fastest = {who: min((best[who, s], s) for s in settings) for who, settings in table.items()}
        ours_s, theirs_s, bare_s = (fastest[who][0] / len(x) for who in ("deepscope", "reference", "bare"))
        if name in ("road", "average-drop"):
            diff = "-"
        else:
            a, b = values["deepscope"], values["reference"].view_as(values["deepscope"])
            diff = f"{float(((a - b).abs() / b.abs().clamp_min(1e-12)).max()):.1e}"
        ratio = theirs_s / ours_s
        notes = f"{note}; deepscope {fastest['deepscope'][1]}, reference {fastest['reference'][1]}"
        if len(table["deepscope"]) > 1:
            notes += " (deepscope: " + ", ".join(f"{s} {best['deepscope', s] / len(x):.3f}"
                                                  for s in table["deepscope"]) + " s/img)"
        if name == "pixel-flipping":
            steps = math.ceil(x[0].numel() / args.flip_step)
            full = x[0].numel()
            notes += (f"; extrapolated to 1 value per step ({full} steps): reference "
                      f"{theirs_s / steps * full / 3600:.1f} h/img, deepscope {ours_s / steps * full / 3600:.1f} h/img")
        verdict = "met" if ratio >= TARGETS[name] else "NOT met"
        print(f"{name:<20} {ours_s:>15.3f} {theirs_s:>15.3f} {bare_s:>11.3f} {ratio:>13.2f}x {ours_s / bare_s:>14.2f}x "
              f"{theirs_s / bare_s:>8.2f}x {diff:>13}  {notes}; target {TARGETS[name]}x {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
