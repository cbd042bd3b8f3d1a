"""Infidelity and sensitivity-max (Yeh, Hsieh, Suggala, Inouye and Ravikumar, "On the (In)fidelity and
Sensitivity of Explanations", NeurIPS 2019).

- **Infidelity**: how badly the map, read as a linear model of the network around the input, predicts the
  change of the target score under random perturbations ``I``:
  ``E_I[(I . map - (f(x) - f(x - I)))^2]``, where ``f`` is the target's logit (deepscope's scores are
  logits; a callable target's value otherwise). *Low* is good. With ``normalize=True`` (the default, as
  in the authors' code) the map is first scaled by the factor that minimises the error, so maps of
  different scales (a CAM, a gradient) compare fairly. Perturbations: Gaussian noise of standard
  deviation ``sigma`` on every input value (the paper's "noisy baseline").
- **Sensitivity-max**: how far the map moves when the input moves a little:
  ``max_j ||map(x + d_j) - map(x)|| / ||map(x)||`` over ``samples`` draws ``d_j`` uniform in
  ``[-radius, radius]`` per input value (Frobenius norms of the raw maps, as captum). *Low* is good;
  Yeh et al. show that SmoothGrad lowers it against the plain gradient.

Maps enter as the method returns them (no channel reduction): per-channel maps as they are, one-channel
maps (CAMs) upsampled to the input and shared by all channels. Draws come from a generator on the input's
device seeded by ``seed``, one draw per perturbed input in a documented order, so the results do not
depend on ``batch_size``; the same draws fed to captum's ``infidelity`` and ``sensitivity_max`` give the
same numbers. By default sensitivity-max calls the explainer on the same chunks of images as for the
unperturbed maps, one draw at a time, so a seeded stochastic explainer (SmoothGrad) sees the same noise in
both calls: the metric measures how the explanation moves with the input, not the explainer's own
sampling noise (``common_noise=False`` batches freely, as captum).
"""

from __future__ import annotations

import torch
from torch import nn

from deepscope.attribution.base import check_inputs
from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import row_draws, saliency, wide_dtype
from deepscope.evaluation.perturbation import check_maps, check_positive
from deepscope.evaluation.randomization import MethodBuilder, builder
from deepscope.probe import Probe, batched_forward, fast_layout
from deepscope.targets import Target, resolve_target, select_target, target_scores


def infidelity(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
               samples: int = 50, sigma: float = 0.1, normalize: bool = True, seed: int = 0,
               batch_size: int = 64) -> torch.Tensor:
    """(N,) infidelity of each map under ``samples`` Gaussian perturbations (low is good).

    Parameters
    ----------
    model : nn.Module
        The classifier the maps explain (its output: logits).
    inputs : (N, C, H, W) tensor
        Model input; never modified.
    maps : (N, C or 1, h, w) tensor
        Raw maps of ``inputs`` (one channel: shared by every input channel).
    target : Target
        Score explained; default: the predicted class's logit.
    samples : int
        Perturbations per input (one forward pass each).
    sigma : float
        Standard deviation of the perturbation, in model-input units.
    normalize : bool
        Scale each map by the factor that minimises its infidelity first (captum's ``normalize``).
    seed : int
        Seed of the perturbations: draw ``i * samples + j`` (shaped like one input) is perturbation ``j``
        of input ``i``, times ``sigma``.
    batch_size : int
        Perturbed inputs per forward pass.
    """
    check_maps(inputs, maps)
    check_positive(samples=samples, batch_size=batch_size)
    if not sigma > 0:
        raise DeepscopeError(f"sigma is the perturbations' standard deviation and must be positive, got {sigma}.")
    inputs = inputs.detach()
    n = len(inputs)
    explanation = _input_shaped(maps, inputs)
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    wide = wide_dtype(inputs.device)
    products = torch.empty(n * samples, dtype=wide, device=inputs.device)
    changes = torch.empty_like(products)
    with Probe(model, detach=True), torch.inference_mode():
        output = torch.cat([model(fast_layout(chunk)) for chunk in inputs.split(batch_size)])
        resolved = resolve_target(target, output)
        scores = target_scores(output, resolved).to(wide)
        for rows in torch.arange(n * samples, device=inputs.device).split(batch_size):
            image = rows // samples
            perturbation = sigma * row_draws(generator, len(rows), inputs)
            perturbed = target_scores(model(fast_layout(inputs[image] - perturbation)), select_target(resolved, image))
            products[rows] = (perturbation.to(wide) * explanation[image]).flatten(1).sum(dim=1)
            changes[rows] = scores[image] - perturbed.to(wide)
    products, changes = products.view(n, samples), changes.view(n, samples)
    if normalize:
        beta = (products * changes).sum(dim=1) / (products * products).sum(dim=1)
        products = torch.nan_to_num(beta, nan=0.0, posinf=0.0, neginf=0.0).view(-1, 1) * products
    return ((products - changes) ** 2).mean(dim=1).float()


def sensitivity_max(method: MethodBuilder, model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                    samples: int = 10, radius: float = 0.02, common_noise: bool = True, seed: int = 0,
                    batch_size: int = 16) -> torch.Tensor:
    """(N,) largest relative change of the map over ``samples`` uniform perturbations (low is good).

    Parameters
    ----------
    method : callable ``model -> explainer``
        Builds the explanation (an Attribution class, ``lambda m: SmoothGrad(Gradient(m))``).
    model : nn.Module
    inputs : (N, C, H, W) tensor
    target : Target
        Class explained, the same for the perturbed inputs; default: the predicted class of each input.
    samples : int
        Perturbations per input (one explanation each).
    radius : float
        Half-width of the uniform perturbation of each input value (model-input units; captum's 0.02).
    common_noise : bool
        Explain one perturbation of a chunk of images per call, the same chunks as the unperturbed maps, so
        an explainer that draws its own noise by position in the call (deepscope's SmoothGrad) draws the
        same in both (common random numbers). False: ``batch_size`` perturbed inputs per call, as captum
        does; faster for few images, but a stochastic explainer's own sampling noise then counts as
        sensitivity. Deterministic explainers give the same values either way.
    seed : int
        Seed of the perturbations: draw ``j * N + i`` (uniform in [0, 1), shaped like one input) gives
        perturbation ``j`` of input ``i``: ``radius * (2 * draw - 1)``.
    batch_size : int
        Images (perturbed inputs) explained per call.
    """
    check_inputs(inputs)
    check_positive(samples=samples, batch_size=batch_size)
    if not radius > 0:
        raise DeepscopeError(f"radius must be positive, got {radius}.")
    explain = builder(method)(model)
    inputs = inputs.detach()
    n = len(inputs)
    resolved = resolve_target(target, batched_forward(model, inputs, batch_size))
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    chunks = torch.arange(n, device=inputs.device).split(batch_size)
    references = torch.cat([explain(inputs[chunk], select_target(resolved, chunk)).detach() for chunk in chunks])
    norms = references.flatten(1).norm(dim=1)
    norms = torch.where(norms == 0, 1.0, norms)
    if common_noise:
        calls = [j * n + chunk for j in range(samples) for chunk in chunks]
    else:
        calls = torch.arange(samples * n, device=inputs.device).split(batch_size)
    largest = torch.zeros(n, device=inputs.device)
    for rows in calls:  # in increasing order, so the draws are consumed row by row
        image = rows % n
        perturbed = inputs[image] + radius * (2 * row_draws(generator, len(rows), inputs, "uniform") - 1)
        moved = explain(perturbed, select_target(resolved, image)).detach()
        change = (moved - references[image]).flatten(1).norm(dim=1) / norms[image]
        largest.scatter_reduce_(0, image, change.float(), "amax")
    return largest


def _input_shaped(maps: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Maps in the wide dtype, shaped like the inputs: upsampled, a single channel shared by all."""
    values = saliency(maps.detach().to(inputs.device), tuple(inputs.shape[-2:]), reduction=None)
    if values.shape[1] not in (1, inputs.shape[1]):
        raise DeepscopeError(f"maps with {values.shape[1]} channels do not fit inputs with {inputs.shape[1]}.")
    return values.to(wide_dtype(inputs.device)).expand(-1, inputs.shape[1], -1, -1)
