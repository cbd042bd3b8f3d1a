"""Errors a user can act on.

Every error deepscope raises for a user's mistake derives from :class:`DeepscopeError`; its message
names the file, layer or argument at fault and says what to do. The CLI prints such errors on one
line without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DeepscopeError(Exception):
    """A mistake in the user's input, explained in the message."""


class ImageError(DeepscopeError):
    """An image file that cannot be read as an RGB photo."""


class ImageTooLargeError(ImageError):
    """An image with more pixels than deepscope decodes (a decompression bomb, or a photo to downscale)."""


class ModelSpecError(DeepscopeError):
    """A model name, file or checkpoint that cannot be loaded."""


class LayerNotFoundError(DeepscopeError):
    """A layer name that the model does not have."""


class UnsupportedModelError(DeepscopeError):
    """A model that lacks the structure a method needs (e.g. CAM without a pooling head)."""


class TargetError(DeepscopeError):
    """A target class that does not fit the model's output or the batch."""


class AmbiguousClassError(TargetError):
    """A class name that several classes answer to (ImageNet's two ``crane`` classes)."""


class DeepscopeWarning(UserWarning):
    """Something a user should know that did not stop the work (the CLI prints it on one line)."""


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean: a, b?"`` for the closest candidates, or ``""`` if none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
