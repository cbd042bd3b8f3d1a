"""The image regularisers of Yosinski et al. 2015 ("Understanding Neural Networks Through Deep Visualization").

Applied to plain [0, 1] pixels after each optimiser step, around grey (0.5):
L2 decay, periodic Gaussian blur, clipping of pixels with a small norm, and clipping of pixels with a
small contribution ``|grad * pixel|``. (Their fourth, jitter, is a transform: see
:func:`deepscope.optimize.transforms.roll`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

GREY = 0.5


def _below_percentile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """(N, 1, H, W) mask of the pixels whose value is below the image's ``percentile``."""
    threshold = torch.quantile(values.flatten(1), percentile / 100, dim=1).view(-1, 1, 1, 1)
    return values < threshold


@dataclass
class YosinskiRegularizer:
    """Yosinski et al.'s regularisers; each is off at 0.

    Parameters
    ----------
    decay : float
        L2 decay: ``x <- grey + (1 - decay) * (x - grey)`` at every step.
    blur_every, blur_sigma : int, float
        Gaussian blur with std ``blur_sigma`` pixels every ``blur_every`` steps.
    norm_percentile : float
        Pixels whose colour vector (from grey) has a norm below this percentile are set to grey.
    contribution_percentile : float
        Pixels whose contribution ``sum_c |grad * (x - grey)|`` is below this percentile are set to grey.
    """

    decay: float = 0.0
    blur_every: int = 0
    blur_sigma: float = 0.5
    norm_percentile: float = 0.0
    contribution_percentile: float = 0.0

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, grad: torch.Tensor | None, step: int) -> None:
        """Regularise ``pixels`` (N, 3, H, W) in place after optimiser step ``step`` (counted from 1)."""
        centred = pixels - GREY
        if self.decay:
            centred *= 1 - self.decay
        if self.blur_every and step % self.blur_every == 0 and self.blur_sigma > 0:
            radius = max(1, int(round(3 * self.blur_sigma)))
            centred = TF.gaussian_blur(centred, [2 * radius + 1] * 2, [self.blur_sigma] * 2)
        if self.norm_percentile:
            centred = centred.masked_fill(_below_percentile(centred.norm(dim=1, keepdim=True), self.norm_percentile), 0)
        if self.contribution_percentile and grad is not None:
            contribution = (grad * centred).abs().sum(dim=1, keepdim=True)
            centred = centred.masked_fill(_below_percentile(contribution, self.contribution_percentile), 0)
        pixels.copy_((centred + GREY).clamp(0, 1))
