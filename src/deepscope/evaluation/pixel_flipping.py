"""Pixel flipping, region perturbation and IROF: remove features in order of relevance, track the class.

- **Pixel flipping** (Bach et al. 2015; Samek et al. 2017): features are removed one (or
  ``features_per_step``) at a time, most relevant first, and replaced by a baseline (default: each image's
  smallest value, Quantus's "black"). The curve of the target's probability should fall fast: a *low*
  area under it is good.
- **Region perturbation** (Samek, Binder, Montavon, Lapuschkin and Müller, "Evaluating the visualization
  of what a deep neural network has learned", 2017): the image is cut into ``patch`` x ``patch`` regions,
  ranked by the sum of their relevance; the first ``regions`` of them are replaced one after the other
  (most relevant first, ``order="morf"``; least relevant first, ``"lerf"``; or at random), by uniform
  noise by default. The score is the AOPC, the mean drop ``p_0 - p_k`` over the ``regions + 1`` points:
  *high* is good for MoRF, low for LeRF; a random order scores chance.
- **IROF** (Rieger and Hansen, "IROF: a low resource evaluation metric for explanation methods", 2020):
  superpixels (SLIC) are removed in order of their mean relevance and replaced by the image's mean
  colour; the score is the area *over* the curve of ``p_k / p_0`` against the share of segments removed:
  *high* is good.

Features: maps are reduced to one channel by :func:`~deepscope.maps.saliency` (``reduction``, ``abs-max``
by default) and upsampled to the input, so a feature is a pixel with all its channels; with
``reduction=None`` a per-channel map keeps its channels and each colour value is a feature of its own (the
unit of Quantus and of Bach et al.). Ties keep index order (a stable sort).

Differs from Quantus 0.6: curves start with the unperturbed input (point 0) and are drawn against the
share of features (pixels, regions, segments) removed, so areas lie in [0, 1]; region perturbation's
regions are the cells of a grid as in Quantus (Samek et al. perturb a window around each most relevant
location); uniform noise is drawn once per image (seeded) between the image's smallest and largest values
(Quantus draws one value per image and step in [0, 1] from NumPy's global generator); IROF replaces
segments by each image's own mean colour (Quantus: the mean of the whole batch as perturbed so far, and
it fails on colour images, where its mask has one channel and the image three).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import DEFAULT_REDUCTION
from deepscope.evaluation.perturbation import (PerturbationCurve, check_maps, check_positive, make_baseline,
                                               original_scores, perturbed_scores, ranks_of, relevance, targets_of)
from deepscope.targets import Target

ORDERS = ("morf", "lerf", "random")


def pixel_flipping(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                   features_per_step: int = 1, baseline: str | float | torch.Tensor = "min", batch_size: int = 64,
                   reduction: str | None = DEFAULT_REDUCTION, progress: bool = False) -> PerturbationCurve:
    """Replace features, most relevant first, ``features_per_step`` at a time, and track the target's probability.

    Parameters
    ----------
    model : nn.Module
        The classifier the maps explain (its output: logits).
    inputs : (N, C, H, W) tensor
        Model input (normalised); never modified.
    maps : (N, C', h, w) tensor
        Maps of ``inputs`` from any method.
    target : Target
        Class tracked per sample; default: the predicted class of the unperturbed input.
    features_per_step : int
        Features replaced per step; the curve has ``ceil(features / features_per_step) + 1`` points, one
        forward pass each: 1 (the paper's setting) costs one pass per pixel.
    baseline : str, number or tensor
        What removed features become (:func:`~deepscope.evaluation.perturbation.make_baseline`).
    batch_size : int
        Perturbed inputs per forward pass.
    reduction : str or None
        How a per-channel map becomes one relevance per pixel (``None``: one per colour value).
    """
    check_maps(inputs, maps)
    check_positive(features_per_step=features_per_step, batch_size=batch_size)
    inputs = inputs.detach()
    n = len(inputs)
    ranks = ranks_of(relevance(maps, inputs, reduction))
    features = ranks[0].numel()
    steps = -(-features // features_per_step)
    counts = (torch.arange(steps + 1, device=inputs.device) * features_per_step).clamp_max(features)
    curve = _run(model, inputs, make_baseline(inputs, baseline), ranks, counts, target, batch_size, progress,
                 "pixel flipping")
    return PerturbationCurve("pixel flipping", counts.float() / features, *curve)


def region_perturbation(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                        patch: int = 8, regions: int = 100, order: str = "morf",
                        baseline: str | float | torch.Tensor = "uniform", seed: int = 0, batch_size: int = 64,
                        reduction: str | None = DEFAULT_REDUCTION, progress: bool = False) -> PerturbationCurve:
    """Replace ``patch`` x ``patch`` regions one after the other in order of their summed relevance.

    The grid of regions is centred as Quantus's: an image side that is not a multiple of ``patch`` gets
    partial regions at both borders. Score: :attr:`PerturbationCurve.aopc` (high is good for ``morf``).

    Parameters
    ----------
    patch : int
        Side of a region in pixels.
    regions : int
        Regions replaced (points on the curve after the first); at most the number of regions.
    order : "morf", "lerf" or "random"
        Most relevant first, least relevant first, or a random order (seeded): the chance level.
    baseline : str, number or tensor
        What replaced regions become; default: uniform noise between the image's extremes (Samek et al.).
    seed : int
        Seed of the uniform baseline and of the random order.

    Other parameters are those of :func:`pixel_flipping`.
    """
    check_maps(inputs, maps)
    check_positive(patch=patch, regions=regions, batch_size=batch_size)
    if order not in ORDERS:
        raise DeepscopeError(f"unknown order {order!r}; choose {', '.join(ORDERS)}.")
    inputs = inputs.detach()
    n, _, h, w = inputs.shape
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    replacement = make_baseline(inputs, baseline, generator)
    cells, count = _grid(h, w, patch, inputs.device)
    values = relevance(maps, inputs, reduction).sum(dim=1).flatten(1)  # (N, H * W)
    sums = torch.zeros(n, count, device=inputs.device).index_add_(1, cells.flatten(), values)
    if order == "random":
        rank_of_cell = torch.stack([torch.randperm(count, generator=generator, device=inputs.device)
                                    for _ in range(n)])
    else:
        rank_of_cell = ranks_of(sums, descending=order == "morf")
    ranks = rank_of_cell[:, cells].unsqueeze(1)  # (N, 1, H, W): the rank of each pixel's region
    steps = min(regions, count)
    counts = torch.arange(steps + 1, device=inputs.device)
    kind = f"region perturbation ({order})"
    curve = _run(model, inputs, replacement, ranks, counts, target, batch_size, progress, kind)
    return PerturbationCurve(kind, counts.float() / count, *curve)


@dataclass
class IROFResult:
    """Target probability as superpixels are removed, most relevant first.

    Attributes
    ----------
    segments : (N, H, W) long tensor
        The superpixel of each pixel (0 .. count - 1).
    counts : (N,) long tensor
        Superpixels of each image.
    probabilities : (N, max(counts) + 1) tensor
        Probability of the target after removing 0, 1, ... segments; NaN past an image's own count.
    targets : (N,) tensor
        The class tracked for each sample (-1 for a callable target).
    """

    segments: torch.Tensor
    counts: torch.Tensor
    probabilities: torch.Tensor
    targets: torch.Tensor

    @property
    def aoc(self) -> torch.Tensor:
        """(N,) area over the curve of ``p_k / p_0`` against the share of segments removed (high is good)."""
        values = []
        for probabilities, count in zip(self.probabilities, self.counts.tolist()):
            curve = probabilities[:count + 1] / probabilities[0]
            values.append(1 - torch.trapezoid(curve, torch.linspace(0, 1, count + 1, device=curve.device)))
        return torch.stack(values)


def irof(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
         segments: torch.Tensor | None = None, n_segments: int = 100, baseline: str | float | torch.Tensor = "mean",
         batch_size: int = 64, reduction: str | None = DEFAULT_REDUCTION, progress: bool = False) -> IROFResult:
    """Remove superpixels in order of their mean relevance, replacing them by the image's mean colour.

    Parameters
    ----------
    segments : (N, H, W) integer tensor, optional
        The superpixels (any labels); default: SLIC (:func:`slic_segments`) on the model input, as Quantus.
    n_segments : int
        SLIC's target number of segments (when ``segments`` is not given).
    baseline : str, number or tensor
        What removed segments become (default ``"mean"``: each image's mean colour per channel).

    Other parameters are those of :func:`pixel_flipping`. Cost: one forward pass per segment.
    """
    check_maps(inputs, maps)
    check_positive(batch_size=batch_size, n_segments=n_segments)
    inputs = inputs.detach()
    n, _, h, w = inputs.shape
    if segments is None:
        segments = slic_segments(inputs, n_segments)
    if not isinstance(segments, torch.Tensor) or segments.shape != (n, h, w) or segments.is_floating_point():
        raise DeepscopeError(f"segments must be an integer tensor of shape {(n, h, w)} (one label per pixel).")
    labels = torch.stack([torch.unique(s.flatten(), return_inverse=True)[1] for s in segments.to(inputs.device)])
    counts = labels.flatten(1).amax(dim=1) + 1
    most = int(counts.max())
    values = relevance(maps, inputs, reduction).mean(dim=1).flatten(1)
    sizes = torch.zeros(n, most, device=inputs.device).scatter_add_(1, labels.flatten(1), torch.ones_like(values))
    means = torch.zeros(n, most, device=inputs.device).scatter_add_(1, labels.flatten(1), values) / sizes.clamp_min(1)
    means[sizes == 0] = -torch.inf  # labels an image does not have come last
    rank_of_segment = ranks_of(means)
    ranks = rank_of_segment.gather(1, labels.flatten(1)).view(n, 1, h, w)
    images = torch.cat([torch.full((int(c) + 1,), i, device=inputs.device) for i, c in enumerate(counts)])
    removed = torch.cat([torch.arange(int(c) + 1, device=inputs.device) for c in counts])
    resolved, original = original_scores(model, inputs, target, batch_size)
    scores = perturbed_scores(model, inputs, make_baseline(inputs, baseline), ranks, images, removed, resolved,
                              original, batch_size=batch_size, progress=progress, desc="IROF")
    probabilities = torch.full((n, most + 1), torch.nan, device=inputs.device)
    probabilities[images, removed] = scores
    return IROFResult(labels.view(n, h, w), counts, probabilities, targets_of(resolved, n, inputs.device))


def slic_segments(inputs: torch.Tensor, n_segments: int = 100) -> torch.Tensor:
    """(N, H, W) SLIC superpixels of each input (skimage's defaults, on the model input as Quantus), on its device."""
    from skimage.segmentation import slic

    images = inputs.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    labels = [torch.from_numpy(slic(image, n_segments=n_segments, start_label=0)) for image in images]
    return torch.stack(labels).long().to(inputs.device)


def _grid(h: int, w: int, patch: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """(H, W) region index of each pixel on a grid of ``patch`` cells centred as Quantus's, and the region count."""
    def axis(size):
        before = (-size % patch) // 2
        return (torch.arange(size, device=device) + before) // patch, -(-(size + before) // patch)

    rows, tall = axis(h)
    cols, wide = axis(w)
    return rows.view(-1, 1) * wide + cols.view(1, -1), tall * wide


def _run(model, inputs, replacement, ranks, counts, target, batch_size, progress, desc):
    """(probabilities (N, K), targets) of the curve through ``counts`` for every input."""
    n = len(inputs)
    resolved, original = original_scores(model, inputs, target, batch_size)
    images = torch.arange(n, device=inputs.device).repeat_interleave(len(counts))
    scores = perturbed_scores(model, inputs, replacement, ranks, images, counts.repeat(n), resolved, original,
                              batch_size=batch_size, progress=progress, desc=desc)
    return scores.view(n, len(counts)), targets_of(resolved, n, inputs.device)
