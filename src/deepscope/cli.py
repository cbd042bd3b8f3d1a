"""The ``deepscope`` command line.

Each sub-command lives in :mod:`deepscope.commands` as a module with ``register(subparsers)``.
A user's mistake is printed as one line on stderr with exit code 2, never a traceback: an option refused when it
is parsed (argparse's own errors included), and a :class:`~deepscope.errors.DeepscopeError` raised by the
command before or during its work. Warnings are one line each too (a
:class:`~deepscope.errors.DeepscopeWarning`, e.g. a damaged cache entry); other libraries' deprecation notices,
meant for developers, are not shown. Ctrl-C (also while starting up) ends with one line and exit code 130, a
closed pipe (``deepscope models | head -1``) quietly. Control characters in messages (from file names) are
escaped, so a message is one line and cannot drive the terminal.

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
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from deepscope import __version__
from deepscope.errors import DeepscopeError, DeepscopeWarning
from deepscope.fileio import display_path

# torch and the command modules are imported inside main(), where Ctrl-C during the slow imports is handled.

#: Sub-command modules, in the order ``deepscope --help`` lists them.
COMMANDS = ("models", "methods", "layers", "classify", "filters", "features", "explain", "neurons", "classviz", "dream",
            "evaluate", "report", "serve")


class UsageError(DeepscopeError):
    """An argument the parser refused (argparse's message, and the command it belongs to)."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are raised as :class:`UsageError` (printed by :func:`main` on one line)
    instead of printing the usage and exiting; its sub-command parsers are of this class too."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)", self.prog)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or (``only``) of one command: the others' modules are then not imported,
    which keeps the start of a command (``deepscope serve``) fast."""
    parser = Parser(
        prog="deepscope",
        description="See how a trained image classifier reaches its predictions.",
        epilog="Run `deepscope COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"deepscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only not in COMMANDS else (only,):
        importlib.import_module(f"deepscope.commands.{name.replace('-', '_')}").register(subparsers)
    parser.set_defaults(commands=subparsers.choices)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line's arguments; options may come between the positionals (``classify MODEL
    --random-weights IMAGES``), which argparse's one-pass parse of sub-commands does not allow."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    command = getattr(args, "command", None)
    if extra and command:
        own = argv[argv.index(command) + 1:]
        vars(args).update(vars(args.commands[command].parse_intermixed_args(own)))
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


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
    import torch

    before = bool(torch.tensor([1e-39]).mul(1.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Inside the block, print every warning as one line on stderr, and none of the deprecation notices
    (``FutureWarning``, ``DeprecationWarning``) that libraries address to developers; as before afterwards."""
    with warnings.catch_warnings():
        def show(message, category, filename, lineno, file=None, line=None):
            kind = "warning" if issubclass(category, DeepscopeWarning) else f"warning ({category.__name__})"
            print(f"deepscope {command}: {kind}: {one_line(str(message))}", file=sys.stderr)

        warnings.showwarning = show
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("always", DeepscopeWarning)
        yield


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped (:func:`~deepscope.fileio.display_path`)."""
    return display_path(text.strip())


class _Interrupts:
    """Notes Ctrl-C (SIGINT) while a command runs: it still raises ``KeyboardInterrupt``, but an import or a library
    that was cut off half-way may turn it into another exception; :func:`main` then reports the interrupt."""

    def __init__(self):
        self.seen = False
        self._previous = None

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (2 for a user's mistake). Leaves the process as it was."""
    command = "deepscope"
    with _Interrupts() as interrupts:
        try:
            words = sys.argv[1:] if argv is None else argv
            args = parse(build_parser(next((word for word in words if not word.startswith("-")), None)), argv)
            if not getattr(args, "run", None):
                raise UsageError(f"name a command: {', '.join(COMMANDS)} (see `deepscope --help`)", "deepscope")
            command = f"deepscope {args.command}"
            with denormals_flushed(), one_line_warnings(args.command):
                return int(args.run(args) or 0)
        except UsageError as error:
            print(f"{error.prog}: error: {one_line(str(error))}", file=sys.stderr)
            return 2
        except DeepscopeError as error:
            print(f"{command}: error: {one_line(str(error))}", file=sys.stderr)
            return 2
        except SystemExit as exit:  # --help and --version
            return exit.code if isinstance(exit.code, int) else 0
        except KeyboardInterrupt:
            return _interrupted(command)
        except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing more to say
            return 0
        except Exception:
            if interrupts.seen:  # cut off by Ctrl-C, whatever it became
                return _interrupted(command)
            raise


def _interrupted(command: str) -> int:
    print(f"\n{command}: interrupted; no result was written.", file=sys.stderr)
    return 130


def console_main() -> None:
    """The ``deepscope`` console script: :func:`main` in a process of its own, with freed memory kept; a closed
    stdout ends it quietly."""
    try:
        keep_freed_memory()
        code = main()
    except KeyboardInterrupt:  # between the interpreter's start and main()'s own handler
        print("\ndeepscope: interrupted.", file=sys.stderr)
        code = 130
    _quiet_if_stdout_closed()
    # the work is done and its output flushed: a Ctrl-C while the interpreter shuts down (which puts back the
    # default handler, so the process would die of the signal) changes nothing any more
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


def _quiet_if_stdout_closed() -> None:
    """Flush stdout; after a broken pipe, point it at /dev/null, so that Python's last flush at exit does not
    complain."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    console_main()
