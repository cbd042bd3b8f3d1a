"""Figures of the feature space: nearest neighbours (feature vs pixel space) and 2-D projections.

The figures show photos as thumbnails the caller decoded (``{path: (S, S, 3) uint8 array}``, e.g. from
:class:`deepscope.images.Photos`); :func:`knn_paths` and :func:`thumbnail_rows` say which photos they need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from deepscope.features import FeatureBank, Neighbours, Projection
from deepscope.render.common import subplots

#: Kelly's 20 colours of maximum contrast (white and black left out): 20 classes stay distinguishable
PALETTE = ("#F3C300", "#875692", "#F38400", "#A1CAF1", "#BE0032", "#C2B280", "#848482", "#008856", "#E68FAC",
           "#0067A5", "#F99379", "#604E97", "#F6A600", "#B3446C", "#DCD300", "#882D17", "#8DB600", "#654522",
           "#E25822", "#2B3D26")
#: beyond 20 classes the marker changes too
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
SAME_CLASS, OTHER_CLASS = "#1a9850", "#d73027"


def knn_paths(bank: FeatureBank, neighbours: Neighbours, pixel_bank: FeatureBank | None = None,
              pixel_neighbours: Neighbours | None = None) -> list[Path]:
    """The photos a :func:`knn_figure` of these arguments shows (queries and neighbours), each once, in order."""
    shown: dict[Path, None] = {}
    for source, found in ((bank, neighbours), (pixel_bank, pixel_neighbours)):
        if source is not None and found is not None:
            for row in [*found.queries.tolist(), *found.indices.flatten().tolist()]:
                shown.setdefault(Path(source.paths[row]), None)
    return list(shown)


def knn_figure(bank: FeatureBank, neighbours: Neighbours, pixel_bank: FeatureBank | None = None,
               pixel_neighbours: Neighbours | None = None, *, thumbnails: Mapping[Path, np.ndarray],
               class_names: Sequence[str] | None = None):
    """Per query: a row "query | k feature-space neighbours" and, if given, "query | k pixel-space neighbours".

    ``thumbnails`` holds the picture of every path of :func:`knn_paths` (a missing one is drawn grey).
    A neighbour's frame is green when its class is the query's, red otherwise (no frame for unlabelled
    images); its distance is printed.
    ``class_names`` maps model class indices to names (default: the class folder names).
    """
    rows = [(bank, neighbours, f"feature space\n{bank.layer}")]
    if pixel_bank is not None and pixel_neighbours is not None:
        rows.append((pixel_bank, pixel_neighbours, "pixel space"))
    k = neighbours.indices.shape[1]
    n_rows = len(neighbours.queries) * len(rows)
    fig, axes = subplots(n_rows, k + 1, figsize=(1.45 * (k + 1) + 0.6, 1.75 * n_rows), squeeze=False)
    grey = np.full((8, 8, 3), 128, dtype=np.uint8)

    def show(ax, source: FeatureBank, row: int, title: str, frame: str | None):
        ax.imshow(thumbnails.get(Path(source.paths[row]), grey))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=6.5)
        for spine in ax.spines.values():
            spine.set_visible(frame is not None)
            if frame:
                spine.set_edgecolor(frame)
                spine.set_linewidth(3)

    for q in range(len(neighbours.queries)):
        for r, (source, found, label) in enumerate(rows):
            axes_row = axes[q * len(rows) + r]
            query = int(found.queries[q])
            show(axes_row[0], source, query, "query\n" + source.class_name(query, class_names)[:22], None)
            axes_row[0].set_ylabel(label, fontsize=7)
            for j in range(k):
                other = int(found.indices[q, j])
                labelled = source.labels[query] is not None or source.folders[query] is not None
                same = source.labels[other] == source.labels[query] and source.folders[other] == source.folders[query]
                show(axes_row[j + 1], source, other,
                     f"{source.class_name(other, class_names)[:18]}\nd={float(found.distances[q, j]):.3f}",
                     (SAME_CLASS if same else OTHER_CLASS) if labelled else None)
    fig.suptitle(f"{k} nearest neighbours ({neighbours.metric}) of {len(neighbours.queries)} queries: "
                 f"{bank.model} features vs preprocessed pixels", fontsize=9)
    fig.tight_layout()
    return fig


def thumbnail_rows(bank: FeatureBank, count: int) -> list[int]:
    """``count`` evenly spaced rows of a bank: the photos to draw on a :func:`projection_figure`."""
    if count < 1 or not len(bank):
        return []
    return np.unique(np.linspace(0, len(bank) - 1, min(count, len(bank))).round().astype(int)).tolist()


def projection_figure(projection: Projection, bank: FeatureBank, pixel_projection: Projection | None = None,
                      pixel_bank: FeatureBank | None = None, *, class_names: Sequence[str] | None = None,
                      thumbnails: Mapping[Path, np.ndarray] | None = None):
    """Scatter of a projection coloured by class, with a legend; the pixel-space projection beside it.

    ``thumbnails`` (``{path: picture}``, e.g. of :func:`thumbnail_rows`) are drawn at their photos' points.
    """
    panels = [(projection, bank, f"{bank.model} features ({bank.layer})")]
    if pixel_projection is not None and pixel_bank is not None:
        panels.append((pixel_projection, pixel_bank, "preprocessed pixels"))
    fig, axes = subplots(1, len(panels), figsize=(6.2 * len(panels) + 2.2, 6.0), squeeze=False,
                             layout="constrained")
    handles = {}
    for ax, (proj, source, title) in zip(axes[0], panels):
        names = [source.class_name(i, class_names) or "(no class)" for i in range(len(source))]
        rank = {name: (-1 if label is None else label, name) for name, label in zip(names, source.labels)}
        order = sorted(rank, key=rank.get)  # model class order, else folder names
        points = proj.points.cpu().numpy()
        for c, name in enumerate(order):
            mask = np.array([n == name for n in names])
            handles[name] = ax.scatter(points[mask, 0], points[mask, 1], s=16, color=PALETTE[c % len(PALETTE)],
                                       marker=MARKERS[(c // len(PALETTE)) % len(MARKERS)], label=name,
                                       edgecolors="none", alpha=0.85)
        if thumbnails:
            _draw_thumbnails(ax, source, points, thumbnails)
        ax.set_title(f"{proj.method.upper() if proj.method != 'tsne' else 't-SNE'} of {title}", fontsize=9)
        _axis_labels(ax, proj)
    fig.legend(handles.values(), handles.keys(), loc="outside right center", fontsize=7, frameon=False,
               markerscale=1.4, ncols=1 if len(handles) <= 40 else 2)
    return fig


def _axis_labels(ax, projection: Projection) -> None:
    names = {"pca": "PC", "tsne": "t-SNE ", "umap": "UMAP "}
    labels = [f"{names[projection.method]}{i + 1}" for i in range(2)]
    if projection.explained_variance is not None:
        labels = [f"{label} ({float(v):.1%} of variance)" for label, v in zip(labels, projection.explained_variance)]
    ax.set_xlabel(labels[0], fontsize=8)
    ax.set_ylabel(labels[1], fontsize=8)
    ax.tick_params(labelsize=7)


def _draw_thumbnails(ax, bank: FeatureBank, points: np.ndarray, thumbnails: Mapping[Path, np.ndarray]) -> None:
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    for row, path in enumerate(bank.paths):
        if Path(path) in thumbnails:
            image = OffsetImage(thumbnails[Path(path)], zoom=1.0)
            ax.add_artist(AnnotationBbox(image, tuple(points[row, :2]), frameon=False, pad=0))
