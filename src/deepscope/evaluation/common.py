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

__all__ = ["DEFAULT_REDUCTION", "Explainer", "saliency"]
