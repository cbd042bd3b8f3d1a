"""A disk cache for the report's expensive steps (predictions, maps, features).

Entries live under ``ROOT/report/KIND/ab/abcdef....pt`` where ROOT is ``--cache DIR``, else the
environment variable ``DEEPSCOPE_CACHE``, else ``$XDG_CACHE_HOME/deepscope``, else ``~/.cache/deepscope``
(feature banks go to ``ROOT/features/``). A key is the SHA-256 of what the
result depends on: the model (its class, preprocessing and the bytes of every weight), the images (the
bytes of each file), the method and the settings. Any change gives a new key, so an entry is never
stale; a re-run that changes one section recomputes only that section. Entries are written atomically
and read with ``torch.load(weights_only=True)``; an unreadable entry counts as missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepscope.fileio import atomic_path
from deepscope.images import ImageSet
from deepscope.models.zoo import LoadedModel

#: bump when the format of stored entries changes
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$DEEPSCOPE_CACHE``, else ``$XDG_CACHE_HOME/deepscope``, else ``~/.cache/deepscope``."""
    if os.environ.get("DEEPSCOPE_CACHE"):
        return Path(os.environ["DEEPSCOPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepscope"


def make_key(*parts: Any) -> str:
    """SHA-256 (hex) of ``parts`` written as JSON (non-JSON values by ``str``)."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    """Stored results by kind and key; ``Cache(None)`` stores nothing.

    Attributes
    ----------
    folder : Path or None
        The cache root (the report's entries go to its ``report/`` sub-folder); None: no cache.
    hits, misses : int
        Lookups answered from disk, and lookups that had to be computed.
    """

    def __init__(self, root: str | Path | None):
        self.folder = None if root is None else Path(root).expanduser()
        self.hits = 0
        self.misses = 0
        self._model_digests: dict[int, str] = {}
        self._file_digests: dict[Path, tuple[float, int, str]] = {}

    def _path(self, kind: str, key: str) -> Path:
        return self.folder / "report" / kind / key[:2] / f"{key}.pt"

    def load(self, kind: str, key: str) -> Any | None:
        """The entry stored under ``kind``/``key``, or None (also for an unreadable entry)."""
        if self.folder is not None:
            path = self._path(kind, key)
            if path.is_file():
                try:
                    value = torch.load(path, map_location="cpu", weights_only=True)
                except Exception:  # a damaged entry is recomputed and replaced
                    path.unlink(missing_ok=True)
                else:
                    self.hits += 1
                    return value
        self.misses += 1
        return None

    def save(self, kind: str, key: str, value: Any) -> None:
        """Store ``value`` (tensors, numbers, strings, lists and dicts of them) atomically."""
        if self.folder is None:
            return
        with atomic_path(self._path(kind, key)) as tmp:
            torch.save(value, tmp)

    def get_or_compute(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        """The entry under ``kind``/``key``; computed by ``compute()`` and stored when missing."""
        value = self.load(kind, key)
        if value is None:
            value = compute()
            self.save(kind, key, value)
        return value

    # ------------------------------------------------------------------------------------ digests
    def model_digest(self, loaded: LoadedModel) -> str:
        """SHA-256 of the model's class, preprocessing, class names and weights (memoised per model)."""
        memo = self._model_digests.get(id(loaded.model))
        if memo is not None:
            return memo
        digest = hashlib.sha256()
        digest.update(f"{type(loaded.model).__module__}.{type(loaded.model).__qualname__}".encode())
        digest.update(repr(loaded.preprocess).encode())
        digest.update("\n".join(loaded.classes.names).encode())
        for name, tensor in loaded.model.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                          if tensor.numel() else b"")
        self._model_digests[id(loaded.model)] = digest.hexdigest()
        return self._model_digests[id(loaded.model)]

    def file_digest(self, path: Path) -> str:
        """SHA-256 of a file's bytes (memoised while its size and modification time stay the same)."""
        stat = path.stat()
        memo = self._file_digests.get(path)
        if memo and memo[:2] == (stat.st_mtime, stat.st_size):
            return memo[2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self._file_digests[path] = (stat.st_mtime, stat.st_size, digest)
        return digest

    def images_digest(self, images: ImageSet) -> str:
        """One digest for the whole image set: every file's content, in order, with its label."""
        return make_key([[self.file_digest(p), label] for p, label in zip(images.paths, images.labels)])


def classification_key(cache: Cache, loaded: LoadedModel, images: ImageSet) -> str:
    return make_key("classify", cache.model_digest(loaded), cache.images_digest(images))
