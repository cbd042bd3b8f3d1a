"""``deepscope report [--model SPEC] [--images DIR] --out DIR``: the whole story on one HTML page."""

from __future__ import annotations

import argparse
import sys

from deepscope.commands.common import (add_method_options, add_model_options, add_run_options, check_out_folder,
                                       images_from_args, images_path, model_from_args, positive_int, report_skipped,
                                       seed, wrote)
from deepscope.errors import DeepscopeError


def sections(text: str) -> list[str]:
    """``--sections``: comma-separated section names, or all."""
    from deepscope.report.build import parse_sections

    try:
        return parse_sections(text)
    except DeepscopeError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--sections: ")) from None


def register(subparsers) -> None:
    from deepscope.report.sections import SECTIONS

    parser = subparsers.add_parser(
        "report", help="one self-contained HTML page: model, saliency gallery, and more",
        description="Run every report section on a model and a set of images and write one self-contained "
                    "HTML page (OUT/report.html) that opens from a file:// URL without network access.")
    parser.add_argument("--model", default="default", metavar="SPEC",
                        help="model spec (see `deepscope models`; default: the built-in offline model)")
    add_model_options(parser)
    parser.add_argument("--images", default=None, type=images_path, metavar="DIR",
                        help="an image file, a flat folder, or one sub-folder per class (default: the photos of "
                        "the --store's jobs, else the built-in photos)")
    parser.add_argument("--store", default=None, metavar="DIR",
                        help="a results store: the jobs of `deepscope classify/features/neurons/explain/evaluate "
                        "--store DIR` for this model and these photos replace the sections' own computations")
    parser.add_argument("--sections", type=sections, default=list(SECTIONS), metavar="LIST",
                        help=f"comma-separated sections, from: {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--per-class", type=positive_int, default=2, metavar="N",
                        help="sample images per class in the galleries (default 2)")
    parser.add_argument("--max-images", type=positive_int, default=40, metavar="N",
                        help="at most this many sample images in all (default 40)")
    parser.add_argument("--steps", type=positive_int, default=None, metavar="N",
                        help="steps of iterative methods (default: each method's own)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="cache of expensive results (default: $DEEPSCOPE_CACHE, else ~/.cache/deepscope)")
    parser.add_argument("--no-cache", action="store_true", help="compute everything, store nothing")
    add_method_options(parser)
    add_run_options(parser, out="deepscope-report")
    parser.set_defaults(run=run)


def run(args) -> int:
    from deepscope.catalogue import parse_method_options
    from deepscope.fileio import Outputs
    from deepscope.report import Cache, ReportContext, ReportSettings, write_report
    from deepscope.report.build import report_path

    options = parse_method_options(args.option)
    check_out_folder(args)
    settings = ReportSettings(per_class=args.per_class, max_images=args.max_images, steps=args.steps,
                              seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
                              method_options=options)
    store = None
    if args.store:
        from deepscope.jobs import open_store

        store = open_store(args.store)
    with Outputs([report_path(args.out)], overwrite=args.force) as outputs:  # claimed before the long work
        cache = Cache.open(False if args.no_cache else args.cache)
        loaded = model_from_args(args)
        if args.images is None and store is not None:
            images = store_images(store, loaded)
        else:
            images = images_from_args(args, loaded)
        log = None if args.quiet else (lambda line: print(line, file=sys.stderr))
        ctx = ReportContext(loaded, images, settings, cache, store=store)
        path = write_report(ctx, args.out, args.sections, overwrite=args.force, log=log)
    wrote(outputs.written, f" ({path.stat().st_size / 1e6:.1f} MB, {ctx.timer.total:.0f} s)")
    report_skipped(ctx.skipped)
    return 0


def store_images(store, loaded):
    """The photos of the store's newest complete job for this model."""
    from deepscope.errors import DeepscopeError
    from deepscope.jobs.store import digests

    job = store.newest(digests(loaded)[0])
    if job is None:
        raise DeepscopeError(f"--store {store.root}: no complete job for {loaded.name} (with these weights); run "
                             "`deepscope classify MODEL IMAGES --store DIR` first, or pass --images.")
    return job.image_set()
