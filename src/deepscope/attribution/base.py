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
        """Maps for ``inputs`` and ``target`` (see the module docstring).

        ``inputs`` are checked and prepared by :func:`check_inputs` first (cast to the model's dtype; refused
        when they are not a non-empty, finite (N, C, H, W) float batch of the channels the model takes). Works
        inside ``torch.inference_mode()`` too: gradients are computed in a block where it is off.
        """
        with torch.inference_mode(False):
            return self._attribute(check_inputs(inputs, self.model), target)

    __call__ = attribute

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "model" and not k.startswith("_"))
        return f"{type(self).__name__}({options})"


def check_inputs(inputs: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """The batch a method runs on, or a :class:`DeepscopeError` that says what to pass instead.

    Refused: anything but a tensor; a single image (3-D: add a batch dimension); integer pixels (normalise
    them first, e.g. ``loaded.preprocess``); an empty batch; NaN or infinite values (they would give maps of
    zeros or NaNs); a channel count other than what the model's first convolution takes. Cast: a floating
    dtype other than the model's (float64 inputs to a float32 model) becomes the model's. An inference tensor
    (made under ``torch.inference_mode()``) is copied into a normal one. Returned detached; never modified.
    """
    if not isinstance(inputs, torch.Tensor):
        raise DeepscopeError(f"inputs must be a torch.Tensor of shape (N, C, H, W), got {type(inputs).__name__}; "
                             "load photos with deepscope.images.load_inputs(paths, loaded.preprocess).")
    if inputs.ndim == 3:
        raise DeepscopeError(f"inputs must be a batch (N, C, H, W), got one image of shape {tuple(inputs.shape)}; "
                             "add a batch dimension with inputs.unsqueeze(0).")
    if inputs.ndim != 4:
        raise DeepscopeError(f"inputs must be a batch of shape (N, C, H, W), got shape {tuple(inputs.shape)}.")
    if not inputs.dtype.is_floating_point:
        raise DeepscopeError(f"inputs must be floating point (normalised model input), got {inputs.dtype}; "
                             "normalise the pixels first, e.g. with loaded.preprocess.")
    if inputs.shape[0] == 0:
        raise DeepscopeError("inputs is an empty batch (N = 0); give at least one image.")
    expected = _input_channels(model)
    if expected is not None and inputs.shape[1] != expected:
        raise DeepscopeError(f"inputs have {inputs.shape[1]} channel(s) but the model takes {expected}; "
                             "convert the images (deepscope.images.load_image gives RGB) and normalise them.")
    finite = torch.isfinite(inputs).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise DeepscopeError(f"inputs contain NaN or infinite values (sample(s) {', '.join(map(str, bad[:5]))}"
                             f"{' ...' if len(bad) > 5 else ''}); check how they were made.")
    dtype = _model_dtype(model)
    if dtype is not None and inputs.dtype != dtype:
        inputs = inputs.to(dtype)
    if inputs.is_inference():
        with torch.inference_mode(False):
            inputs = inputs.clone()
    return inputs.detach()


def _model_dtype(model: nn.Module | None) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter (None without one)."""
    for parameter in model.parameters() if model is not None else ():
        if parameter.dtype.is_floating_point:
            return parameter.dtype
    return None


def _input_channels(model: nn.Module | None) -> int | None:
    """The channel count the model's first convolution takes (None if it has none, or a grouped one)."""
    for module in model.modules() if model is not None else ():
        if isinstance(module, nn.Conv2d):
            return module.in_channels if module.groups == 1 else None
    return None
