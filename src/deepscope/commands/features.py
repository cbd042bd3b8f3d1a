"""``deepscope features MODEL IMAGES``: feature bank, kNN in feature vs pixel space, projections."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from deepscope.commands.common import (add_images_argument, add_job_options, add_model_argument, add_run_options,
                                       check_job_options, check_out_folder, images_from_args, model_from_args,
                                       nonnegative_int, positive_int, report_skipped, run_store_job, wrote)
from deepscope.errors import DeepscopeError
from deepscope.features import (METRICS, PROJECTIONS, choose_queries, extract_features, knn_accuracy,
                                nearest_neighbours, pixel_bank, project)
from deepscope.fileio import Outputs, display_path

#: thumbnail sides (pixels) in the nearest-neighbour figure and on projections
KNN_THUMBNAIL, PROJECTION_THUMBNAIL = 96, 28


def projections(text: str) -> list[str]:
    """``--project``: comma-separated names of :data:`PROJECTIONS`, or ``none``."""
    if text.strip().lower() in ("", "none"):
        return []
    names = list(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    for name in names:
        if name not in PROJECTIONS:
            raise argparse.ArgumentTypeError(f"{name!r}: use a comma-separated list of {', '.join(PROJECTIONS)}, "
                                             "or none")
    if "umap" in names and importlib.util.find_spec("umap") is None:
        raise argparse.ArgumentTypeError("umap needs umap-learn: pip install umap-learn (pca and tsne work without it)")
    return names


def register(subparsers) -> None:
    parser = subparsers.add_parser("features", help="feature space: kNN vs pixel space, PCA/t-SNE/UMAP maps",
                                   description="Extract a feature bank (cached), report leave-one-out kNN accuracy "
                                   "in feature and pixel space, and draw nearest neighbours and projections.")
    add_model_argument(parser)
    add_images_argument(parser)
    parser.add_argument("--layer", default=None, help="a layer name, or NAME:input for a layer's input "
                        "(default: the input of the classifier's last Linear layer)")
    parser.add_argument("--knn", type=positive_int, default=5,
                        help="neighbours per query and for kNN accuracy, fewer than the images (default 5)")
    parser.add_argument("--metric", choices=tuple(METRICS), default="cosine", help="distance (default cosine)")
    parser.add_argument("--project", type=projections, default=["pca"],
                        help="comma-separated projections of pca,tsne,umap, or none (default pca)")
    parser.add_argument("--queries", type=positive_int, default=3, help="query images in the kNN figure (default 3)")
    parser.add_argument("--query", action="append", default=[], help="an image of IMAGES to use as a query (repeatable)")
    parser.add_argument("--pixel-size", type=positive_int, default=None,
                        help="shrink pixels to this side for pixel space (default: the model input itself)")
    parser.add_argument("--thumbnails", type=nonnegative_int, default=0, help="images drawn on each projection (default 0)")
    parser.add_argument("--cache", default=None, help="feature cache folder (default $DEEPSCOPE_CACHE or ~/.cache/deepscope)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    add_run_options(parser, out="out/features")
    add_job_options(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from deepscope.cache import Cache
    from deepscope.images import Photos
    from deepscope.render.common import save_figure
    from deepscope.render.features import knn_figure, knn_paths, projection_figure, thumbnail_rows

    check_job_options(args)
    if args.store:
        return run_job(args)

    methods = args.project
    out = check_out_folder(args)
    outputs = [out / "features.npz", out / "knn.png"] + [out / f"projection-{m}.png" for m in methods]
    with Outputs(outputs, overwrite=args.force) as written:
        loaded = model_from_args(args)
        if args.pixel_size is not None and args.pixel_size > loaded.preprocess.input_size:
            raise DeepscopeError(f"--pixel-size {args.pixel_size}: at most the model input's side "
                                 f"({loaded.preprocess.input_size}); it shrinks the pixels.")
        images = images_from_args(args, loaded)
        _check_counts(args, len(images), "image(s)")
        known = {Path(p).resolve() for p in images.paths}
        for query in args.query:
            if Path(query).resolve() not in known:
                raise DeepscopeError(f"--query {display_path(query)}: not an image of {display_path(images.root)}.")
        cache = Cache.open(False if args.no_cache else args.cache)  # one cache: a location that fails warns once
        progress = not args.quiet
        bank = extract_features(loaded, images, args.layer, batch_size=args.batch_size, cache=cache, progress=progress)
        pixels = pixel_bank(images, loaded.preprocess, size=args.pixel_size, batch_size=args.batch_size,
                            cache=cache, progress=progress)
        _check_counts(args, len(bank), "readable image(s)")
        print(f"{loaded.name}: {len(bank)} image(s) from {display_path(images.root)}, layer {bank.layer}, "
              f"{bank.features.shape[1]} features (pixel space: {pixels.features.shape[1]})")
        names = loaded.classes.names
        try:
            feature_acc, pixel_acc = knn_accuracy(bank, args.knn, args.metric), knn_accuracy(pixels, args.knn, args.metric)
            classes = len(set(bank.class_ids().tolist()))
            print(f"leave-one-out {args.knn}-NN accuracy ({args.metric}): feature space {feature_acc:.1%}, "
                  f"pixel space {pixel_acc:.1%} (chance about {1 / classes:.1%}, {classes} classes)")
        except DeepscopeError as error:
            print(f"no kNN accuracy: {error}")
        queries = args.query or choose_queries(bank, args.queries)
        photos = Photos(thumbnail_sizes=(KNN_THUMBNAIL, PROJECTION_THUMBNAIL))
        shown = (bank, nearest_neighbours(bank, queries, args.knn, args.metric), pixels,
                 nearest_neighbours(pixels, queries, args.knn, args.metric))
        projected = [(project(bank, method), project(pixels, method)) for method in methods]
        bank.save(outputs[0])
        figure = knn_figure(*shown, thumbnails={path: photos.thumbnail(path, KNN_THUMBNAIL) for path in knn_paths(*shown)},
                            class_names=names)
        save_figure(figure, outputs[1])
        drawn = {bank.paths[row]: photos.thumbnail(bank.paths[row], PROJECTION_THUMBNAIL)
                 for row in thumbnail_rows(bank, args.thumbnails)}
        for (features_2d, pixels_2d), path in zip(projected, outputs[2:]):
            save_figure(projection_figure(features_2d, bank, pixels_2d, pixels, class_names=names, thumbnails=drawn), path)
    wrote(written.written)
    report_skipped(bank.skipped, pixels.skipped)
    return 0


def run_job(args) -> int:
    """``--store``: the feature bank of every photo, kept in the store (neighbours and maps: `deepscope report`)."""
    from deepscope.jobs import FeaturesJob

    loaded = model_from_args(args)
    images = images_from_args(args, loaded)
    job = run_store_job(args, FeaturesJob(args.layer), loaded, images).open()
    print(f"layer {job.settings['layer']}: {job.summary.get('dimensions', 0)} features per image")
    report_skipped(job.skipped_files())
    return 0
def _check_counts(args, images: int, what: str) -> None:
    """--knn needs more images than neighbours; a projection needs more than two images."""
    if args.knn >= images:
        raise DeepscopeError(f"--knn {args.knn}: needs fewer neighbours than the {images} {what}; lower --knn.")
    if args.project and images <= 2:
        raise DeepscopeError(f"--project {','.join(args.project)}: needs more than 2 images, got {images} {what}; "
                             "use --project none.")
