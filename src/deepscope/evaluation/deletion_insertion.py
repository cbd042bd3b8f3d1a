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

import torch
from torch import nn

from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import DEFAULT_REDUCTION
from deepscope.evaluation.perturbation import (BASELINES, PerturbationCurve, auc, check_maps, check_positive,
                                               make_baseline, original_scores, perturbed_scores, ranks_of,
                                               relevance, targets_of)
from deepscope.targets import Target

__all__ = ["BASELINES", "PerturbationCurve", "auc", "deletion_curve", "insertion_curve", "make_baseline"]


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
    baseline : str, number or tensor
        What deleted pixels become (in model-input units): see
        :func:`~deepscope.evaluation.perturbation.make_baseline`.
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


def _curve(kind, model, inputs, maps, target, steps, baseline, batch_size, reduction, progress) -> PerturbationCurve:
    check_maps(inputs, maps)
    check_positive(steps=steps, batch_size=batch_size)
    if reduction is None:
        raise DeepscopeError("deletion and insertion rank pixels: give a channel reduction (e.g. 'abs-max').")
    n, _, h, w = inputs.shape
    if steps > h * w:
        raise DeepscopeError(f"steps {steps}: at most one step per pixel ({h * w} for {h}x{w} inputs).")
    inputs = inputs.detach()
    start = make_baseline(inputs, baseline)
    rank = ranks_of(relevance(maps, inputs, reduction))  # (N, 1, H, W): 0 = most salient pixel
    counts = torch.round(torch.arange(steps + 1, device=inputs.device) * (h * w / steps)).long()
    resolved, original = original_scores(model, inputs, target, batch_size)
    images = torch.arange(n, device=inputs.device).repeat_interleave(steps + 1)
    jobs = counts.repeat(n)
    if kind == "deletion":
        scores = perturbed_scores(model, inputs, start, rank, images, jobs, resolved, original,
                                  batch_size=batch_size, progress=progress, desc=kind)
    else:  # insertion: the baseline with the first pixels revealed = the input with all but those replaced
        _, blank = original_scores(model, start, resolved, batch_size)
        scores = perturbed_scores(model, start, inputs, rank, images, jobs, resolved, blank,
                                  batch_size=batch_size, progress=progress, desc=kind)
    targets = targets_of(resolved, n, inputs.device)
    return PerturbationCurve(kind, counts.float() / (h * w), scores.view(n, steps + 1), targets)
