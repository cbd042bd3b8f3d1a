"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci and Kasneci, ICML 2022).

For each percentage ``p``, the ``p`` % of pixels that the map ranks first (**MoRF**, most relevant first)
or last (**LeRF**, least relevant first) are removed and filled in by noisy linear imputation
(:mod:`~deepscope.evaluation.imputation`), and the target class's softmax probability is read on the
imputed image. A faithful map makes the probability fall fast under MoRF (*low* is good) and stay high
under LeRF (*high* is good). Because the imputation hides the shape of the removed region, the two orders
rank methods alike (Rong et al.'s finding); a map that knows nothing (the random control) scores the same
under both orders: its ``gap`` (LeRF minus MoRF) is the chance level, 0.

Pixels are ranked by the one-channel map of :func:`~deepscope.maps.saliency` (``reduction``, ``abs-max`` by
default), ties in pixel order; removing ``p`` % means removing ``round(p / 100 * H * W)`` pixels.

Differs from pytorch-grad-cam (whose ``ROADMostRelevantFirst(percentile=q)`` keeps the pixels below the
``q``-th percentile, so it removes ``100 - q`` %): percentages here are the share *removed*, as in the
paper, and the pixel count is rounded rather than taken from an interpolated percentile (the two can
differ by one pixel); the noise comes from a generator seeded with ``seed`` for each order, one draw per
imputed image in the order (image, percentage), instead of the global generator (so both orders see the
same noise); scores are probabilities (pytorch-grad-cam
reports their change from the original, ``morf - original`` here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import DEFAULT_REDUCTION
from deepscope.evaluation.imputation import noisy_linear_imputation
from deepscope.evaluation.perturbation import (check_maps, check_positive, original_scores, ranks_of, relevance,
                                               target_probability, targets_of)
from deepscope.probe import Probe, fast_layout
from deepscope.targets import Target

ORDERS = ("morf", "lerf")
#: images imputed together: the solver streams its arrays many times per iteration, so small batches that stay
#: in the CPU's caches are faster per image (about 1.5x at 4 against 32 on the 2-core development machine)
IMPUTATION_CHUNK = 4
PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass
class ROADResult:
    """Probabilities of the target class after removing each percentage of pixels in each order.

    Attributes
    ----------
    percentages : (P,) tensor
        Share of pixels removed, in percent.
    original : (N,) tensor
        Probability on the unperturbed inputs.
    morf, lerf : (N, P) tensors, or None where that order was not computed
        Probability after removing the most (least) relevant pixels and imputing them.
    targets : (N,) tensor
        The class tracked for each sample (-1 for a callable target).
    """

    percentages: torch.Tensor
    original: torch.Tensor
    morf: torch.Tensor | None
    lerf: torch.Tensor | None
    targets: torch.Tensor

    @property
    def morf_mean(self) -> torch.Tensor:
        """(N,) mean probability over the percentages, most relevant removed first (low is good)."""
        return self._mean("morf")

    @property
    def lerf_mean(self) -> torch.Tensor:
        """(N,) mean probability over the percentages, least relevant removed first (high is good)."""
        return self._mean("lerf")

    @property
    def gap(self) -> torch.Tensor:
        """(N,) LeRF minus MoRF mean probability: high is good, 0 is chance (pytorch-grad-cam's
        ``ROADCombined`` is half of it)."""
        return self.lerf_mean - self.morf_mean

    def _mean(self, order: str) -> torch.Tensor:
        values = getattr(self, order)
        if values is None:
            raise DeepscopeError(f"this ROAD result has no {order} curve; compute it with orders=({order!r},).")
        return values.mean(dim=1)


def road(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
         percentages: Sequence[float] = PERCENTAGES, orders: Sequence[str] = ORDERS, noise: float = 0.01,
         seed: int = 0, batch_size: int = 32, reduction: str = DEFAULT_REDUCTION,
         progress: bool = False) -> ROADResult:
    """Remove each percentage of pixels in each order, impute them, and read the target's probability.

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
    percentages : sequence of numbers in (0, 100)
        Shares of pixels removed (the paper's 10 to 90).
    orders : sequence of "morf", "lerf"
    noise : float
        Standard deviation of the imputation's noise, in model-input units (the authors' 0.01).
    seed : int
        Seed of the noise.
    batch_size : int
        Imputed images run through the model together (they are solved :data:`IMPUTATION_CHUNK` at a time).
    """
    check_maps(inputs, maps)
    check_positive(batch_size=batch_size)
    if reduction is None:
        raise DeepscopeError("ROAD removes whole pixels: give a channel reduction (e.g. 'abs-max').")
    unknown = [order for order in orders if order not in ORDERS]
    if unknown or not orders:
        raise DeepscopeError(f"orders must name some of {', '.join(ORDERS)}; got {list(orders)!r}.")
    if not percentages or not all(0 < float(p) < 100 for p in percentages):
        raise DeepscopeError(f"percentages must lie strictly between 0 and 100; got {list(percentages)!r}.")
    if noise < 0:
        raise DeepscopeError(f"noise is a standard deviation and cannot be negative, got {noise}.")
    from tqdm.auto import tqdm

    inputs = inputs.detach()
    n, _, h, w = inputs.shape
    device = inputs.device
    values = relevance(maps, inputs, reduction)
    ranks = {order: ranks_of(values, descending=order == "morf") for order in orders}
    shares = torch.tensor([float(p) for p in percentages], device=device)
    counts = torch.round(shares / 100 * h * w).long()
    resolved, original = original_scores(model, inputs, target, batch_size)
    # jobs in the order (image, percentage): the noise of each imputed image is one draw, in this order
    images = torch.arange(n, device=device).repeat_interleave(len(counts))
    removed_counts = counts.repeat(n)
    results = {}
    bar = tqdm(total=len(orders) * len(images), desc="ROAD", unit="image", disable=not progress, leave=False)
    with bar:
        for order in orders:
            generator = torch.Generator(device=device).manual_seed(seed)
            scores = torch.empty(len(images), device=device)
            for chunk in torch.arange(len(images), device=device).split(batch_size):
                image = images[chunk]
                removed = ranks[order][image] < removed_counts[chunk].view(-1, 1, 1, 1)
                imputed = torch.cat([noisy_linear_imputation(inputs[part], mask, noise=noise, generator=generator)
                                     for part, mask in zip(image.split(IMPUTATION_CHUNK),
                                                           removed.split(IMPUTATION_CHUNK))])
                with Probe(model, detach=True), torch.inference_mode():
                    scores[chunk] = target_probability(model(fast_layout(imputed)), resolved, image)
                bar.update(len(chunk))
            results[order] = scores.view(n, len(counts))
    return ROADResult(shares, original, results.get("morf"), results.get("lerf"), targets_of(resolved, n, device))
