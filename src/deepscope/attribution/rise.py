"""RISE (Petsiuk, Das and Saenko, 2018): the class score on randomly masked copies of the image, averaged
with the masks as weights.

Differs from the protocol: returns a (N, 1, H, W) map, ``sum_j score(x * M_j) * M_j / (n * keep)`` over
``n`` random masks -- the paper's Eq. 6 with its normalisation by the expected mask value ``keep``, so a
pixel's value estimates the expected score given that the pixel is kept. Forward passes only, under
``torch.inference_mode()``, ``batch_size`` masked copies at a time; the score is the target's softmax
probability by default (the paper's; ``score="logit"`` uses the logit). The default target (the predicted
class) is resolved once on the clean input. The image is multiplied by the mask in the model's input space,
as the paper's code does (0 is the dataset's mean colour for mean/std-normalised input).

Masks, as in the paper: a ``grid`` x ``grid`` binary grid whose cells are kept with probability ``keep``
is upsampled bilinearly (``align_corners=False``, edge values repeated at the border) to
``(grid + 1) * cell`` pixels with ``cell = ceil(H / grid)`` (and the same for W), then an H x W window is
cropped at a random offset in ``[0, cell)`` in each direction. Every mask comes from a ``torch.Generator``
seeded with ``seed`` on the input's device, drawn in this order: the ``n`` grids (``torch.rand(n, grid, grid)
< keep``), then the ``n`` vertical offsets, then the ``n`` horizontal ones (``torch.randint(0, cell, (n,))``).
So mask ``j`` is the same whatever the batch size, and the same masks serve every image of a batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from deepscope.attribution.base import Attribution
from deepscope.attribution.cam import run_channels_last
from deepscope.attribution.occlusion import SCORES
from deepscope.errors import DeepscopeError
from deepscope.probe import Probe, batched_forward
from deepscope.targets import Target, resolve_target, target_scores


class RISE(Attribution):
    """Randomized Input Sampling for Explanation, see the module docstring.

    Parameters
    ----------
    n : int
        Random masks (forward passes per image); the paper uses 4,000 for ImageNet classifiers.
    grid : int
        Cells per side of the binary grid (the paper's ``s``, 7 for 224 px ImageNet inputs).
    keep : float
        Probability that a cell is kept (the paper's ``p``, 0.5), in (0, 1].
    score : "probability" or "logit"
        The target score each masked copy is weighted by.
    batch_size : int
        Masked copies per forward pass.
    seed : int
        Seed of the masks.
    progress : bool
        Show a progress bar over the batches of masks.
    """

    name = "rise"

    def __init__(self, model: nn.Module, n: int = 4000, grid: int = 7, keep: float = 0.5,
                 score: str = "probability", batch_size: int = 64, seed: int = 0, progress: bool = False):
        super().__init__(model)
        if n < 1 or grid < 1 or batch_size < 1:
            raise DeepscopeError(f"RISE needs n, grid and batch_size of at least 1, got n={n}, grid={grid}, "
                                 f"batch_size={batch_size}.")
        if not 0 < keep <= 1:
            raise DeepscopeError(f"RISE keep is the probability that a grid cell is kept, in (0, 1]; got {keep}.")
        if score not in SCORES:
            raise DeepscopeError(f"unknown RISE score {score!r}; use one of {', '.join(SCORES)}.")
        self.n = n
        self.grid = grid
        self.keep = keep
        self.score = score
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        n_images, _, height, width = inputs.shape
        resolved = resolve_target(target, batched_forward(self.model, inputs, self.batch_size))
        grids, shifts = self.draw(inputs)
        total = inputs.new_zeros(n_images, height * width)
        starts = range(0, self.n, self.batch_size)
        with Probe(self.model) as probe, torch.inference_mode():
            for start in tqdm(starts, desc="RISE", unit="batch", disable=not self.progress, leave=False):
                chunk = slice(start, start + self.batch_size)
                masks = rise_masks(grids[chunk], shifts[chunk], (height, width)).to(inputs.dtype)
                for i in range(n_images):
                    output = run_channels_last(probe, inputs[i:i + 1] * masks)
                    if self.score == "probability":
                        output = output.softmax(dim=1)
                    scores = target_scores(output, resolved[i:i + 1].expand(len(masks))
                                           if isinstance(resolved, torch.Tensor) else resolved)
                    total[i] += scores.to(total.dtype) @ masks.flatten(1)
        return (total / (self.n * self.keep)).view(n_images, 1, height, width)

    def draw(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks' random draws for inputs of this size: (n, grid, grid) bool grids and (n, 2) offsets."""
        generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        cells = [math.ceil(side / self.grid) for side in inputs.shape[-2:]]
        grids = torch.rand(self.n, self.grid, self.grid, generator=generator, device=inputs.device) < self.keep
        shifts = torch.stack([torch.randint(0, cell, (self.n,), generator=generator, device=inputs.device)
                              for cell in cells], dim=1)
        return grids, shifts


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) float masks from (B, s, s) binary grids and (B, 2) crop offsets (see the module docstring)."""
    height, width = size
    s = grids.shape[-1]
    upsampled = (s + 1) * math.ceil(height / s), (s + 1) * math.ceil(width / s)
    big = F.interpolate(grids[:, None].float(), size=upsampled, mode="bilinear", align_corners=False)[:, 0]
    rows = shifts[:, 0, None] + torch.arange(height, device=grids.device)  # (B, H)
    cols = shifts[:, 1, None] + torch.arange(width, device=grids.device)  # (B, W)
    batch = torch.arange(len(grids), device=grids.device)[:, None, None]
    return big[batch, rows[:, :, None], cols[:, None, :]][:, None]
