"""The ``deepscope`` command line.

Each sub-command lives in :mod:`deepscope.commands` as a module with ``register(subparsers)``.
A user's mistake (a :class:`~deepscope.errors.DeepscopeError`) is printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
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
