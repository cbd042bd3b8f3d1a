"""Writing results safely: never overwrite unless asked, always atomically, all of a command's files together.

A file is written to a temporary sibling and renamed into place, so Ctrl-C or a crash leaves either the old file
or the complete new one, never half a file. Refusing to overwrite is itself atomic: a new file is put in place
with a hard link, which fails if the name was taken meanwhile, so of two runs racing for one new path exactly
one writes it and the other is refused.

A command claims every file it will write before its work starts (:class:`Outputs`): each location is checked
(a folder that is a file, a name too long, a folder that cannot be written), each new file is created empty and
exclusively, so a second run is refused at once, and inside the ``with`` block the atomic writes to those paths
are held back and renamed into place together when the block succeeds. A command that fails, is interrupted or
is refused leaves no file behind (and, with ``--force``, the previous results untouched).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from deepscope.errors import DeepscopeError


class OutputExistsError(DeepscopeError):
    """A result file is already there and overwriting was not asked for."""


class WriteError(DeepscopeError, OSError):
    """A file that could not be written (a full disk, no permission): the ``OSError``, explained in one line."""

    def __init__(self, path: Path, error: OSError, option: str | None = None):
        OSError.__init__(self, error.errno, error.strerror, error.filename)
        self.message = _os_message(path, error, option)

    def __str__(self) -> str:
        return self.message


#: the :class:`Outputs` of the running command in this thread (see :func:`atomic_path`)
_ACTIVE: contextvars.ContextVar["Outputs | None"] = contextvars.ContextVar("deepscope_outputs", default=None)
#: how much of a file's name its temporary sibling keeps (the sibling's name must fit where the file's fits)
_TEMP_NAME = 40
#: room left in a path for the temporary sibling's longer name
_TEMP_SLACK = 80


def display_path(path: str | Path) -> str:
    """A file name as it may be shown on a terminal: control and other unprintable characters (escape
    sequences, newlines, bidirectional overrides) written as ``\\x1b``, ``\\n``, ``\\u202e``."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(path))


def is_existing_file(path: str | Path) -> bool:
    """Whether ``path`` is a file; a name the file system cannot hold (too long, a NUL) is none, not an error."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _exists_message(path: Path, option: str) -> str:
    return f"{display_path(path)} already exists; pass --force to overwrite it, or choose another {option}."


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Return ``path``; raise :class:`OutputExistsError` if it exists and ``overwrite`` is False (a path the
    running command has claimed with :class:`Outputs` is its own to write)."""
    path = Path(path)
    active = _ACTIVE.get()
    if active is not None and active.claims(path):
        return path
    if path.exists() and not overwrite:
        raise OutputExistsError(_exists_message(path, "--out"))
    return path


def check_location(path: str | Path, option: str = "--out", *, folder: bool = False) -> Path:
    """Check that a file (or, with ``folder``, a folder) can be made at ``path``, without making anything.

    Raises
    ------
    DeepscopeError
        For a name with a NUL byte, a name or path too long for the file system, a folder on the way that is a
        file, a file where a folder is wanted or a folder where a file is wanted.
    """
    path = Path(path)
    text = str(path)
    shown = display_path(path)
    if not text or "\0" in text:
        raise DeepscopeError(f"{option} {shown!r}: not a valid file name; choose another {option}.")
    existing = _nearest_existing(path)
    name_max = _pathconf(existing, "PC_NAME_MAX", 255)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise DeepscopeError(f"{option}: the name {display_path(part)[:40]}... is {len(os.fsencode(part))} bytes "
                                 f"long; this file system allows {name_max}. Choose a shorter {option}.")
    path_max = _pathconf(existing, "PC_PATH_MAX", 4096)
    if len(os.fsencode(os.path.abspath(text))) + _TEMP_SLACK >= path_max:
        raise DeepscopeError(f"{option} {shown[:60]}...: the path is too long for this file system "
                             f"(at most {path_max} bytes); choose a shorter {option}.")
    for parent in [path, *path.parents] if folder else path.parents:
        if _exists(parent) and not parent.is_dir():
            raise DeepscopeError(f"{option} {shown}: {display_path(parent)} is a file, not a folder; "
                                 f"choose another {option}.")
    if not folder and path.is_dir():
        raise DeepscopeError(f"{option} {shown} is a folder; give a file name.")
    return path


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if _exists(candidate):
            return candidate if candidate.is_dir() else candidate.parent
    return Path(".")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a loop of links
        return False


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError, AttributeError):
        return default


def _os_message(path: Path, error: OSError, option: str | None = None) -> str:
    reason = error.strerror or str(error)
    advice = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space"}.get(error.errno, "check the location")
    where = f", or choose another {option}" if option else ""
    return f"cannot write {display_path(path)}: {reason}; {advice}{where}."


class Outputs:
    """The files a command will write, claimed before its work and renamed into place together at its end.

    Parameters
    ----------
    paths : iterable of path
        Every file the command may write (files it ends up not writing are not made).
    overwrite : bool
        Replace existing files (``--force``); otherwise an existing file is refused, atomically.
    option : str
        The option the paths come from, for messages (``--out``, ``--output``).

    Inside ``with Outputs(...) as outputs:`` the atomic writes (:func:`atomic_path` and every writer built on it)
    to the claimed paths are held back as temporary siblings; when the block ends without an error they are
    renamed into place and listed in :attr:`written`. When it raises (or is interrupted), the temporary files,
    the empty claims and the folders the claim made are removed. Claims are exclusive file creations, so two
    runs cannot both claim one new path.
    """

    def __init__(self, paths: Iterable[str | Path], *, overwrite: bool = False, option: str = "--out"):
        self.paths = list(dict.fromkeys(Path(p) for p in paths))
        self.overwrite = overwrite
        self.option = option
        self.written: list[Path] = []
        self._claims: dict[Path, tuple[int, int]] = {}  # path -> (device, inode) of the empty file we made
        self._made_folders: list[Path] = []
        self._staged: dict[Path, Path] = {}
        self._token = None

    def claims(self, path: str | Path) -> bool:
        return Path(path) in self.paths

    def __enter__(self) -> "Outputs":
        for path in self.paths:
            check_location(path, self.option)
        try:
            for path in self.paths:
                self._make_folders(path.parent)
                if self.overwrite:
                    fd, probe = tempfile.mkstemp(prefix=".deepscope-", suffix=".probe", dir=path.parent)
                    os.close(fd)
                    os.unlink(probe)
                else:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                    os.close(fd)
                    info = os.stat(path)
                    self._claims[path] = (info.st_dev, info.st_ino)
        except FileExistsError as error:
            self._release()
            raise OutputExistsError(_exists_message(Path(error.filename or path), self.option)) from None
        except OSError as error:
            self._release()
            raise WriteError(path, error, self.option) from None
        except BaseException:
            self._release()
            raise
        self._token = _ACTIVE.set(self)
        return self

    def _make_folders(self, folder: Path) -> None:
        missing = [p for p in [folder, *folder.parents] if not p.exists()]
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:  # another run made it meanwhile: it is not ours to remove
                continue
            self._made_folders.append(path)

    def stage(self, path: Path, tmp: Path) -> None:
        """Hold ``tmp``, a complete new version of the claimed ``path``, until the block ends."""
        previous = self._staged.pop(path, None)
        if previous is not None:
            previous.unlink(missing_ok=True)
        self._staged[path] = tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        if exc_type is None:
            for path, tmp in self._staged.items():
                os.replace(tmp, path)
                self.written.append(path)
            self._staged.clear()
        self._release()

    def _release(self) -> None:
        """Remove what was made and not written: staged files, empty claims, then the folders made (if empty)."""
        for tmp in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged.clear()
        for path, identity in self._claims.items():
            if path not in self.written:
                with contextlib.suppress(OSError):
                    info = os.stat(path)
                    if (info.st_dev, info.st_ino) == identity and info.st_size == 0:
                        path.unlink()
        self._claims.clear()
        for folder in reversed(self._made_folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        self._made_folders.clear()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it becomes ``path``, on error it is removed.

    ``overwrite=False`` puts the file in place only if ``path`` does not exist at that moment (a hard link,
    atomic), else raises :class:`OutputExistsError`. Inside :class:`Outputs` a claimed path is held back
    until the command's block ends (see there). An ``OSError`` while writing (a full disk, a folder that cannot
    be written) becomes a :class:`DeepscopeError` that names ``path``.
    """
    path = Path(path)
    active = _ACTIVE.get()
    staged = active is not None and active.claims(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name[:_TEMP_NAME]}.", suffix=".part" + path.suffix[:10],
                                    dir=path.parent)
    except OSError as error:
        raise WriteError(path, error) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        if staged:
            active.stage(path, tmp)
            tmp = None
        elif overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(path, error) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _link_new(tmp: Path, path: Path) -> None:
    """Make ``tmp`` the new file ``path``, atomically refusing if ``path`` exists."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(_exists_message(path, "--out")) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # no hard links here (some network and FAT file systems): an exclusive create, then the rename
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise OutputExistsError(_exists_message(path, "--out")) from None
        os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); ``overwrite=False`` refuses an existing file atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; ``overwrite=False`` refuses an existing file atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)
