"""Deletion and insertion curves (Petsiuk, Das and Saenko, "RISE", BMVC 2018).

Pixels are ordered by saliency, most salient first. **Deletion** replaces them, in ``steps`` equal
steps, with a baseline (default: zeros of the model input, the dataset's mean colour after
normalisation) and tracks the softmax probability of the target class: a faithful map makes it fall
fast, so a *low* area under the curve is good. **Insertion** starts from a baseline (default: the image
blurred, as in RISE) and reveals the pixels in the same order: a *high* area is good. A perfect map of
a model that looks at one small region scores deletion near 0 and insertion near 1.

Ordering rule: maps are reduced to one channel by :func:`~deepscope.evaluation.common.saliency`
(``abs-max`` over colour channels), so a signed per-channel gradient is ranked by magnitude; a
single-channel map is ranked by value (positive evidence first). Ties keep pixel order (stable sort).

All ``N * (steps + 1)`` perturbed inputs are built chunk by chunk (``batch_size`` at a time, so memory
stays bounded) and run as large batches under ``torch.inference_mode()`` through the probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from deepscope.attribution.base import check_inputs
from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import DEFAULT_REDUCTION, saliency
from deepscope.probe import Probe
from deepscope.targets import Target, resolve_target, target_scores

BASELINES = ("zero", "blur")
#: RISE's blur: an 11x11 Gaussian kernel with sigma 5 (pixels of the model input).
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


@dataclass
class PerturbationCurve:
    """Target-class probability as pixels are deleted (or inserted) in order of saliency.

    Attributes
    ----------
    kind : str
        ``"deletion"`` or ``"insertion"``.
    fractions : (steps + 1,) tensor
        Share of pixels deleted (inserted) at each point, from 0 to 1.
    probabilities : (N, steps + 1) tensor
        Softmax probability of each sample's target class at each point.
    targets : (N,) tensor
        The class tracked for each sample (-1 for a callable target).
    """

    kind: str
    fractions: torch.Tensor
    probabilities: torch.Tensor
    targets: torch.Tensor

    @property
    def auc(self) -> torch.Tensor:
        """(N,) area under each sample's curve (trapezoid rule on x in [0, 1])."""
        return auc(self.probabilities, self.fractions)


def auc(values: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Area under ``values`` (..., K) by the trapezoid rule; ``x`` defaults to K even points in [0, 1]."""
    if x is None:
        x = torch.linspace(0, 1, values.shape[-1], device=values.device, dtype=values.dtype)
    return torch.trapezoid(values, x.to(values), dim=-1)


def deletion_curve(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                   steps: int = 50, baseline: str | float | torch.Tensor = "zero", batch_size: int = 64,
                   reduction: str = DEFAULT_REDUCTION, progress: bool = False) -> PerturbationCurve:
    """Delete pixels, most salient first, and track the target class's probability.

    Parameters
    ----------
    model : nn.Module
        The classifier the maps explain (its output: logits).
    inputs : (N, C, H, W) tensor
        Model input (normalised); never modified.
    maps : (N, C', h, w) tensor
        Saliency maps for ``inputs`` from any method (see the module docstring for the ordering rule).
    target : Target
        Class tracked per sample; default: the predicted class of the unperturbed input. A callable
        target receives the logits and its value is tracked instead of a probability.
    steps : int
        Number of equal steps from no pixel to all pixels (the curve has ``steps + 1`` points).
    baseline : "zero", "blur", a number, or a tensor broadcastable to ``inputs``
        What deleted pixels become (in model-input units).
    batch_size : int
        Perturbed inputs per forward pass.
    """
    return _curve("deletion", model, inputs, maps, target, steps, baseline, batch_size, reduction, progress)


def insertion_curve(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                    steps: int = 50, baseline: str | float | torch.Tensor = "blur", batch_size: int = 64,
                    reduction: str = DEFAULT_REDUCTION, progress: bool = False) -> PerturbationCurve:
    """Reveal pixels of ``inputs``, most salient first, on ``baseline`` (default: the blurred image).

    Parameters are those of :func:`deletion_curve`.
    """
    return _curve("insertion", model, inputs, maps, target, steps, baseline, batch_size, reduction, progress)


def make_baseline(inputs: torch.Tensor, baseline: str | float | torch.Tensor) -> torch.Tensor:
    """The baseline image for each input: zeros, a blurred copy (RISE's kernel), a constant or a given tensor."""
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(inputs).expand_as(inputs)
        except RuntimeError:
            raise DeepscopeError(f"baseline of shape {tuple(baseline.shape)} does not fit inputs of shape "
                                 f"{tuple(inputs.shape)}.") from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(inputs)
    if baseline == "blur":
        return TF.gaussian_blur(inputs, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    raise DeepscopeError(f"unknown baseline {baseline!r}; choose {' or '.join(BASELINES)}, a number or a tensor.")


def _curve(kind, model, inputs, maps, target, steps, baseline, batch_size, reduction, progress) -> PerturbationCurve:
    from tqdm.auto import tqdm

    check_inputs(inputs)
    if steps < 1:
        raise DeepscopeError(f"steps must be at least 1, got {steps}.")
    if batch_size < 1:
        raise DeepscopeError(f"batch_size must be at least 1, got {batch_size}.")
    if maps.ndim != 4 or maps.shape[0] != inputs.shape[0]:
        raise DeepscopeError(f"maps must be (N, C, H, W) with one map per input ({inputs.shape[0]}); "
                             f"got shape {tuple(maps.shape)}.")
    if not bool(torch.isfinite(maps).all()):
        raise DeepscopeError("maps contain NaN or infinite values, which have no order; check the method's output.")
    n, _, h, w = inputs.shape
    if steps > h * w:
        raise DeepscopeError(f"steps {steps}: at most one step per pixel ({h * w} for {h}x{w} inputs).")
    inputs = inputs.detach()
    start = make_baseline(inputs, baseline)
    # rank[i, p]: position of pixel p in image i's saliency order (0 = most salient)
    order = saliency(maps.detach().to(inputs.device), (h, w), reduction).flatten(1).argsort(
        dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=inputs.device).expand(n, -1))
    rank = rank.view(n, 1, h, w)
    counts = torch.round(torch.arange(steps + 1, device=inputs.device) * (h * w / steps)).long()
    total = n * (steps + 1)
    scores = torch.empty(total, device=inputs.device)
    bar = tqdm(total=total, desc=kind, unit="eval", disable=not progress, leave=False)
    with Probe(model, detach=True), torch.inference_mode(), bar:
        # one extra pass over the unperturbed inputs (1 / (steps + 1) of the cost) fixes the target
        resolved = resolve_target(target, torch.cat([model(chunk) for chunk in inputs.split(batch_size)]))
        for begin in range(0, total, batch_size):
            flat = torch.arange(begin, min(begin + batch_size, total), device=inputs.device)
            image, step = flat // (steps + 1), flat % (steps + 1)
            changed = rank[image] < counts[step].view(-1, 1, 1, 1)  # pixels deleted / inserted so far
            if kind == "deletion":
                batch = torch.where(changed, start[image], inputs[image])
            else:
                batch = torch.where(changed, inputs[image], start[image])
            output = model(batch)
            if isinstance(resolved, torch.Tensor):
                scores[flat] = target_scores(output.float().softmax(dim=1), resolved[image])
            else:
                scores[flat] = target_scores(output, resolved).float()
            bar.update(len(flat))
    fractions = counts.float() / (h * w)
    # clone: a normal tensor (not an inference-mode one) that callers may use in autograd
    targets = resolved.clone() if isinstance(resolved, torch.Tensor) else torch.full((n,), -1, device=inputs.device)
    return PerturbationCurve(kind, fractions, scores.view(n, steps + 1), targets)

