"""The model-parameter randomisation test revisited: eMPRT and sMPRT (Hedström, Weber, Lapuschkin and
Höhne, "Sanity Checks Revisited: An Exploration to Repair the Model Parameter Randomisation Test", 2023).

Beside the cascading test (:mod:`~deepscope.evaluation.randomization`, Adebayo et al. 2018):

- **eMPRT** (efficient MPRT): randomise *every* layer of a copy of the model at once and compare the
  complexity of the maps before and after: the discrete entropy of a ``bins``-bin histogram of each map
  (natural logarithm, as Quantus). A map that explains the model turns into noise, so its entropy rises:
  the score ``H(random) / H(original) - 1`` is *high* when the map passes. A map that ignores the model
  (the random control, rebuilt with its seed) scores exactly 0: the chance level. A map that becomes
  constant scores -1 (entropy 0) and is flagged; a constant original map has no entropy to compare
  (score NaN, flagged).
- **sMPRT** (smooth MPRT): the cascading test on maps averaged over ``samples`` noisy copies of the input
  (Gaussian, standard deviation ``noise`` times the image's range; the last copy noise-free), which removes
  the shattered-gradient noise that makes raw gradients look different after any change. Layers are
  randomised bottom-up (from the input layer, Quantus's default for this test); the score is the mean rank
  correlation of |maps| over the steps: *low* passes. The random control keeps 1 (chance).

Randomisation and similarity are those of the cascading test (each parameter tensor replaced by Gaussian
noise of its own mean and standard deviation, from a generator seeded by ``seed``; Spearman of the
one-channel saliency of :func:`~deepscope.maps.saliency`). Differs from Quantus 0.6, which re-initialises
layers with their ``reset_parameters()`` after reseeding the global generator, computes eMPRT's entropy on
the raw per-channel maps and smooths with NumPy's global generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deepscope.attribution.base import check_inputs
from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import DEFAULT_REDUCTION, Explainer, explain_in_chunks, row_draws, saliency
from deepscope.evaluation.perturbation import check_positive
from deepscope.evaluation.randomization import (MethodBuilder, RandomizationResult, builder, cascading_randomization,
                                                copy_model, is_constant, original_maps, randomization_layers,
                                                randomize_parameters)
from deepscope.probe import get_layer
from deepscope.targets import Target, select_target


@dataclass
class EMPRTResult:
    """Complexity of each image's map before and after randomising every layer.

    Attributes
    ----------
    original_entropy, randomized_entropy : (N,) tensors
        Discrete entropy (nats) of each map's histogram.
    original_constant, randomized_constant : (N,) bool tensors
        The map is constant (its entropy is 0).
    maps : (2, N, 1, H, W) tensor
        The saliency maps before and after.
    """

    original_entropy: torch.Tensor
    randomized_entropy: torch.Tensor
    original_constant: torch.Tensor
    randomized_constant: torch.Tensor
    maps: torch.Tensor

    @property
    def rise(self) -> torch.Tensor:
        """(N,) relative rise in complexity, ``H(random) / H(original) - 1`` (high passes, 0 is chance); NaN
        where the original map is constant."""
        rise = self.randomized_entropy / self.original_entropy - 1
        return torch.where(self.original_constant, torch.nan, rise)


def efficient_mprt(method: MethodBuilder, model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                   bins: int = 100, seed: int = 0, batch_size: int | None = None,
                   reduction: str = DEFAULT_REDUCTION) -> EMPRTResult:
    """Randomise every layer of a copy of ``model`` and compare the entropy of the maps before and after.

    Parameters
    ----------
    method : callable ``model -> explainer``
        Builds the explanation for a model; built once on the model and once on the randomised copy.
    model : nn.Module
        The user's model; only a deep copy is randomised.
    inputs : (N, C, H, W) tensor
    target : Target
        Classes explained (default: the original model's prediction), the same for both models.
    bins : int
        Histogram bins between each map's smallest and largest value (Quantus's default 100).
    seed : int
        Seed of the randomisation.
    batch_size : int, optional
        Images explained per call (default: all at once).
    """
    check_inputs(inputs)
    check_positive(bins=bins)
    build = builder(method)
    inputs = inputs.detach()
    resolved, before = original_maps(build, model, inputs, target, reduction, batch_size)
    randomized = copy_model(model)
    generator = torch.Generator().manual_seed(seed)
    layers = randomization_layers(randomized)
    if not layers:
        raise DeepscopeError("the model has no layer with parameters to randomise.")
    for name in layers:
        randomize_parameters(get_layer(randomized, name), generator)
    after = saliency(explain_in_chunks(build(randomized), inputs, resolved, batch_size), tuple(inputs.shape[-2:]),
                     reduction)
    return EMPRTResult(histogram_entropy(before.flatten(1), bins), histogram_entropy(after.flatten(1), bins),
                       is_constant(before.flatten(1)), is_constant(after.flatten(1)), torch.stack([before, after]))


def histogram_entropy(values: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """(N,) entropy (nats) of a ``bins``-bin histogram spanning each row of ``values`` (N, K); 0 for a constant row."""
    low = values.amin(dim=1, keepdim=True)
    span = values.amax(dim=1, keepdim=True) - low
    index = ((values - low) / torch.where(span > 0, span, 1) * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(len(values), bins, device=values.device).scatter_add_(1, index, torch.ones_like(values))
    p = counts / values.shape[1]
    return -(p * torch.log(torch.where(p > 0, p, 1))).sum(dim=1)


def smooth_mprt(method: MethodBuilder, model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                samples: int = 50, noise: float = 0.1, layers: Sequence[str] | None = None, depth: int | None = None,
                max_steps: int | None = None, order: str = "bottom-up", seed: int = 0, batch_size: int = 50,
                reduction: str = DEFAULT_REDUCTION, progress: bool = False) -> RandomizationResult:
    """The cascading randomisation test on maps averaged over noisy copies of the input.

    Score: ``result.mean_spearman`` over the steps, :func:`smooth_mprt_score` (low passes).

    Parameters
    ----------
    samples : int
        Copies averaged per map (the last one without noise); one explanation each, at every step.
    noise : float
        Noise standard deviation as a fraction of each image's range (Hedström et al.'s 0.1).
    seed : int
        Seed of the noise (the same copies at every step) and of the randomisation.
    batch_size : int
        Noisy copies explained per call.

    ``layers``, ``depth``, ``max_steps``, ``order`` and ``reduction`` are those of
    :func:`~deepscope.evaluation.randomization.cascading_randomization` (``order`` defaults to bottom-up).
    """
    check_positive(samples=samples, batch_size=batch_size)
    if noise < 0:
        raise DeepscopeError(f"noise is a fraction of the image's range and cannot be negative, got {noise}.")
    build = builder(method)

    def smoothed(network: nn.Module) -> Explainer:
        return SmoothedExplainer(build(network), samples, noise, seed, batch_size)

    return cascading_randomization(smoothed, model, inputs, target, layers=layers, depth=depth, max_steps=max_steps,
                                   order=order, seed=seed, reduction=reduction, progress=progress)


def smooth_mprt_score(result: RandomizationResult) -> torch.Tensor:
    """(N,) mean rank correlation of |maps| with the original over the randomisation steps (NaN for constant maps)."""
    undefined = result.constant[1:] | result.original_constant
    values = torch.where(undefined, torch.nan, result.spearman[1:])
    return values.nanmean(dim=0)


class SmoothedExplainer:
    """An explainer's maps averaged over noisy copies of each input (the last copy without noise).

    The noise is drawn afresh from ``seed`` at every call, copy ``j`` of input ``i`` being draw
    ``i * samples + j``, so each call on the same inputs sees the same copies.
    """

    def __init__(self, explain: Explainer, samples: int, noise: float, seed: int, batch_size: int):
        self.explain, self.samples, self.noise, self.seed, self.batch_size = explain, samples, noise, seed, batch_size

    def __call__(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        sigma = self.noise * (inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1))
        total = None
        count = len(inputs) * self.samples
        for rows in torch.arange(count, device=inputs.device).split(self.batch_size):
            images = rows // self.samples
            draws = row_draws(generator, len(rows), inputs) * (rows % self.samples < self.samples - 1).view(-1, 1, 1, 1)
            maps = self.explain(inputs[images] + draws * sigma[images].view(-1, 1, 1, 1), select_target(target, images))
            if total is None:
                total = maps.new_zeros(len(inputs), *maps.shape[1:])
            total.index_add_(0, images, maps.detach())
        return total / self.samples
