"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from deepscope.errors import DeepscopeError
from deepscope.images import ImageSet, Skip, describe_skipped, merge_skips, scan_images
from deepscope.models.zoo import LoadedModel, load_model


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
    loaded = load_model(args.model, pretrained=not args.random_weights)
    loaded.model.to(resolve_device(args.device))
    return loaded


def images_from_args(args: argparse.Namespace, loaded: LoadedModel) -> ImageSet:
    if args.images == "builtin":
        from deepscope.sample_images import builtin_images

        return builtin_images()
    return scan_images(args.images, loaded.classes)


def report_skipped(*skipped: Sequence[Skip]) -> None:
    """Print the files the results were made without, one line each, to stderr (several results' skips
    are merged: a file left out of two passes is listed once)."""
    merged = merge_skips(*skipped)
    if merged:
        print(describe_skipped(merged), file=sys.stderr)
