"""What every metric does to a map first, and the types of the explanations it accepts."""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepscope.maps import reduce_channels, upsample
from deepscope.targets import Target

#: Anything that explains: an Attribution, or a callable ``(inputs, target) -> maps``.
Explainer = Callable[[torch.Tensor, Target], torch.Tensor]

#: How maps with several channels (gradients per colour channel) become one saliency map.
DEFAULT_REDUCTION = "abs-max"


def saliency(maps: torch.Tensor, size: tuple[int, int], reduction: str = DEFAULT_REDUCTION) -> torch.Tensor:
    """One (N, 1, H, W) saliency map per sample, at the input's ``size``.

    Maps with several channels are reduced with :func:`deepscope.maps.reduce_channels` (``reduction``,
    default ``abs-max``: the largest magnitude over colour channels); single-channel maps are kept as
    they are, sign included. Maps smaller than the input (CAMs) are upsampled bilinearly.
    """
    if maps.shape[1] > 1:
        maps = reduce_channels(maps, reduction)
    return upsample(maps.float(), size)
