"""The ``deepscope`` command line.

Each sub-command lives in :mod:`deepscope.commands` as a module with ``register(subparsers)``.
A user's mistake (a :class:`~deepscope.errors.DeepscopeError`) is printed as one line, never a traceback.

:func:`main` runs one command in the calling process and leaves the process as it found it; the console
script (:func:`console_main`) owns its process and also has glibc keep freed memory (see
:func:`keep_freed_memory`), which cannot be undone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import os
import sys
from collections.abc import Iterator

import torch

from deepscope import __version__
from deepscope.errors import DeepscopeError

#: Sub-command modules, in the order ``deepscope --help`` lists them.
COMMANDS = ("models", "methods", "layers", "classify", "filters", "features", "explain", "neurons", "classviz", "dream",
            "evaluate", "report", "serve")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or (``only``) of one command: the others' modules are then not imported,
    which keeps the start of a command (``deepscope serve``) fast."""
    parser = argparse.ArgumentParser(
        prog="deepscope",
        description="See how a trained image classifier reaches its predictions.",
        epilog="Run `deepscope COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"deepscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only not in COMMANDS else (only,):
        importlib.import_module(f"deepscope.commands.{name.replace('-', '_')}").register(subparsers)
    return parser


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse in this process instead of returning it at once.

    By default glibc serves every block over 32 MB (a batch of activations) with a fresh ``mmap`` and
    unmaps it on ``free``, so each large tensor is page-faulted in anew; on virtual machines that can cost
    more than the arithmetic (a batch of 64 MobileNet-V2 forwards: 1.8 s by default, 0.6 s with memory kept,
    on the 2-core development machine). The CLI owns its process, so it turns this on; the library leaves
    the process-wide setting to its caller (``MALLOC_MMAP_MAX_=0`` in the environment does the same).
    ``DEEPSCOPE_MALLOC=default`` keeps glibc's behaviour. Returns True when the setting took effect.
    """
    if not sys.platform.startswith("linux") or os.environ.get("DEEPSCOPE_MALLOC") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero inside the block (``torch.set_flush_denormal``), as before afterwards.

    Tiny (denormal) floats can make CPU backward passes several times slower on some processors. torch has
    no getter for the flag, so the state before is read off a denormal product: zero when flushing is on.
    """
    before = bool(torch.tensor([1e-39]).mul(1.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (2 for a user's mistake). Leaves the process as it was."""
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((word for word in words if not word.startswith("-")), None))
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        with denormals_flushed():
            return int(args.run(args) or 0)
    except DeepscopeError as error:
        print(f"deepscope {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndeepscope {args.command}: interrupted; finished files are kept, none is half-written.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def console_main() -> None:
    """The ``deepscope`` console script: :func:`main` in a process of its own, with freed memory kept."""
    keep_freed_memory()
    sys.exit(main())


if __name__ == "__main__":
    console_main()
