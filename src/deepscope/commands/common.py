"""Arguments and helpers shared by the sub-commands.

Every option is checked when it is parsed: the ``type=`` functions below turn the text into a value or refuse it
with an :class:`argparse.ArgumentTypeError` that says what to give instead (the CLI prints it on one line, exit
code 2). Checks that need the file system (output locations, image paths) run at the start of a command, before
any model is loaded: :class:`~deepscope.fileio.Outputs` claims the files a command writes.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from deepscope.errors import DeepscopeError
from deepscope.fileio import check_location, display_path
from deepscope.images import ImageSet, Skip, describe_skipped, merge_skips, scan_images

if TYPE_CHECKING:
    from deepscope.models.zoo import LoadedModel

#: the largest count an option takes (batch sizes, steps, images): larger values are refused, not clipped
MAX_COUNT = 2**31 - 1
#: seeds are integers from 0 to 2**63 - 1 (what a torch.Generator takes)
MAX_SEED = 2**63 - 1
#: ``IMAGES`` left out: the built-in photos
BUILTIN = "builtin"


# -- option types -------------------------------------------------------------------------------------------
def _integer(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer from 1 to :data:`MAX_COUNT` (counts: images, steps, batch sizes)."""
    return _integer(text, 1, MAX_COUNT, f"a positive integer (1 to {MAX_COUNT})")


def nonnegative_int(text: str) -> int:
    """An integer from 0 to :data:`MAX_COUNT` (counts where 0 means none)."""
    return _integer(text, 0, MAX_COUNT, f"an integer from 0 to {MAX_COUNT}")


def port(text: str) -> int:
    """A TCP port: an integer from 0 (any free port) to 65535."""
    return _integer(text, 0, 65535, "a port from 0 (any free port) to 65535")


def seed(text: str) -> int:
    """A random seed: an integer from 0 to :data:`MAX_SEED`."""
    return _integer(text, 0, MAX_SEED, "a seed from 0 to 2**63-1")


def finite_float(text: str) -> float:
    """Any finite number (not nan or inf)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def float_above(minimum: float, *, inclusive: bool = False) -> Callable[[str], float]:
    """A type for finite numbers above ``minimum`` (or at least ``minimum`` with ``inclusive``)."""
    words = f"a number {'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = finite_float(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value

    parse.__name__ = f"number_{'at_least' if inclusive else 'above'}_{minimum:g}"
    return parse


positive_float = float_above(0)
nonnegative_float = float_above(0, inclusive=True)


def int_list(text: str) -> list[int]:
    """Comma-separated integers from 0 (channels, positions): ``0,5,17``."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,5,17, got {text!r}")
    return [_integer(part, 0, MAX_COUNT, "comma-separated integers from 0, like 0,5,17") for part in parts if part]


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` (a GPU this machine has) or ``mps`` (where available)."""
    text = str(text).strip()
    if text == "auto":
        return text
    try:
        parsed = torch.device(text)
    except Exception:  # torch raises RuntimeError (and others) for text it cannot parse
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cpu" and parsed.index in (None, 0):
        return "cpu"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is available here; use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
        return str(parsed)
    if parsed.type == "mps" and parsed.index in (None, 0):
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: Apple's MPS is not available here; use --device cpu")
        return "mps"
    raise argparse.ArgumentTypeError(f"{text}: deepscope runs models on cpu, cuda or mps; use --device cpu or cuda")


def file_name(*suffixes: str) -> Callable[[str], str]:
    """A type for an output file name ending in one of ``suffixes`` (case-insensitive)."""
    def parse(text: str) -> str:
        if Path(text).suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{display_path(text)}: use a file name ending in {' or '.join(suffixes)}")
        return text

    parse.__name__ = "file_name"
    return parse


def existing_path(text: str) -> str:
    """A file or folder that exists (image inputs)."""
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid path")
    try:
        found = Path(text).exists()
    except OSError as error:  # a name too long for the file system, a folder that cannot be read
        raise argparse.ArgumentTypeError(f"{display_path(text)}: {error.strerror or error}") from None
    if not found:
        raise argparse.ArgumentTypeError(f"{display_path(text)}: no such file or folder")
    return text


def images_path(text: str) -> str:
    """``IMAGES``: an existing file or folder; the word ``builtin`` means the built-in photos unless a file or
    folder of that name exists."""
    if text == BUILTIN and not Path(text).exists():
        return text
    return existing_path(text)


def name_list(text: str) -> list[str]:
    """Comma-separated names, at least one (spaces around them ignored)."""
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


# -- shared arguments ------------------------------------------------------------------------------------------
def add_model_argument(parser: argparse.ArgumentParser, optional: bool = True) -> None:
    """MODEL positional (default: the built-in offline model), ``--random-weights`` and ``--device``."""
    kwargs = {"nargs": "?", "default": "default"} if optional else {}
    parser.add_argument("model", metavar="MODEL", help="model spec: default, a torchvision name (resnet18), "
                        "timm:NAME, FILE.tflite, FILE.pt or ARCH@WEIGHTS.pth (see `deepscope models`)", **kwargs)
    add_model_options(parser)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--random-weights`` and ``--device``."""
    parser.add_argument("--random-weights", action="store_true",
                        help="build a named architecture with random weights (no download; not for model files)")
    parser.add_argument("--device", type=device, default="auto",
                        help="cpu, cuda, cuda:1, mps, or auto (default: cuda if available)")


def add_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", metavar="IMAGES", nargs="?", default=None, type=images_path,
                        help="an image file, a flat folder, or a folder with one sub-folder per class "
                        "(named by WordNet id or class name); default: the built-in photos")


def add_run_options(parser: argparse.ArgumentParser, out: str | None = None) -> None:
    """``--batch-size``, ``--quiet``, and (if ``out`` is given) ``--out``/``--force``."""
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if out is not None:
        add_out_option(parser, out)


def add_out_option(parser: argparse.ArgumentParser, out: str) -> None:
    """``--out FOLDER`` and ``--force``."""
    parser.add_argument("--out", default=out, help=f"output folder (default: {out})")
    parser.add_argument("--force", action="store_true", help="overwrite existing results")


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """``--store``, ``--engine``, ``--address``, ``--workers``, ``--shard-size``: run as a dataset job."""
    group = parser.add_argument_group("whole datasets", "run over every photo in shards, keep the results in a "
                                      "store (re-runs skip finished shards; `deepscope report --store DIR` reads it)")
    group.add_argument("--store", default=None, metavar="DIR", help="results store folder; runs the command as a job")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: a pool of Ray actors")
    group.add_argument("--address", default=None, help="with --engine ray: the cluster to join (auto, HOST:6379, "
                       "ray://HOST:10001); default: start a local Ray instance")
    group.add_argument("--workers", type=positive_int, default=None,
                       help="with --engine ray: actors (default: one per GPU, else one per node)")
    group.add_argument("--shard-size", type=positive_int, default=None, metavar="N",
                       help="photos per shard, the unit of work and of resumption (default: the job's)")


def check_job_options(args: argparse.Namespace) -> None:
    """Engine options without ``--store`` are a mistake (they would change nothing)."""
    if args.store is None and (args.engine != "local" or args.address or args.workers or args.shard_size):
        raise DeepscopeError("--engine, --address, --workers and --shard-size need --store DIR.")


def run_store_job(args: argparse.Namespace, job, loaded: LoadedModel, images: ImageSet):
    """Run ``job`` into ``args.store`` with the command line's engine; prints what the run did."""
    from deepscope.jobs import run_job

    run = run_job(job, loaded, images, args.store, engine=args.engine, workers=args.workers, address=args.address,
                  shard_size=args.shard_size, batch_size=args.batch_size, progress=not args.quiet)
    print(run.describe())
    return run


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--option METHOD.OPTION=VALUE`` (repeatable): one option of one method, checked by the catalogue."""
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                        help="set one option of one method, e.g. --option ig.steps=16 --option occlusion.window=32 "
                        "(repeatable; `deepscope methods` lists every method's options)")


def check_out_folder(args: argparse.Namespace) -> Path:
    """``--out`` as a folder that can be made (nothing is made): call first in a command that writes there."""
    return check_location(args.out, "--out", folder=True)


def check_layer_used(layer: str | None, methods: Sequence[str]) -> None:
    """Refuse ``--layer`` when none of the chosen methods takes a layer (it would change nothing)."""
    from deepscope.catalogue import get_method

    if layer is not None and not any(get_method(name).accepts("layer") for name in methods):
        raise DeepscopeError(f"--layer {layer}: none of the chosen methods ({', '.join(methods)}) takes a layer; "
                             "it is for the CAM methods (see `deepscope methods`).")


# -- loading ----------------------------------------------------------------------------------------------------
def resolve_device(name: str | torch.device) -> torch.device:
    """The device of ``--device`` (``auto``: cuda if available, else cpu)."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device(str(name)))
    except argparse.ArgumentTypeError as error:
        raise DeepscopeError(f"--device {error}") from None


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """Load the model named on the command line, on the chosen device."""
    from deepscope.models.zoo import load_model  # torchvision and timm: imported when a command needs a model

    target = resolve_device(args.device)
    loaded = load_model(args.model, pretrained=not args.random_weights)
    loaded.model.to(target)
    return loaded


def images_from_args(args: argparse.Namespace, loaded: LoadedModel | None = None) -> ImageSet:
    """The image set of ``IMAGES`` (``--images``), labelled with the model's classes when given."""
    if args.images is None or (args.images == BUILTIN and not Path(BUILTIN).exists()):
        from deepscope.sample_images import builtin_images

        return builtin_images()
    return scan_images(args.images, loaded.classes if loaded is not None else None)


def report_skipped(*skipped: Sequence[Skip]) -> None:
    """Print the files the results were made without, one line each, to stderr (several results' skips
    are merged: a file left out of two passes is listed once)."""
    merged = merge_skips(*skipped)
    if merged:
        print(describe_skipped(merged), file=sys.stderr)


def safe_name(text: str, length: int = 60, keep: str = "-_") -> str:
    """A short part of an output file's name made from a file, model or layer name: letters, digits and the
    characters in ``keep``, the others written ``_`` (``features.3`` -> ``features_3``), at most ``length``."""
    name = "".join(c if c.isalnum() or c in keep else "_" for c in str(text))
    return name[:length] or "_"


def wrote(paths: Sequence[Path | str], what: str = "") -> None:
    """Print ``wrote A, B`` for the files written (names made safe for a terminal)."""
    if paths:
        print(f"wrote {', '.join(display_path(p) for p in paths)}{what}")
