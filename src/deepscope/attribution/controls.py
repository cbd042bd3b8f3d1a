"""Chance-level controls: maps that know nothing about the model, so a table shows what chance scores.

Both follow the :class:`~deepscope.attribution.base.Attribution` protocol and ignore ``target``; they
return (N, 1, H, W) maps on the input's device and never run the model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deepscope.attribution.base import Attribution
from deepscope.errors import DeepscopeError
from deepscope.targets import Target


class RandomMap(Attribution):
    """Uniform noise in [0, 1), one value per pixel.

    The noise comes from a generator seeded with ``seed`` when the method is built, so a run is
    reproducible; successive calls give new maps. Two methods built with the same seed give the same
    maps whatever the model, so in the sanity check (a method rebuilt on each randomised model) this
    control keeps a correlation of 1: the score of a map that ignores the model.
    """

    name = "random"

    def __init__(self, model: nn.Module, seed: int = 0):
        super().__init__(model)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        n, _, h, w = inputs.shape
        noise = torch.rand(n, 1, h, w, generator=self._generator)  # CPU generator: same maps on any device
        return noise.to(device=inputs.device, dtype=inputs.dtype)


class CenterMap(Attribution):
    """A Gaussian bump at the image centre, standard deviation ``sigma`` times the side (the centre bias).

    Deterministic; the "centre-point baseline" of pointing-game papers. In a 2x2 grid it puts exactly
    a quarter of its mass in each tile: the chance level of the grid pointing game.
    """

    name = "center"

    def __init__(self, model: nn.Module, sigma: float = 0.25):
        super().__init__(model)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
            raise DeepscopeError(f"sigma must be a positive finite number (a fraction of the side), got {sigma!r}.")
        self.sigma = float(sigma)

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        n, _, h, w = inputs.shape
        ys = torch.linspace(-0.5, 0.5, h, device=inputs.device, dtype=inputs.dtype).view(h, 1)
        xs = torch.linspace(-0.5, 0.5, w, device=inputs.device, dtype=inputs.dtype).view(1, w)
        bump = torch.exp(-(ys ** 2 + xs ** 2) / (2 * self.sigma ** 2))
        return bump.expand(n, 1, h, w).clone()
