"""``deepscope evaluate MODEL IMAGES --methods ...``: how far each method's maps can be trusted."""

from __future__ import annotations

import argparse
import time

from deepscope.catalogue import method_names, parse_method_options, parse_methods
from deepscope.commands.common import (add_images_argument, add_job_options, add_method_options, add_model_argument,
                                       add_run_options, check_job_options, check_layer_used, check_out_folder,
                                       images_from_args, model_from_args, nonnegative_int, positive_int,
                                       name_list, report_skipped, run_store_job, seed, wrote)
from deepscope.errors import DeepscopeError, did_you_mean
from deepscope.evaluation.metrics import METRICS
from deepscope.trust_table import TRUST_METRICS
from deepscope.fileio import Outputs, display_path, write_text

DEFAULT_METHODS = "gradient,guided,random,center"


def metric_list(text: str) -> list[str]:
    """``--metrics``: names of the metric catalogue, ``all`` or ``none``."""
    names = name_list(text) if text.strip() else ["none"]
    if names == ["none"]:
        return []
    if names == ["all"]:
        return list(METRICS)
    for name in names:
        if name not in METRICS:
            raise argparse.ArgumentTypeError(f"unknown metric {name!r}.{did_you_mean(name, METRICS)} "
                                             f"Choose from: {', '.join(METRICS)}, all or none.")
    return names
OUTPUTS = ("evaluation.csv", "evaluation.md", "deletion_insertion.png", "randomization.png",
           "randomization_similarity.png")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="faithfulness of saliency methods: deletion, insertion, pointing game, sanity check",
        description="Score each method with deletion and insertion AUC (Petsiuk et al. 2018), the grid pointing "
                    "game (Böhle et al. 2022) and cascading model randomisation (Adebayo et al. 2018), next to "
                    "the random and centre controls. Prints the table; writes CSV, Markdown and figures. "
                    "Images that cannot be read are skipped and named.")
    add_model_argument(parser)
    add_images_argument(parser)
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated method names, or all (default {DEFAULT_METHODS}; known: "
                        f"{', '.join(method_names())})")
    parser.add_argument("--images-per-class", type=positive_int, default=2, help="photos per class folder (default 2)")
    parser.add_argument("--mosaics", type=nonnegative_int, default=20,
                        help="grid pointing game mosaics, 0 to skip (default 20)")
    parser.add_argument("--steps", type=positive_int, default=50, help="deletion/insertion steps (default 50)")
    parser.add_argument("--cascade-steps", type=positive_int, default=4,
                        help="blocks randomised from the top for the sanity-check figure (default 4)")
    parser.add_argument("--randomization-images", type=positive_int, default=4,
                        help="photos used for the sanity check (default 4)")
    parser.add_argument("--layer", default=None, help="the layer whose maps the CAM methods weight (default: the last "
                        "convolutional block); other methods do not take a layer")
    parser.add_argument("--metrics", type=metric_list, default=None, metavar="LIST",
                        help="catalogue metrics beside deletion, insertion, pointing game and randomisation: "
                        f"comma-separated, all, or none (default {','.join(TRUST_METRICS)}; known: {', '.join(METRICS)})")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the image draw, mosaics and controls (default 0)")
    add_method_options(parser)
    add_run_options(parser, out="deepscope-evaluation")
    add_job_options(parser)
    parser.add_argument("--no-randomization", action="store_true",
                        help="with --store: skip the per-photo randomisation check (about half the cost)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from deepscope.images import Photos
    from deepscope.render.common import save_figure
    from deepscope.render.evaluation import (perturbation_curves_figure, randomization_figure,
                                             randomization_similarity_figure)
    from deepscope.trust_table import evaluate_methods, readable_selection, table_csv, table_markdown, table_text

    methods = parse_methods(args.methods)
    options = parse_method_options(args.option, methods)
    check_layer_used(args.layer, methods)
    check_job_options(args)
    if args.store:
        if args.metrics is not None:
            raise DeepscopeError("--metrics needs the table of `deepscope evaluate` without --store (a store's "
                                 "evaluate jobs keep deletion, insertion and randomisation per photo).")
        return run_jobs(args, methods, options)
    out = check_out_folder(args)
    with Outputs([out / name for name in OUTPUTS], overwrite=args.force) as outputs:
        loaded = model_from_args(args)
        pixels = loaded.preprocess.input_size ** 2
        if args.steps > pixels:
            raise DeepscopeError(f"--steps {args.steps}: at most one step per pixel ({pixels}).")
        images = images_from_args(args, loaded)
        started = time.perf_counter()
        photos = Photos(loaded.preprocess)
        results = evaluate_methods(loaded, images, methods, images_per_class=args.images_per_class,
                                   mosaics=args.mosaics, steps=args.steps, cascade_steps=args.cascade_steps,
                                   randomization_images=args.randomization_images, layer=args.layer,
                                   metrics=args.metrics,
                                   batch_size=args.batch_size, seed=args.seed, method_options=options, photos=photos,
                                   progress=not args.quiet)
        rows = [result.row() for result in results]
        done = [r for r in results if r.deletion is not None]
        images_used = len(done[0].deletion.auc) if done else 0
        caption = (f"{loaded.name} on {images_used} photo(s) from {display_path(images.root)} "
                   f"({args.images_per_class} per class), {args.steps} deletion/insertion steps, up to {args.mosaics} "
                   f"mosaics, seed {args.seed}; {time.perf_counter() - started:.0f} s.")
        print(caption)
        print(table_text(rows))
        for row in rows:
            if row["error"]:
                print(f"  {row['method']}: {row['error']}")
        write_text(out / "evaluation.csv", table_csv(rows))
        write_text(out / "evaluation.md", table_markdown(rows, caption))
        if done:
            save_figure(perturbation_curves_figure({r.method: (r.deletion, r.insertion) for r in done}),
                        out / "deletion_insertion.png")
            randomized = {r.method: r.randomization for r in done}
            first = readable_selection(images, args.images_per_class, args.seed, photos).paths[:1]
            save_figure(randomization_figure(randomized, photos.crops(first)[0]), out / "randomization.png")
            save_figure(randomization_similarity_figure(randomized), out / "randomization_similarity.png")
    wrote([path.name for path in outputs.written], f" to {display_path(out)}")
    report_skipped(images.skipped, photos.skipped)
    return 0


def run_jobs(args, methods: list[str], options: dict) -> int:
    """``--store``: per-photo metrics of each method over every photo, with 95 % confidence intervals."""
    from deepscope.catalogue import get_method
    from deepscope.jobs import EvaluateJob
    from deepscope.jobs.base import freeze

    loaded = model_from_args(args)
    images = images_from_args(args, loaded)
    lines, skipped = [], []
    for name in methods:
        offered = get_method(name).offered(layer=args.layer, batch_size=args.batch_size, seed=args.seed)
        job = EvaluateJob(name, freeze({**offered, **options.get(name, {})}), args.steps, not args.no_randomization,
                          seed=args.seed)
        stored = run_store_job(args, job, loaded, images).open()
        summary = stored.summary
        skipped.append(stored.skipped_files())
        cells = [f"{row['mean']:.3f} [{row['ci95_low']:.3f}, {row['ci95_high']:.3f}]" if row["n"] > 1 else "n/a"
                 for row in summary.values()]
        lines.append([name, *cells, str(summary["deletion_auc"]["n"])])
    headers = ["method", "deletion AUC", "insertion AUC", "rand. Spearman", "rand. SSIM", "photos"]
    widths = [max(len(row[i]) for row in [headers, *lines]) for i in range(len(headers))]
    print("mean [95% confidence interval] per photo:")
    for row in [headers, *lines]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    report_skipped(*skipped)
    return 0
