"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from deepscope.errors import DeepscopeError
from deepscope.images import ImageSet, scan_images

if TYPE_CHECKING:
    from deepscope.models.zoo import LoadedModel


def add_model_argument(parser: argparse.ArgumentParser, optional: bool = True) -> None:
    """MODEL positional (default: the built-in offline model), ``--random-weights`` and ``--device``."""
    kwargs = {"nargs": "?", "default": "default"} if optional else {}
    parser.add_argument("model", metavar="MODEL", help="model spec: default, a torchvision name (resnet18), "
                        "timm:NAME, FILE.tflite, FILE.pt or ARCH@WEIGHTS.pth (see `deepscope models`)", **kwargs)
    parser.add_argument("--random-weights", action="store_true", help="build the architecture with random weights (no download)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def add_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", metavar="IMAGES", nargs="?", default="builtin",
                        help="an image file, a flat folder, or a folder with one sub-folder per class "
                        "(named by WordNet id or class name); default: the built-in photos")


def add_run_options(parser: argparse.ArgumentParser, out: str | None = None) -> None:
    """``--batch-size``, ``--quiet``, and (if ``out`` is given) ``--out``/``--force``."""
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if out is not None:
        parser.add_argument("--out", default=out, help=f"output location (default: {out})")
        parser.add_argument("--force", action="store_true", help="overwrite existing results")


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--option METHOD.OPTION=VALUE`` (repeatable): one option of one method, checked by the catalogue."""
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                        help="set one option of one method, e.g. --option ig.steps=16 --option occlusion.window=32 "
                        "(repeatable; `deepscope methods` lists every method's options)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeepscopeError(f"--device {name!r} is not a device; use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeepscopeError(f"--device {name}: no CUDA GPU is available here; use --device cpu.")
    return device


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """Load the model named on the command line, on the chosen device."""
    from deepscope.models.zoo import load_model  # torchvision and timm: imported when a command needs a model

    loaded = load_model(args.model, pretrained=not args.random_weights)
    loaded.model.to(resolve_device(args.device))
    return loaded


def images_from_args(args: argparse.Namespace, loaded: LoadedModel) -> ImageSet:
    if args.images == "builtin":
        from deepscope.sample_images import builtin_images

        return builtin_images()
    return scan_images(args.images, loaded.classes)


def report_skipped(images: ImageSet) -> None:
    """Print the summary of files that were skipped, if any, to stderr."""
    if images.skipped:
        print(images.skipped_summary(), file=sys.stderr)
