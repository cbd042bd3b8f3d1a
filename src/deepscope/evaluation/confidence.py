"""Average drop and increase in confidence (Chattopadhay, Sarkar, Howlader and Balasubramanian,
"Grad-CAM++", WACV 2018).

Each input is multiplied by its map, scaled to [0, 1] (the "explanation map" ``E * x``), and the target
class's softmax probability is read on it. With ``Y`` the probability on the input and ``O`` on the
explanation map: **average drop** is the mean of ``max(0, Y - O) / Y`` (*low* is good: the map keeps what
the model needs), **increase in confidence** the share of inputs with ``O > Y`` (*high* is good). One
forward pass per input.

The map is reduced to one channel (:func:`~deepscope.maps.saliency`, ``abs-max`` by default), scaled to
[0, 1] by its minimum and maximum at its own resolution, then upsampled bilinearly to the input, as
torchcam does with its CAMs (a constant map becomes 0). Differs from torchcam 0.5: the paper's ``Y`` in
the denominator (torchcam adds 1e-7), per-image values are returned rather than running sums, and the
inputs and their explanation maps run through the model in the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepscope.evaluation.common import DEFAULT_REDUCTION
from deepscope.evaluation.perturbation import check_maps, check_positive, target_probability, targets_of
from deepscope.maps import normalize, saliency, upsample
from deepscope.probe import Probe, fast_layout
from deepscope.targets import Target, resolve_target


@dataclass
class ConfidenceResult:
    """Target probability on each input and on its explanation map.

    Attributes
    ----------
    original, masked : (N,) tensors
        Probability of the target on the input (``Y``) and on the input times its scaled map (``O``).
    targets : (N,) tensor
        The class tracked for each sample (-1 for a callable target).
    """

    original: torch.Tensor
    masked: torch.Tensor
    targets: torch.Tensor

    @property
    def drop(self) -> torch.Tensor:
        """(N,) ``max(0, Y - O) / Y``; its mean is the average drop (low is good)."""
        return (self.original - self.masked).clamp_min(0) / self.original

    @property
    def increase(self) -> torch.Tensor:
        """(N,) 1 where the probability rose on the explanation map, else 0; its mean is the increase in
        confidence (high is good)."""
        return (self.masked > self.original).float()


def confidence_change(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                      batch_size: int = 64, reduction: str = DEFAULT_REDUCTION) -> ConfidenceResult:
    """The target's probability on each input and on the input times its map scaled to [0, 1].

    Parameters
    ----------
    model : nn.Module
        The classifier the maps explain (its output: logits).
    inputs : (N, C, H, W) tensor
        Model input; never modified.
    maps : (N, C', h, w) tensor
        Maps of ``inputs`` from any method.
    target : Target
        Class tracked per sample; default: the predicted class of the input.
    batch_size : int
        Inputs per forward pass.
    """
    check_maps(inputs, maps)
    check_positive(batch_size=batch_size)
    inputs = inputs.detach()
    n = len(inputs)
    scaled = normalize(saliency(maps.detach().to(inputs.device), None, reduction), "minmax")
    explanation = upsample(scaled, tuple(inputs.shape[-2:])) * inputs
    both = torch.cat([inputs, explanation])  # the inputs and their explanation maps, run in the same batches
    with Probe(model, detach=True), torch.inference_mode():
        output = torch.cat([model(fast_layout(chunk)) for chunk in both.split(batch_size)])
        resolved = resolve_target(target, output[:n])
        rows = torch.arange(n, device=inputs.device).repeat(2)
        probabilities = target_probability(output, resolved, rows)
    targets = targets_of(resolved, n, inputs.device).clone()
    return ConfidenceResult(probabilities[:n].clone(), probabilities[n:].clone(), targets)
