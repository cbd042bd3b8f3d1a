"""The types of the explanations metrics accept, and the reduction they apply first.

Metrics rank the same one-channel map that deepscope displays: :func:`deepscope.maps.saliency` (channels
reduced, upsampled to the input). Pass a method's ``display.reduction`` as ``reduction`` to rank its maps the
way they are shown (``abs-max`` by default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepscope.maps import saliency
from deepscope.targets import Target

#: Anything that explains: an Attribution, or a callable ``(inputs, target) -> maps``.
Explainer = Callable[[torch.Tensor, Target], torch.Tensor]

#: How maps with several channels (gradients per colour channel) become one saliency map.
DEFAULT_REDUCTION = "abs-max"

__all__ = ["DEFAULT_REDUCTION", "Explainer", "row_draws", "saliency"]


def row_draws(generator: torch.Generator, count: int, like: torch.Tensor, kind: str = "normal") -> torch.Tensor:
    """``count`` draws shaped like one sample of ``like`` (on its device and dtype), one call of ``generator``
    per row, so row ``k`` is the same whatever batch it is drawn in: standard ``normal`` or ``uniform`` in [0, 1)."""
    draw = torch.randn if kind == "normal" else torch.rand
    return torch.stack([draw(like.shape[1:], generator=generator, device=like.device, dtype=like.dtype)
                        for _ in range(count)])
