"""Convolution filters as pictures: the first layer's RGB filters and views of deeper layers.

Krizhevsky et al. 2012 and Zeiler & Fergus 2014 show the first layer's filters as colour tiles.
:func:`filter_view` returns what a grid figure needs, as tensors; :mod:`deepscope.render.filters` draws it.

How a convolution ``weight`` of shape ``(out, in / groups, kh, kw)`` is shown:

==============  =======================================  ==============================================
view ``kind``   when                                      tiles
==============  =======================================  ==============================================
``rgb``         3 input channels, ``groups == 1``         one colour tile per filter, ``(F, 3, kh, kw)``
``depthwise``   one input channel per filter              one grey tile per channel, ``(F, 1, kh, kw)``
``pointwise``   1x1 kernel                                the weight matrix ``(out, in)``, raw values
``channels``    any other convolution                     one row per output channel, one grey tile per
                                                          input channel, ``(F, I, kh, kw)``
==============  =======================================  ==============================================

Normalisation to [0, 1] (``tile = (w - lo) / (hi - lo)``, a constant filter becomes 0.5):
``"per-filter"`` takes ``lo, hi`` over each output filter (all its input channels), ``"shared"``
over the layer's whole weight tensor -- in both cases before any sampling, so a tile's grey level
means the same whether or not the layer was sampled. A pointwise matrix keeps the raw weights (a
signed heatmap). Large layers are sampled at evenly spaced channels; :attr:`FilterView.description`
says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepscope.errors import DeepscopeError, UnsupportedModelError, did_you_mean
from deepscope.probe import get_layer

NORMALIZATIONS = ("per-filter", "shared")
#: default caps on what one figure shows, per view kind: (output channels, input channels)
DEFAULT_LIMITS = {"rgb": (256, 3), "depthwise": (256, 1), "channels": (16, 16), "pointwise": (128, 128)}


@dataclass
class FilterView:
    """What a filter grid shows.

    Attributes
    ----------
    layer : str
        Name of the convolution.
    kind : str
        ``"rgb"``, ``"depthwise"``, ``"channels"`` or ``"pointwise"`` (see the module docstring).
    tiles : torch.Tensor
        ``(F, C, kh, kw)`` filters normalised to [0, 1] (C = 3 for rgb, 1 for depthwise), or for a
        pointwise layer the raw ``(F, I)`` weight matrix.
    outputs, inputs : torch.Tensor
        Indices of the output and input channels shown (rows and tile columns / matrix columns).
    weight_shape : tuple of int
        Shape of the full weight tensor.
    normalize : str
        ``"per-filter"``, ``"shared"``, or ``"none"`` for a pointwise matrix.
    description : str
        One line saying what is shown, including any sampling.
    """

    layer: str
    kind: str
    tiles: torch.Tensor
    outputs: torch.Tensor
    inputs: torch.Tensor
    weight_shape: tuple[int, ...]
    normalize: str
    description: str


def conv_layers(model: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` (subclasses included: TF 'SAME' convolutions, timm's ``Conv2dSame``)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def first_conv(model: nn.Module) -> str:
    """Name of the model's first 2-D convolution (in definition order, which is the order torchvision,
    timm and the TFLite import run them).

    Raises
    ------
    UnsupportedModelError
        If the model has no ``nn.Conv2d``.
    """
    names = conv_layers(model)
    if not names:
        raise UnsupportedModelError("the model has no nn.Conv2d layer, so it has no filters to show.")
    return names[0]


def resolve_conv(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Conv2d]:
    """The convolution called ``layer`` (default: the first one); a block holding convolutions stands for
    its first one (``features.0`` of torchvision's MobileNet-V2 is ``features.0.0``)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError("this is a TorchScript model: its layers are compiled, not nn.Conv2d modules, so "
                                    "their filters cannot be found; use a non-scripted model (a torchvision/timm "
                                    "name, or ARCH@weights.pth with a state_dict).")
    name = first_conv(model) if layer is None else layer
    module = get_layer(model, name)
    if isinstance(module, nn.Conv2d):
        return name, module
    inner = [f"{name}.{sub}" for sub, m in module.named_modules() if sub and isinstance(m, nn.Conv2d)]
    if not inner:
        hint = did_you_mean(name, conv_layers(model)) or f" Convolutions: {', '.join(conv_layers(model)[:8])}, ..."
        raise UnsupportedModelError(f"layer {name!r} is a {type(module).__name__}, not a convolution.{hint}")
    return inner[0], get_layer(model, inner[0])


def view_kind(conv: nn.Conv2d) -> str:
    """``"rgb"``, ``"depthwise"``, ``"pointwise"`` or ``"channels"`` for a convolution's weight."""
    out_channels, in_per_group, kh, kw = conv.weight.shape
    if in_per_group == 3 and conv.groups == 1:
        return "rgb"
    if in_per_group == 1 and conv.groups > 1:
        return "depthwise"
    if kh == kw == 1:
        return "pointwise"
    return "channels"


def normalize_filters(weight: torch.Tensor, mode: str = "per-filter") -> torch.Tensor:
    """Map a ``(F, C, kh, kw)`` weight to [0, 1]: ``(w - lo) / (hi - lo)`` with ``lo, hi`` per filter
    (``"per-filter"``) or over the whole tensor (``"shared"``); constant filters become 0.5."""
    if mode not in NORMALIZATIONS:
        raise DeepscopeError(f"normalize={mode!r}: use one of {', '.join(NORMALIZATIONS)}.")
    weight = weight.float()
    dims = tuple(range(1, weight.ndim)) if mode == "per-filter" else tuple(range(weight.ndim))
    low = weight.amin(dim=dims, keepdim=True)
    span = weight.amax(dim=dims, keepdim=True) - low
    return torch.where(span > 0, (weight - low) / span.clamp_min(torch.finfo(weight.dtype).tiny),
                       torch.full_like(weight, 0.5))


def sample_indices(count: int, limit: int, device: torch.device | None = None) -> torch.Tensor:
    """All of ``range(count)`` if it fits in ``limit``, else ``limit`` evenly spaced indices (first and last kept)."""
    if count <= limit:
        return torch.arange(count, device=device)
    return torch.linspace(0, count - 1, limit, device=device).round().long()


def filter_view(model: nn.Module, layer: str | None = None, *, normalize: str = "per-filter",
                max_outputs: int | None = None, max_inputs: int | None = None) -> FilterView:
    """The filters of one convolution, ready to draw.

    Parameters
    ----------
    model : nn.Module
        Any model; only its weights are read.
    layer : str, optional
        A convolution (or a block whose first convolution is meant). Default: the first convolution.
    normalize : {"per-filter", "shared"}
        How tiles are mapped to [0, 1] (see the module docstring); ignored for a pointwise matrix.
    max_outputs, max_inputs : int, optional
        Caps on the output channels (rows / tiles) and input channels (columns) shown; larger layers
        are sampled evenly. Defaults depend on the kind: :data:`DEFAULT_LIMITS`.
    """
    if normalize not in NORMALIZATIONS:
        raise DeepscopeError(f"normalize={normalize!r}: use one of {', '.join(NORMALIZATIONS)}.")
    for what, value in (("max_outputs", max_outputs), ("max_inputs", max_inputs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DeepscopeError(f"{what} must be a positive integer or None, got {value!r}.")
    name, conv = resolve_conv(model, layer)
    kind = view_kind(conv)
    weight = conv.weight.detach().float()
    out_limit, in_limit = DEFAULT_LIMITS[kind]
    out_limit, in_limit = max_outputs or out_limit, max_inputs or in_limit
    outputs = sample_indices(weight.shape[0], out_limit, weight.device)
    inputs = sample_indices(weight.shape[1], in_limit, weight.device)
    if kind == "pointwise":
        tiles, used = weight[outputs][:, inputs, 0, 0].clone(), "none"
    else:
        tiles, used = normalize_filters(weight, normalize)[outputs][:, inputs], normalize
    flat = weight[outputs].flatten(1)
    constant = int((flat.amax(dim=1) == flat.amin(dim=1)).sum()) if kind != "pointwise" else 0
    return FilterView(name, kind, tiles, outputs, inputs, tuple(weight.shape), used,
                      _describe(name, conv, kind, outputs, inputs, used, constant))


def _describe(name: str, conv: nn.Conv2d, kind: str, outputs: torch.Tensor, inputs: torch.Tensor, used: str,
              constant: int) -> str:
    out_channels, in_per_group, kh, kw = conv.weight.shape
    shape = "x".join(str(s) for s in conv.weight.shape)
    what = {"rgb": "colour filters", "depthwise": "depthwise filters, one per channel",
            "pointwise": "pointwise (1x1) weight matrix, output x input channels",
            "channels": "filters: one row per output channel, one tile per input channel"}[kind]
    text = f"{name} ({type(conv).__name__} {shape}, groups {conv.groups}): {what}"
    if len(outputs) < out_channels:
        text += f"; {len(outputs)} of {out_channels} output channels, evenly spaced"
    if kind in ("channels", "pointwise") and len(inputs) < in_per_group:
        text += f"; {len(inputs)} of {in_per_group} input channels, evenly spaced"
    if conv.groups > 1 and kind != "depthwise":
        text += f"; inputs are within each filter's group of {in_per_group}"
    text += "; raw weights (signed)" if used == "none" else f"; normalised {used} to [0, 1]"
    if constant:
        text += f"; {constant} constant (dead) filter{'s' if constant > 1 else ''} shown flat"
    return text
