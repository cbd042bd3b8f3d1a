"""Guided backpropagation (Springenberg et al., 2015).

Differs from :class:`~deepscope.attribution.gradient.Gradient` in the backward pass: at every ReLU
(and ReLU6) only positive gradients pass, and only where the forward input was positive. Defaults to
the raw signed map (N, C, H, W) (``absolute=False``).

Only ``nn.ReLU`` and ``nn.ReLU6`` modules are guided. A model that uses other activation modules
(SiLU, GELU, Hardswish, LeakyReLU, ...) raises :class:`~deepscope.errors.UnsupportedModelError`
instead of giving a silently different answer. Activations called as functions (``F.relu``) cannot be
seen; a model made only of such calls gives the plain gradient, so the method refuses a model with no
guidable module at all.
"""

from __future__ import annotations

import torch
from torch import nn

from deepscope.attribution.gradient import Gradient
from deepscope.errors import UnsupportedModelError
from deepscope.geometry import activation_types
from deepscope.probe import Probe, check_hookable

#: activations guided and refused, from the table of element-wise modules (each with its reason there)
GUIDED_TYPES = activation_types("guided")
UNGUIDABLE_TYPES = activation_types("refused")


def _positive_part(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


class GuidedBackprop(Gradient):
    name = "guided"

    def __init__(self, model: nn.Module, absolute: bool = False, neuron_layer: str | None = None):
        super().__init__(model, absolute=absolute, neuron_layer=neuron_layer)
        check_hookable(model)
        guided, unguidable = [], []
        for name, module in model.named_modules():
            if isinstance(module, GUIDED_TYPES):
                guided.append(module)
            elif isinstance(module, UNGUIDABLE_TYPES) and not isinstance(module, nn.Hardtanh | nn.Sigmoid):
                unguidable.append(f"{name} ({type(module).__name__})")
        if unguidable:
            shown = ", ".join(unguidable[:3]) + (f" and {len(unguidable) - 3} more" if len(unguidable) > 3 else "")
            raise UnsupportedModelError(
                f"guided backprop is defined for ReLU networks; this model also uses {shown}. "
                "Use gradient, smoothgrad or ig instead.")
        if not guided:
            raise UnsupportedModelError("guided backprop found no nn.ReLU/nn.ReLU6 module in this model "
                                        "(functional activations cannot be guided); use gradient instead.")
        self._guided = guided

    def _prepare(self, probe: Probe) -> None:
        # The output gradient is clamped to its positive part; the activation's own backward then
        # zeroes it where the forward input was not positive: together, the guided rule.
        probe.rewrite_output_gradients(self._guided, _positive_part)
