"""Post-processing of attribution maps, each an explicit step: reduce channels, resize, normalise.

Methods return raw maps shaped (N, C, H, W); nothing is normalised behind the caller's back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepscope.errors import DeepscopeError

REDUCTIONS = ("abs-max", "abs-sum", "sum", "max", "l2")


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
            scale = torch.quantile(flat.abs().float(), 0.99, dim=1).to(maps.dtype).view(shape)
            return (maps / scale.clamp_min(eps)).clamp(-1, 1)
    raise DeepscopeError(f"unknown normalisation {how!r}; choose minmax, max or percentile.")
