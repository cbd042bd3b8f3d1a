"""Post-processing of attribution maps, each an explicit step: reduce channels, resize, normalise, display.

Methods return raw maps shaped (N, C, H, W); nothing is normalised behind the caller's back. Every method
declares how its maps are shown (:class:`Display`: how channels become one map, and whether the sign means
something), and one pair of functions turns raw maps into what the metrics rank (:func:`saliency`) and what
the figures, the report and the explorer draw (:func:`display_maps`, the same map scaled for colouring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deepscope.errors import DeepscopeError

REDUCTIONS = ("abs-max", "abs-sum", "sum", "max", "l2")
#: display maps are divided by this percentile of |map| and clipped, so a few extreme pixels (common in
#: gradient maps) do not wash out the rest
DISPLAY_PERCENTILE = 99.5


@dataclass(frozen=True)
class Display:
    """How a method's maps are shown and ranked.

    Attributes
    ----------
    reduction : str or None
        How per-channel maps (N, C, H, W) become one map: ``abs-max`` (the largest magnitude over colour
        channels, the lecture's saliency), ``sum`` (signed: what adds up to a score difference, as for
        Integrated Gradients and LRP), or another of :data:`REDUCTIONS`; ``None`` keeps the channels (a
        gradient shown as an RGB image). Single-channel maps are never reduced.
    signed : bool
        Whether negative values mean something (evidence against the class): such maps are drawn with a
        diverging colour map centred on zero; unsigned maps are drawn from 0 up, negative values clipped.
    """

    reduction: str | None = "abs-max"
    signed: bool = False

    def __post_init__(self):
        if self.reduction is not None and self.reduction not in REDUCTIONS:
            raise DeepscopeError(f"unknown channel reduction {self.reduction!r}; choose one of {', '.join(REDUCTIONS)}.")


def reduce_channels(maps: torch.Tensor, how: str = "abs-max") -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W). ``abs-max`` is the lecture's saliency: max over channels of |map|."""
    if maps.ndim != 4:
        raise DeepscopeError(f"maps must be (N, C, H, W), got shape {tuple(maps.shape)}.")
    if maps.shape[1] == 1 and how in ("sum", "max"):
        return maps
    match how:
        case "abs-max":
            return maps.abs().amax(dim=1, keepdim=True)
        case "abs-sum":
            return maps.abs().sum(dim=1, keepdim=True)
        case "sum":
            return maps.sum(dim=1, keepdim=True)
        case "max":
            return maps.amax(dim=1, keepdim=True)
        case "l2":
            return maps.pow(2).sum(dim=1, keepdim=True).sqrt()
    raise DeepscopeError(f"unknown channel reduction {how!r}; choose one of {', '.join(REDUCTIONS)}.")


def upsample(maps: torch.Tensor, size: tuple[int, int] | int) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) maps to ``size`` (no-op if already that size)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def normalize(maps: torch.Tensor, how: str = "minmax", eps: float = 1e-12) -> torch.Tensor:
    """Normalise each map of a (N, ...) batch on its own.

    ``minmax``: to [0, 1]; ``max``: divide by the max of |map| (keeps sign and zero);
    ``percentile``: divide by the 99th percentile of |map| and clip to [-1, 1].
    """
    flat = maps.flatten(1)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    match how:
        case "minmax":
            low, high = flat.amin(1).view(shape), flat.amax(1).view(shape)
            return (maps - low) / (high - low).clamp_min(eps)
        case "max":
            return maps / flat.abs().amax(1).view(shape).clamp_min(eps)
        case "percentile":
            return scale_to_percentile(maps, 99.0)
    raise DeepscopeError(f"unknown normalisation {how!r}; choose minmax, max or percentile.")


def scale_to_percentile(maps: torch.Tensor, percentile: float = DISPLAY_PERCENTILE, eps: float = 1e-12) -> torch.Tensor:
    """Each map of a (N, ...) batch divided by its ``percentile`` of |map| and clipped to [-1, 1]."""
    flat = maps.flatten(1).abs().float()
    shape = (-1,) + (1,) * (maps.ndim - 1)
    scale = torch.quantile(flat, percentile / 100, dim=1).to(maps.dtype).view(shape)
    return (maps / scale.clamp_min(eps)).clamp(-1, 1)


def saliency(maps: torch.Tensor, size: tuple[int, int] | int | None = None,
             reduction: str | None = "abs-max") -> torch.Tensor:
    """Raw maps -> the float maps metrics rank and :func:`display_maps` colours: (N, 1, H, W) at ``size``.

    Maps with several channels are reduced with :func:`reduce_channels` (``reduction``; ``None`` keeps the
    channels); single-channel maps are kept as they are, sign included. Maps smaller than ``size`` (CAMs at
    their layer's resolution) are upsampled bilinearly. NaNs become 0.
    """
    if maps.ndim != 4:
        raise DeepscopeError(f"maps must be (N, C, H, W), got shape {tuple(maps.shape)}.")
    maps = torch.nan_to_num(maps.detach().float())
    if maps.shape[1] > 1 and reduction is not None:
        maps = reduce_channels(maps, reduction)
    return maps if size is None else upsample(maps, size)


def display_maps(maps: torch.Tensor, display: Display = Display(), size: tuple[int, int] | int | None = None
                 ) -> torch.Tensor:
    """Raw maps -> maps ready for colouring: (N, H, W) (or (N, C, H, W) with ``reduction=None``).

    The one way deepscope shows a map (figures, the report, the explorer): :func:`saliency` with the
    method's reduction, then each map divided by its :data:`DISPLAY_PERCENTILE` th percentile of |value| and
    clipped, to [-1, 1] when ``display.signed``, else to [0, 1] (negative values clipped to 0).
    """
    shown = scale_to_percentile(saliency(maps, size, display.reduction))
    if not display.signed:
        shown = shown.clamp(min=0)
    return shown[:, 0] if shown.shape[1] == 1 else shown
