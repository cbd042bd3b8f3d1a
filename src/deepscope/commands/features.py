"""``deepscope features MODEL IMAGES``: feature bank, kNN in feature vs pixel space, projections."""

from __future__ import annotations

from pathlib import Path

from deepscope.commands.common import (add_images_argument, add_job_options, add_model_argument, add_run_options,
                                       check_job_options, images_from_args, model_from_args, positive_int,
                                       report_skipped, run_store_job)
from deepscope.errors import DeepscopeError
from deepscope.fileio import check_writable
from deepscope.features import (METRICS, PROJECTIONS, choose_queries, extract_features, knn_accuracy,
                                nearest_neighbours, pixel_bank, project)

#: thumbnail sides (pixels) in the nearest-neighbour figure and on projections
KNN_THUMBNAIL, PROJECTION_THUMBNAIL = 96, 28


def register(subparsers) -> None:
    parser = subparsers.add_parser("features", help="feature space: kNN vs pixel space, PCA/t-SNE/UMAP maps",
                                   description="Extract a feature bank (cached), report leave-one-out kNN accuracy "
                                   "in feature and pixel space, and draw nearest neighbours and projections.")
    add_model_argument(parser)
    add_images_argument(parser)
    parser.add_argument("--layer", default=None, help="a layer name, or NAME:input for a layer's input "
                        "(default: the input of the classifier's last Linear layer)")
    parser.add_argument("--knn", type=positive_int, default=5, help="neighbours per query and for kNN accuracy (default 5)")
    parser.add_argument("--metric", choices=tuple(METRICS), default="cosine", help="distance (default cosine)")
    parser.add_argument("--project", default="pca", help="comma-separated projections of pca,tsne,umap, "
                        "or none (default pca)")
    parser.add_argument("--queries", type=int, default=3, help="query images in the kNN figure (default 3)")
    parser.add_argument("--query", action="append", default=[], help="an image of IMAGES to use as a query (repeatable)")
    parser.add_argument("--pixel-size", type=positive_int, default=None,
                        help="shrink pixels to this side for pixel space (default: the model input itself)")
    parser.add_argument("--thumbnails", type=int, default=0, help="images drawn on each projection (default 0)")
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

    methods = [] if args.project.strip().lower() in ("", "none") else [m.strip() for m in args.project.split(",")]
    for method in methods:
        if method not in PROJECTIONS:
            raise DeepscopeError(f"--project {method!r}: use a comma-separated list of {', '.join(PROJECTIONS)}, or none.")
    out = Path(args.out)
    outputs = [out / "features.npz", out / "knn.png"] + [out / f"projection-{m}.png" for m in methods]
    for path in outputs:
        check_writable(path, args.force)
    loaded = model_from_args(args)
    images = images_from_args(args, loaded)
    cache = Cache.open(False if args.no_cache else args.cache)  # one cache: a location that fails warns once
    progress = not args.quiet
    bank = extract_features(loaded, images, args.layer, batch_size=args.batch_size, cache=cache, progress=progress)
    pixels = pixel_bank(images, loaded.preprocess, size=args.pixel_size, batch_size=args.batch_size,
                        cache=cache, progress=progress)
    print(f"{loaded.name}: {len(bank)} image(s) from {images.root}, layer {bank.layer}, "
          f"{bank.features.shape[1]} features (pixel space: {pixels.features.shape[1]})")
    names = loaded.classes.names
    try:
        feature_acc, pixel_acc = knn_accuracy(bank, args.knn, args.metric), knn_accuracy(pixels, args.knn, args.metric)
        classes = len(set(bank.class_ids().tolist()))
        print(f"leave-one-out {args.knn}-NN accuracy ({args.metric}): feature space {feature_acc:.1%}, "
              f"pixel space {pixel_acc:.1%} (chance about {1 / classes:.1%}, {classes} classes)")
    except DeepscopeError as error:
        print(f"no kNN accuracy: {error}")
    bank.save(outputs[0])
    queries = args.query or choose_queries(bank, args.queries)
    photos = Photos(thumbnail_sizes=(KNN_THUMBNAIL, PROJECTION_THUMBNAIL))
    shown = (bank, nearest_neighbours(bank, queries, args.knn, args.metric), pixels,
             nearest_neighbours(pixels, queries, args.knn, args.metric))
    figure = knn_figure(*shown, thumbnails={path: photos.thumbnail(path, KNN_THUMBNAIL) for path in knn_paths(*shown)},
                        class_names=names)
    save_figure(figure, outputs[1])
    drawn = {bank.paths[row]: photos.thumbnail(bank.paths[row], PROJECTION_THUMBNAIL)
             for row in thumbnail_rows(bank, args.thumbnails)}
    for method, path in zip(methods, outputs[2:]):
        figure = projection_figure(project(bank, method), bank, project(pixels, method), pixels,
                                   class_names=names, thumbnails=drawn)
        save_figure(figure, path)
    print("wrote " + ", ".join(str(p) for p in outputs))
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
