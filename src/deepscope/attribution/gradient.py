"""Gradient saliency (Simonyan, Vedaldi and Zisserman, 2014).

Differs from the protocol: ``absolute=True`` (default, the lecture's saliency) returns
``max_c |d score / d x_c|`` as (N, 1, H, W); ``absolute=False`` returns the raw signed gradient (N, C, H, W).
With ``neuron_layer="features.14"`` the score is an intermediate layer's: ``target`` is then a channel index
or a callable on that layer's activation (see :func:`deepscope.targets.layer_scores`); this explains a neuron
or a channel, not a class (the CAMs' ``layer`` is something else: the maps they weight).
"""

from __future__ import annotations

import torch
from torch import nn

from deepscope.attribution.base import Attribution
from deepscope.maps import reduce_channels
from deepscope.probe import Probe, check_hookable, fast_layout, input_gradient
from deepscope.targets import Target, layer_scores, resolve_target, target_scores


class Gradient(Attribution):
    name = "gradient"

    def __init__(self, model: nn.Module, absolute: bool = True, neuron_layer: str | None = None):
        super().__init__(model)
        if neuron_layer is not None:
            check_hookable(model)
        self.absolute = absolute
        self.neuron_layer = neuron_layer
        self.per_channel = not absolute

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        grad = self.input_gradient(inputs, target)
        return reduce_channels(grad, "abs-max") if self.absolute else grad

    def input_gradient(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        """d score / d inputs, (N, C, H, W), with the model's backward as :meth:`_prepare` leaves it."""
        with Probe(self.model, [self.neuron_layer] if self.neuron_layer else []) as probe, torch.enable_grad():
            self._prepare(probe)
            x = fast_layout(inputs).clone().requires_grad_(True)
            output = probe(x)
            if self.neuron_layer:
                scores = layer_scores(probe.activations[self.neuron_layer], target)
            else:
                scores = target_scores(output, resolve_target(target, output))
            (grad,) = input_gradient(scores, x)
        return grad.contiguous()

    def _prepare(self, probe: Probe) -> None:
        """Change the backward pass through ``probe`` (guided backprop does); plain gradient: nothing."""
