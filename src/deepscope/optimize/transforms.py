"""Random, differentiable image transforms for transformation robustness (Lucid; Yosinski's jitter).

Each transform is a callable ``t(pixels, generator) -> pixels`` on (N, 3, H, W) [0, 1] images; the
randomness comes only from the given ``torch.Generator`` so seeded runs repeat exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _choice(options: Sequence[float], n: int, generator: torch.Generator) -> torch.Tensor:
    picks = torch.randint(len(options), (n,), generator=generator)
    return torch.tensor(options, dtype=torch.float32)[picks]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side with ``width`` pixels of constant ``value``."""
    return lambda x, generator: F.pad(x, (width,) * 4, mode="constant", value=value)


def jitter(d: int) -> Transform:
    """Crop a random (H-d, W-d) window: a translation by 0..d pixels (same for the batch)."""

    def transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dy, dx = torch.randint(d + 1, (2,), generator=generator).tolist()
        return x[..., dy:x.shape[-2] - d + dy, dx:x.shape[-1] - d + dx]

    return transform


def roll(d: int) -> Transform:
    """Roll the image by a random shift of up to ``d`` pixels (Deep Dream's jitter; keeps the size)."""

    def transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dy, dx = (torch.randint(2 * d + 1, (2,), generator=generator) - d).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))

    return transform


def _affine(x: torch.Tensor, scales: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    radians = angles_deg * math.pi / 180
    cos, sin = torch.cos(radians) / scales, torch.sin(radians) / scales
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_scale(scales: Sequence[float]) -> Transform:
    """Zoom each image by a factor drawn from ``scales`` (about the centre, size kept)."""
    return lambda x, g: _affine(x, _choice(scales, x.shape[0], g), torch.zeros(x.shape[0]))


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate each image by an angle in degrees drawn from ``angles``."""
    return lambda x, g: _affine(x, torch.ones(x.shape[0]), _choice(angles, x.shape[0], g))


def resize(size: int) -> Transform:
    """Resize to ``size x size`` (bilinear), e.g. back to the model's input size."""

    def transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    return transform


def compose(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order."""

    def transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in transforms:
            x = t(x, generator)
        return x

    return transform


def standard_transforms(size: int) -> Transform:
    """Lucid's transformation robustness: pad 12, jitter 8, scale 0.9-1.1, rotate -10..10 degrees, jitter 4."""
    return compose(pad(12), jitter(8), random_scale([1 + (i - 5) / 50 for i in range(11)]),
                   random_rotate(list(range(-10, 11)) + 5 * [0]), jitter(4), resize(size))


def robustness_transforms(size: int) -> Transform:
    """Random jitter (up to 16 px), scale (0.9-1.1) and rotation (+-15 degrees) for checking a result's robustness."""
    return compose(pad(16), jitter(32), random_scale([0.9, 0.95, 1.0, 1.05, 1.1]),
                   random_rotate(list(range(-15, 16, 5))), resize(size))
