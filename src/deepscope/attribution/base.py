"""The protocol every attribution method follows.

``method = Method(model, **options)``; ``maps = method.attribute(inputs, target=None)``.

- ``inputs``: a (N, C, H, W) float batch of model input (already normalised). It is never modified.
- ``target``: see :mod:`deepscope.targets` (default: the predicted class of each sample).
- returns raw maps as a tensor on the input's device: (N, C, H, W) for per-pixel-per-channel
  attributions (gradients, Integrated Gradients) or (N, 1, H, W) for spatial ones (occlusion, CAMs).
  Use :mod:`deepscope.maps` to reduce channels, resize and normalise; :attr:`Attribution.display` says
  how the method's maps are shown (:func:`deepscope.maps.display_maps`).

On the CPU, methods run the model on channels-last copies of the input (:func:`deepscope.probe.fast_layout`).
The user's model is only touched through :class:`deepscope.probe.Probe`, so it is exactly as
before after every call, also when the call raises. Each method documents only how it differs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from deepscope.errors import DeepscopeError
from deepscope.maps import Display
from deepscope.targets import Target


class Attribution:
    """Base class: stores the model and options; :meth:`attribute` does the work.

    Subclasses set :attr:`name` (the short name used by the CLI and the report) and implement
    :meth:`_attribute`.
    """

    name: ClassVar[str] = "attribution"
    #: True when maps are per input channel (reduce them with maps.reduce_channels before display).
    per_channel: ClassVar[bool] = False
    #: how the maps are shown and ranked: by default one unsigned map (per-channel maps reduced by abs-max)
    display: Display = Display()

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise DeepscopeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """Maps for ``inputs`` and ``target`` (see the module docstring)."""
        check_inputs(inputs)
        return self._attribute(inputs.detach(), target)

    __call__ = attribute

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "model" and not k.startswith("_"))
        return f"{type(self).__name__}({options})"


def check_inputs(inputs: torch.Tensor) -> None:
    """Raise a clear error unless ``inputs`` is a (N, C, H, W) floating-point tensor."""
    if not isinstance(inputs, torch.Tensor):
        raise DeepscopeError(f"inputs must be a torch.Tensor of shape (N, C, H, W), got {type(inputs).__name__}.")
    if inputs.ndim != 4:
        raise DeepscopeError(f"inputs must be a batch of shape (N, C, H, W), got shape {tuple(inputs.shape)}; "
                             "add a batch dimension with inputs.unsqueeze(0).")
    if not inputs.dtype.is_floating_point:
        raise DeepscopeError(f"inputs must be floating point (normalised model input), got {inputs.dtype}.")
