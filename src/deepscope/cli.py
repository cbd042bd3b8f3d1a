"""The ``deepscope`` command line.

Each sub-command lives in :mod:`deepscope.commands` as a module with ``register(subparsers)``.
A user's mistake (a :class:`~deepscope.errors.DeepscopeError`) is printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import sys

import torch

from deepscope import __version__
from deepscope.errors import DeepscopeError

#: Sub-command modules, in the order ``deepscope --help`` lists them.
COMMANDS = ("models", "layers", "classify", "filters", "features", "explain", "neurons", "classviz", "dream",
            "evaluate", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscope",
        description="See how a trained image classifier reaches its predictions.",
        epilog="Run `deepscope COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"deepscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    # Tiny (denormal) floats make CPU backward passes several times slower on some models (the
    # TFLite imports): the CLI owns its process, so it flushes them to zero. The library leaves
    # this process-wide setting to the caller.
    torch.set_flush_denormal(True)
    keep_freed_memory()
    try:
        return int(args.run(args) or 0)
    except DeepscopeError as error:
        print(f"deepscope {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndeepscope {args.command}: interrupted; finished files are kept, none is half-written.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
