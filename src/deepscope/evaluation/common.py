"""The types of the explanations metrics accept, the reduction they apply first, and helpers they share.

Metrics rank the same one-channel map that deepscope displays: :func:`deepscope.maps.saliency` (channels
reduced, upsampled to the input). Pass a method's ``display.reduction`` as ``reduction`` to rank its maps the
way they are shown (``abs-max`` by default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepscope.errors import DeepscopeError
from deepscope.maps import saliency
from deepscope.targets import Target, select_target

#: Anything that explains: an Attribution, or a callable ``(inputs, target) -> maps``.
Explainer = Callable[[torch.Tensor, Target], torch.Tensor]

#: How maps with several channels (gradients per colour channel) become one saliency map.
DEFAULT_REDUCTION = "abs-max"

__all__ = ["DEFAULT_REDUCTION", "Explainer", "explain_in_chunks", "row_draws", "saliency", "wide_dtype"]


def row_draws(generator: torch.Generator, count: int, like: torch.Tensor, kind: str = "normal") -> torch.Tensor:
    """``count`` draws shaped like one sample of ``like`` (on its device and dtype), one call of ``generator``
    per row, so row ``k`` is the same whatever batch it is drawn in: standard ``normal`` or ``uniform`` in [0, 1)."""
    draw = torch.randn if kind == "normal" else torch.rand
    return torch.stack([draw(like.shape[1:], generator=generator, device=like.device, dtype=like.dtype)
                        for _ in range(count)])


def wide_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums that must not lose digits, where the device has it (float32 on Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def explain_in_chunks(explain: Explainer, inputs: torch.Tensor, target, batch_size: int | None) -> torch.Tensor:
    """The explainer's maps for ``inputs``, ``batch_size`` images per call (``None``: all at once), detached."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise DeepscopeError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    if batch_size is None or batch_size >= len(inputs):
        return explain(inputs, target).detach()
    chunks = torch.arange(len(inputs), device=inputs.device).split(batch_size)
    return torch.cat([explain(inputs[chunk], select_target(target, chunk)).detach() for chunk in chunks])
