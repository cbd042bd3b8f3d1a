"""The one disk cache: feature banks and the report's expensive results, by kind and key.

The cache is an optimisation only. A result is stored under a key that digests everything it depends on,
so an entry is never stale; an entry that cannot be read is moved aside and recomputed; a location that
cannot be written is left alone and the run goes on without storing anything.

Location
--------
``--cache DIR`` (``Cache(DIR)``), else ``$DEEPSCOPE_CACHE``, else ``$XDG_CACHE_HOME/deepscope``, else
``~/.cache/deepscope`` (:func:`default_cache_dir`); ``--no-cache`` (``Cache(None)``) stores nothing.

Keys
----
A key is the SHA-256 (hex) of a JSON list: :data:`CACHE_VERSION`, the kind of result, and its parts
(:func:`make_key`). The parts are made of these digests and the settings of the step:

- :func:`model_digest`: the model's class, every ``state_dict`` tensor (name, dtype, shape and bytes), the
  preprocessing and the class names;
- :func:`file_digest`: a file's bytes (memoised while its size, modification time and inode stay the same);
- :func:`images_digest`: an image set: every file's path and content, its class folder and label, and the
  files the scan left out.

Layout and format
-----------------
``ROOT/KIND/KEY.pt`` or ``ROOT/KIND/KEY.npz``. Kinds are ``features`` (feature banks, in the ``.npz`` format
of :class:`deepscope.features.FeatureBank`), and the report's ``classify`` (top-5 predictions), ``maps``
(one displayed saliency map), ``figures`` (PNG bytes) and ``trust`` (the trust table).

- ``.pt``: tensors, numbers, strings, lists and dicts of them, written by ``torch.save`` and read with
  ``torch.load(path, weights_only=True)`` (no arbitrary pickles);
- ``.npz``: NumPy arrays written by ``numpy.savez`` and read with ``numpy.load(path, allow_pickle=False)``.

Both are zip archives; before an entry is decoded every member is checked against its CRC-32 (``torch.load``
does not check tensor data), so a flipped byte is found rather than read as a wrong number. An entry is
written to a temporary file in its folder and renamed into place, so readers see the old entry, the new one
or none, never half a file.

Damage
------
An entry that cannot be read (truncated, empty, flipped bytes, or loadable but not of the structure its
reader expects) is renamed to ``KEY.SUFFIX.damaged`` beside it (kept for inspection, replaced by the next
damaged copy), a :class:`CacheWarning` names it, and the result is recomputed and stored again. A location
that is a file, cannot be written or is full gives one :class:`CacheWarning`; the run stores nothing more.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepscope.errors import DeepscopeWarning
from deepscope.fileio import atomic_path, display_path

#: bump when the format of stored entries or the meaning of keys changes
CACHE_VERSION = 2
DAMAGED_SUFFIX = ".damaged"


class CacheWarning(DeepscopeWarning):
    """The cache could not be read or written; the result was computed instead."""


def default_cache_dir() -> Path:
    """``$DEEPSCOPE_CACHE``, else ``$XDG_CACHE_HOME/deepscope``, else ``~/.cache/deepscope``."""
    if os.environ.get("DEEPSCOPE_CACHE"):
        return Path(os.environ["DEEPSCOPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepscope"


# ------------------------------------------------------------------------------------------------ keys
def make_key(*parts: Any) -> str:
    """SHA-256 (hex) of :data:`CACHE_VERSION` and ``parts`` written as JSON (non-JSON values by ``str``)."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_digest(loaded) -> str:
    """SHA-256 of a :class:`~deepscope.models.zoo.LoadedModel`: the model's class, every ``state_dict`` tensor
    (name, dtype, shape and bytes), the preprocessing and the class names.

    Not memoised: weights can change in place without any sign a cheap check could see (``param.data``
    edits and NumPy views leave the tensor's version counter alone), and hashing costs less than one
    forward pass over a batch. A report computes it once per run (:class:`deepscope.report.ReportContext`).
    """
    model = loaded.model
    digest = hashlib.sha256()
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
    digest.update(f"{loaded.preprocess!r}\n".encode())
    digest.update(("\n".join(loaded.classes.names) + "\n").encode())
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):  # extra state a module chose to store
            digest.update(f"{name}|{tensor!r}\n".encode())
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


_FILE_DIGESTS: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_FILE_DIGESTS_LOCK = threading.Lock()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, ``"unreadable"`` for a file that cannot be read.

    Memoised for the process while the file's size, modification time, change time and inode stay the same.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return "unreadable"
    signature = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    name = str(path.absolute())
    with _FILE_DIGESTS_LOCK:
        memo = _FILE_DIGESTS.get(name)
    if memo is not None and memo[0] == signature:
        return memo[1]
    try:
        with open(path, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        return "unreadable"
    with _FILE_DIGESTS_LOCK:
        _FILE_DIGESTS[name] = (signature, digest)
    return digest


def images_digest(images) -> str:
    """SHA-256 of an :class:`~deepscope.images.ImageSet`: each file's path and content, class folder and label,
    in order, and the files the scan left out (with their reasons)."""
    return make_key("images", [[str(p), file_digest(p), folder, label]
                               for p, folder, label in zip(images.paths, images.folders, images.labels)],
                    [[str(p), reason] for p, reason in images.skipped])


# ----------------------------------------------------------------------------------------------- store
class Cache:
    """Stored results by kind and key under one folder (see the module docstring); ``Cache(None)`` stores nothing.

    Parameters
    ----------
    folder : path or None
        The cache root; None: no cache.

    Attributes
    ----------
    folder : Path or None
        The cache root, or None when caching is off (from the start, or after the location failed).
    hits, misses : int
        Lookups answered from disk, and lookups that had to be computed.
    """

    def __init__(self, folder: str | Path | None):
        self.folder = None if folder is None else Path(folder).expanduser()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, cache: "Cache | str | Path | bool | None") -> "Cache":
        """A cache from a library argument: a :class:`Cache` itself, a folder, ``None``/``True`` for
        :func:`default_cache_dir`, or ``False`` for none."""
        if isinstance(cache, Cache):
            return cache
        if cache is False:
            return cls(None)
        return cls(default_cache_dir() if cache is None or cache is True else cache)

    def path(self, kind: str, key: str, arrays: bool = False) -> Path:
        """Where the entry ``kind``/``key`` lives (``.npz`` for ``arrays``, else ``.pt``)."""
        if self.folder is None:
            raise ValueError("this cache stores nothing (no folder)")
        return self.folder / kind / f"{key}{'.npz' if arrays else '.pt'}"

    def load(self, kind: str, key: str, read: Callable[[Any], Any] | None = None, *, arrays: bool = False) -> Any | None:
        """The entry stored under ``kind``/``key``, passed through ``read``; None when there is none.

        ``read`` turns the stored value into the result and raises (any exception) when the value is not of
        the structure it expects. ``arrays``: the entry is an ``.npz`` file, read as a dict of arrays.
        A damaged entry is moved aside with a :class:`CacheWarning` and counts as missing.
        """
        value = None
        if self.folder is not None:
            path = self.path(kind, key, arrays)
            try:
                file = open(path, "rb")
            except FileNotFoundError:
                pass
            except OSError as error:  # the location is a file, or cannot be read
                self._give_up("read", error)
            else:
                with file:
                    inode = os.fstat(file.fileno()).st_ino
                    try:
                        value = _decode(file, arrays)
                        value = read(value) if read is not None else value
                    except (KeyboardInterrupt, MemoryError):
                        raise
                    except Exception as error:  # noqa: BLE001 -- any failure means the entry cannot be used
                        value = None
                        self._move_aside(path, inode, error)
        with self._lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return value

    def save(self, kind: str, key: str, value: Any, *, arrays: bool = False) -> None:
        """Store ``value`` atomically: for ``.pt`` tensors, numbers, strings, lists and dicts of them; for
        ``arrays`` a mapping of names to NumPy arrays. A location that cannot be written turns the cache off
        with one :class:`CacheWarning`."""
        if self.folder is None:
            return
        payload = None if arrays else _torch_bytes(value)  # a value torch cannot store is a bug: it raises
        try:
            with atomic_path(self.path(kind, key, arrays)) as tmp, open(tmp, "wb") as file:
                if arrays:
                    np.savez(file, **value)
                else:
                    file.write(payload)
        except OSError as error:  # a file in the way, no permission, a full disk
            self._give_up("write to", error)

    def get_or_compute(self, kind: str, key: str, compute: Callable[[], Any], read: Callable[[Any], Any] | None = None,
                       *, write: Callable[[Any], Any] | None = None, arrays: bool = False) -> Any:
        """The entry under ``kind``/``key`` (through ``read``); else ``compute()``, stored (as ``write(result)``
        when given: the inverse of ``read``) and returned."""
        value = self.load(kind, key, read, arrays=arrays)
        if value is None:
            value = compute()
            self.save(kind, key, value if write is None else write(value), arrays=arrays)
        return value

    # -------------------------------------------------------------------------------------- failures
    def _give_up(self, verb: str, error: OSError) -> None:
        """Turn the cache off for the rest of this object's life, with one warning."""
        with self._lock:
            folder, self.folder = self.folder, None
        if folder is not None:
            warnings.warn(f"cannot {verb} the cache {display_path(folder)} ({_reason(error)}); going on without "
                          "caching (choose another folder with --cache DIR or $DEEPSCOPE_CACHE, or pass --no-cache).",
                          CacheWarning, stacklevel=3)

    def _move_aside(self, path: Path, inode: int, error: Exception) -> None:
        aside = path.with_name(path.name + DAMAGED_SUFFIX)
        try:
            if os.stat(path).st_ino == inode:  # not an entry another run has written since
                os.replace(path, aside)
            where = f"moved to {display_path(aside.name)}"
        except OSError as problem:
            where = f"left in place: {_reason(problem)}"
        warnings.warn(f"damaged cache entry {display_path(path)} ({type(error).__name__}: {_first_line(error)}); "
                      f"{where}; computing it again.", CacheWarning, stacklevel=4)


def _torch_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _decode(file, arrays: bool) -> Any:
    """The value in an open entry file, after checking every zip member against its CRC-32."""
    with zipfile.ZipFile(file) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"member {bad!r} fails its CRC check")
    file.seek(0)
    if arrays:
        with np.load(file, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    return torch.load(file, map_location="cpu", weights_only=True)


def _reason(error: OSError) -> str:
    return error.strerror or _first_line(error)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else "no message"


# ---------------------------------------------------------------------------------------------- checks
def expect(condition: bool, what: str) -> None:
    """Raise ``ValueError(what)`` unless ``condition``: for ``read`` functions checking an entry's structure."""
    if not condition:
        raise ValueError(f"unexpected entry: {what}")


def expect_tensor(value: Any, dtype: torch.dtype | Sequence[torch.dtype], ndim: int, what: str) -> torch.Tensor:
    """``value`` when it is a tensor of ``dtype`` (one of them) with ``ndim`` dimensions, else ``ValueError``."""
    dtypes = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
    expect(isinstance(value, torch.Tensor) and value.dtype in dtypes and value.ndim == ndim,
           f"{what} should be a {ndim}-d {'/'.join(map(str, dtypes))} tensor")
    return value


def expect_keys(value: Any, keys: Sequence[str], what: str) -> Mapping:
    """``value`` when it is a dict holding ``keys``, else ``ValueError``."""
    expect(isinstance(value, dict) and all(k in value for k in keys), f"{what} should be a dict with {', '.join(keys)}")
    return value
