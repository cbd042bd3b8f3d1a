"""Section "features": nearest neighbours in feature vs pixel space, kNN accuracy, 2-D projections."""

from __future__ import annotations

from deepscope.errors import DeepscopeError
from deepscope.features import (FeatureBank, choose_queries, default_feature_layer, extract_features, knn_accuracy,
                                nearest_neighbours, pixel_bank, project)
from deepscope.images import ImageSet
from deepscope.jobs import stored_feature_bank
from deepscope.render.features import knn_figure, knn_paths, projection_figure
from deepscope.render.report import figure_uri
from deepscope.report.base import Figure, Note, ReportContext, Section, Table

#: neighbours per query and for kNN accuracy; query images in the figure
K, QUERIES = 5, 3
#: pixel space: the model input shrunk to this side (area averaging), so 500 photos stay small
PIXEL_SIZE = 64
#: t-SNE is shown from this many images on (fewer points make a meaningless picture)
TSNE_MIN_IMAGES = 20
#: neighbours, kNN accuracy and projections use a seeded sample of at most this many photos (t-SNE and
#: leave-one-out kNN grow with the square of the number of points)
MAX_POINTS = 2000


def features_section(ctx: ReportContext) -> Section:
    intro = ("How the network's last layers organise images: photos close in its penultimate features are "
             "usually of the same class, unlike photos close in pixel space (Krizhevsky et al. 2012); "
             "PCA and t-SNE maps show the same contrast.")
    settings, loaded = ctx.settings, ctx.loaded
    job = ctx.stored_job("features", layer=default_feature_layer(loaded.model))
    if job is not None:
        bank = stored_feature_bank(job)
    else:
        bank = extract_features(loaded, ctx.images, batch_size=settings.batch_size, cache=ctx.cache,
                                progress=settings.progress)
    total = len(bank)
    bank = sample_bank(bank, MAX_POINTS, settings.seed)
    photos = ctx.images if len(bank) == total else ImageSet(ctx.images.root, bank.paths, bank.folders, bank.labels)
    side = min(PIXEL_SIZE, loaded.preprocess.input_size)
    pixels = pixel_bank(photos, loaded.preprocess, size=side, batch_size=settings.batch_size, cache=ctx.cache,
                        progress=settings.progress)
    if len(bank) < 3:
        return Section("features", "The feature space", intro,
                       [Note(f"needs at least 3 readable images, got {len(bank)}.")])
    names = loaded.classes.names
    k = min(K, len(bank) - 1)
    items = []
    if job is not None or len(bank) < total:
        where = f"the feature bank of the store's job {job.path.name}" if job is not None else "the feature bank"
        sample = f"; a seeded sample of {len(bank):,} of its {total:,} photos below" if len(bank) < total else ""
        items.append(Note(f"From {where}{sample}."))
    try:
        rows = [[f"{k}-NN accuracy (leave one out)", f"{knn_accuracy(bank, k):.1%}", f"{knn_accuracy(pixels, k):.1%}"]]
        items.append(Table(["", f"features ({bank.layer}, {bank.features.shape[1]}-d)",
                            f"pixels ({side}x{side}x3)"], rows))
    except DeepscopeError as error:
        items.append(Note(f"no kNN accuracy: {error}"))
    queries = choose_queries(bank, QUERIES)
    shown = (bank, nearest_neighbours(bank, queries, k), pixels, nearest_neighbours(pixels, queries, k))
    figure = knn_figure(*shown, thumbnails={path: ctx.photos.thumbnail(path) for path in knn_paths(*shown)},
                        class_names=names)
    items.append(Figure(figure_uri(figure), caption=f"{k} nearest neighbours (cosine) of {len(queries)} query images: "
                        "feature space above pixel space; green frames share the query's class."))
    methods = ["pca"] + (["tsne"] if len(bank) >= TSNE_MIN_IMAGES else [])
    for method in methods:
        figure = projection_figure(project(bank, method, seed=settings.seed), bank,
                                   project(pixels, method, seed=settings.seed), pixels, class_names=names)
        items.append(Figure(figure_uri(figure), caption=f"{'PCA' if method == 'pca' else 't-SNE'} of features "
                            "(left) and pixels (right), coloured by class."))
    return Section("features", "The feature space", intro, items)


def sample_bank(bank: FeatureBank, count: int, seed: int) -> FeatureBank:
    """At most ``count`` rows of ``bank``, drawn with ``seed`` and kept in file order."""
    import torch

    if len(bank) <= count:
        return bank
    rows = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:count].sort().values.tolist()
    return FeatureBank(bank.features[rows], [bank.paths[i] for i in rows], [bank.labels[i] for i in rows],
                       [bank.folders[i] for i in rows], bank.layer, bank.model, bank.space, bank.skipped, bank.key)
