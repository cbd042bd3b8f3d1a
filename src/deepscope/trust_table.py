"""The trust table: faithfulness metrics for a list of catalogue methods, as one table.

For each method: deletion and insertion AUC on a few photos per class (its predicted class), the grid
pointing game on mosaics of those photos, and the rank correlation of its maps with those of a model
whose output layer was randomised (the first step of the cascade; lower means the map depends more on
what the model learned); then the metrics of :data:`TRUST_METRICS` (or the caller's choice) from the metric
catalogue :mod:`deepscope.evaluation.metrics`: those that score maps on the same photos, those that explain
again (perturbed inputs, randomised models) on the randomisation photos. The controls ``random`` and
``center`` belong in every table: they show chance.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from deepscope.catalogue import ATTRIBUTION_CHUNK, build_method, get_method
from deepscope.errors import DeepscopeError, ImageError, UnsupportedModelError
from deepscope.fileio import display_path
from deepscope.evaluation.deletion_insertion import PerturbationCurve, deletion_curve, insertion_curve
from deepscope.evaluation.metrics import METRICS, get_metric
from deepscope.evaluation.pointing_game import PointingResult, grid_pointing_game
from deepscope.evaluation.randomization import RandomizationResult, cascading_randomization
from deepscope.images import ImageSet, Photos, draw_per_group, evenly_spaced
from deepscope.models.zoo import LoadedModel
from deepscope.probe import model_device

#: Table columns: (key, header, what it measures).
COLUMNS = (
    ("method", "method", ""),
    ("deletion_auc", "deletion AUC (lower is better)", "mean over images, ± standard error"),
    ("insertion_auc", "insertion AUC (higher is better)", "mean over images, ± standard error"),
    ("pointing", "grid pointing (chance 0.25)", "mean share inside the tile, ± standard error over mosaics"),
    ("randomization_spearman", "rank corr. after top-layer randomisation (lower passes)",
     "Spearman of |maps|, mean over images"),
    ("randomization_ssim", "SSIM after top-layer randomisation", "mean over images"),
    ("images", "photos", "photos scored by deletion and insertion"),
    ("seconds", "seconds", "wall time for this method's row"),
)
#: metrics of the catalogue that the table shows besides its own columns, with the options it runs them at
#: (cheaper than their defaults where a table of every method needs it); those that explain again run on the
#: randomisation photos only
TRUST_METRICS: dict[str, dict] = {"road-gap": {}, "average-drop": {}, "increase-in-confidence": {},
                                  "infidelity": {"samples": 20}, "sensitivity-max": {"samples": 4}, "emprt": {}}
#: catalogue metrics that are columns of the table already
_OWN_COLUMNS = ("deletion", "insertion", "cascading-randomization")


def table_columns(rows: Sequence[dict] = ()) -> list[tuple[str, str, str]]:
    """The table's columns: :data:`COLUMNS`, with one per catalogue metric the rows hold before photos and seconds."""
    present = [name for name in METRICS if any(name in row for row in rows)]
    extra = [(name, get_metric(name).header, get_metric(name).summary) for name in present]
    return [*COLUMNS[:-2], *extra, *COLUMNS[-2:]]


def check_metrics(metrics: Mapping[str, Mapping] | Sequence[str] | None) -> dict[str, dict]:
    """The table's catalogue metrics with checked options (None: :data:`TRUST_METRICS`); unknown names and
    options raise before any work."""
    if metrics is None:
        metrics = TRUST_METRICS
    if not isinstance(metrics, Mapping):
        metrics = {name: TRUST_METRICS.get(name, {}) for name in metrics}
    return {name: get_metric(name).check_options(options) for name, options in metrics.items()
            if name not in _OWN_COLUMNS}


@dataclass
class MethodEvaluation:
    """All metrics of one method (``error`` says why a method could not run on this model)."""

    method: str
    deletion: PerturbationCurve | None = None
    insertion: PerturbationCurve | None = None
    pointing: PointingResult | None = None
    randomization: RandomizationResult | None = None
    seconds: float = 0.0
    error: str = ""
    extra: dict = field(default_factory=dict)
    #: per-image values of the catalogue metrics, by name
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    #: wall time of each part (the maps, each metric), seconds
    parts: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the block's wall time to :attr:`parts`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.parts[part] = self.parts.get(part, 0.0) + time.perf_counter() - started

    def row(self, metrics: Sequence[str] = ()) -> dict:
        """Numbers of the table row (NaN where a metric was not computed): its own columns, then the mean and
        standard error of each of ``metrics`` (default: those computed)."""
        nan = float("nan")
        extra = {}
        for name in metrics or self.metrics:
            values = self.metrics.get(name)
            extra[name] = _mean(values) if values is not None else nan
            extra[f"{name}_sem"] = _sem(values) if values is not None else nan
        return {
            "method": self.method,
            "deletion_auc": _mean(self.deletion.auc) if self.deletion else nan,
            "deletion_sem": _sem(self.deletion.auc) if self.deletion else nan,
            "insertion_auc": _mean(self.insertion.auc) if self.insertion else nan,
            "insertion_sem": _sem(self.insertion.auc) if self.insertion else nan,
            "images": len(self.deletion.auc) if self.deletion else 0,
            "pointing": self.pointing.mean if self.pointing else nan,
            "pointing_sem": self.pointing.sem if self.pointing else nan,
            "pointing_std": self.pointing.std if self.pointing else nan,
            "mosaics": len(self.pointing.scores) if self.pointing else 0,
            "randomization_spearman": self.randomization.top_layer_spearman if self.randomization else nan,
            "randomization_ssim": self.randomization.top_layer_ssim if self.randomization else nan,
            "randomization_constant": self.randomization.top_layer_constant if self.randomization else 0,
            "randomization_images": len(self.randomization.spearman[0]) if self.randomization else 0,
            **extra,
            "seconds": self.seconds,
            "error": self.error,
        }


def _mean(values: torch.Tensor) -> float:
    return float(values.float().mean())


def _sem(values: torch.Tensor) -> float:
    return float(values.float().std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def select_images(images: ImageSet, per_class: int, seed: int = 0) -> ImageSet:
    """``per_class`` images of each class folder (all of a flat folder up to that many), drawn with ``seed``."""
    if per_class < 1:
        raise DeepscopeError(f"images per class must be at least 1, got {per_class}.")
    return images.subset(draw_per_group(list(enumerate(images.folders)), per_class, seed))


def readable_selection(images: ImageSet, per_class: int, seed: int, photos: Photos) -> ImageSet:
    """:func:`select_images`, without the files that cannot be read (``photos.skipped`` names them).

    Raises
    ------
    ImageError
        When none of the chosen files can be read.
    """
    chosen = select_images(images, per_class, seed)
    kept = photos.readable(chosen.paths)
    if not kept:
        first = ", ".join(f"{display_path(p.name)} ({reason})" for p, reason in photos.skipped[:2])
        raise ImageError(f"none of the {len(chosen)} chosen image(s) can be read: {first}.")
    return chosen.subset(kept)


def evaluate_methods(loaded: LoadedModel, images: ImageSet, methods: Sequence[str], *, images_per_class: int = 2,
                     mosaics: int = 20, steps: int = 50, cascade_steps: int = 1, cascade_depth: int | None = 2,
                     randomization_images: int = 8, layer: str | None = None, batch_size: int = 32, seed: int = 0,
                     method_options: Mapping[str, Mapping] | None = None, photos: Photos | None = None,
                     metrics: Mapping[str, Mapping] | Sequence[str] | None = None, metric_images: int | None = None,
                     max_images: int | None = None, progress: bool = False) -> list[MethodEvaluation]:
    """Deletion, insertion, grid pointing game, top-layer randomisation and catalogue metrics for each method.

    Parameters
    ----------
    loaded : LoadedModel
        The classifier (on its device) with its preprocessing.
    images : ImageSet
        Photos; class folders give the labels the pointing game needs (without them it is skipped).
    methods : list of str
        Names in :data:`deepscope.catalogue.METHODS`.
    images_per_class : int
        Photos drawn (seeded) from each class for every metric; the pointing game draws its mosaics
        from those the model classifies correctly. Files that cannot be read are left out
        (``photos.skipped`` names them).
    mosaics, steps : int
        Pointing-game mosaics; deletion/insertion steps.
    cascade_steps, cascade_depth : int
        Layers (blocks of ``cascade_depth`` dotted parts) randomised from the top; the table reports
        the first step, more steps feed the figure.
    randomization_images : int
        Photos used for the randomisation check (the first of the selection).
    layer, batch_size, seed
        Offered to every method that declares the option (``layer``: the CAMs' layer).
    method_options : mapping of method name to options, optional
        Options of single methods (e.g. ``{"ig": {"steps": 16}}``); each is checked by the catalogue.
    photos : Photos, optional
        Where the chosen photos are decoded (kept there for a caller that shows them); default: a new one.
    metrics : names, or mapping of name to options, optional
        Metrics of :data:`deepscope.evaluation.metrics.METRICS` (default :data:`TRUST_METRICS`; ``()`` for
        none); those that score maps use the first ``metric_images`` photos (default: all), those that explain
        again the randomisation photos.
    max_images : int, optional
        Score at most this many of the drawn photos, spread evenly over them (so over the classes).

    Maps are ranked as they are displayed: channels reduced by each method's ``display.reduction``.
    """
    from tqdm.auto import tqdm

    extra = dict(method_options or {})
    metrics = check_metrics(metrics)
    entries = {name: get_method(name) for name in methods}
    for name, options in extra.items():
        get_method(name).check_options(options)  # a misspelt option fails before any work
    device = model_device(loaded.model)
    photos = photos or Photos(loaded.preprocess)
    if photos.preprocess != loaded.preprocess:
        raise DeepscopeError("photos: crop the photos with the model's preprocessing (Photos(loaded.preprocess)).")
    chosen = readable_selection(images, images_per_class, seed, photos)
    chosen = chosen.subset(evenly_spaced(len(chosen), max_images))
    inputs = loaded.preprocess.normalize(photos.crops(chosen.paths)).to(device)
    labelled = [i for i, label in enumerate(chosen.labels) if label is not None]
    results = []
    for name, entry in tqdm(entries.items(), desc="methods", unit="method", disable=not progress):
        options = {**entry.offered(layer=layer, batch_size=batch_size, seed=seed), **extra.get(name, {})}

        def build(model, name=name, options=options, batch_size=None):
            """The method for ``model``; ``batch_size`` replaces the method's own where it has one."""
            chosen = {**options, "batch_size": batch_size} if batch_size and "batch_size" in options else options
            return build_method(name, model, preprocess=loaded.preprocess, **chosen)

        started = time.perf_counter()
        evaluation = MethodEvaluation(name)
        try:
            _score(evaluation, build, loaded, inputs, chosen, labelled, mosaics=mosaics, steps=steps,
                   cascade_steps=cascade_steps, cascade_depth=cascade_depth,
                   randomization_images=randomization_images, batch_size=batch_size, seed=seed, metrics=metrics,
                   metric_images=metric_images or len(inputs), progress=progress)
        except UnsupportedModelError as error:  # this method does not fit this model (or this layer)
            evaluation.error = str(error)
        evaluation.seconds = time.perf_counter() - started
        results.append(evaluation)
    return results


def _score(evaluation: MethodEvaluation, build, loaded: LoadedModel, inputs: torch.Tensor, chosen: ImageSet,
           labelled: list[int], *, mosaics: int, steps: int, cascade_steps: int, cascade_depth: int | None,
           randomization_images: int, batch_size: int, seed: int, metrics: Mapping[str, Mapping],
           metric_images: int, progress: bool) -> None:
    """Fill ``evaluation`` with every metric of the method that ``build(model)`` makes; the wall time of each
    part goes to ``evaluation.parts``."""
    timed = evaluation.timed
    method = build(loaded.model)
    reduction = method.display.reduction
    with timed("maps"):
        maps = torch.cat([method(chunk) for chunk in inputs.split(ATTRIBUTION_CHUNK)])
    curve_options = {"steps": steps, "batch_size": batch_size, "progress": progress, "reduction": reduction}
    with timed("deletion"):
        evaluation.deletion = deletion_curve(loaded.model, inputs, maps, **curve_options)
    with timed("insertion"):
        evaluation.insertion = insertion_curve(loaded.model, inputs, maps, **curve_options)
    if len(labelled) >= 4 and mosaics > 0:
        index = torch.tensor(labelled, device=inputs.device)
        try:
            with timed("pointing"):
                # a mosaic has 4x the pixels of a photo: a quarter of the mosaics and of the method's own batch
                evaluation.pointing = grid_pointing_game(
                    build(loaded.model, batch_size=max(1, batch_size // 4)), loaded.model, inputs[index],
                    [chosen.labels[i] for i in labelled], mosaics=mosaics, seed=seed,
                    batch_size=max(1, ATTRIBUTION_CHUNK // 4), reduction=reduction, progress=progress)
        except DeepscopeError as error:  # too few correct photos, or a fixed-size model
            evaluation.error = f"pointing game: {error}"
    with timed("randomization"):
        evaluation.randomization = cascading_randomization(
            build, loaded.model, inputs[:randomization_images], depth=cascade_depth, max_steps=cascade_steps,
            seed=seed, reduction=reduction, progress=progress)
    offered = {"batch_size": batch_size, "seed": seed}  # as the methods are offered them
    for name, options in metrics.items():
        entry = METRICS[name]
        declared = {option.name for option in entry.options}
        options = {**{key: value for key, value in offered.items() if key in declared}, **options}
        with timed(name):
            if entry.needs == "maps":
                values = entry.compute(loaded.model, inputs[:metric_images], maps[:metric_images],
                                       reduction=reduction, **options)
            else:
                values = entry.compute(loaded.model, inputs[:randomization_images], build, reduction=reduction,
                                       **options)
        evaluation.metrics[name] = values.detach().float().cpu()


def table_csv(rows: Sequence[dict]) -> str:
    """The rows as CSV, every number in full."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["method"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def table_markdown(rows: Sequence[dict], caption: str = "") -> str:
    """The rows as a Markdown table (mean ± standard error), with the caption above."""
    headers = [header for _, header, _ in table_columns(rows)]
    lines = ([caption, ""] if caption else []) + ["| " + " | ".join(headers) + " |",
                                                   "|" + "---|" * len(headers)]
    for row in rows:
        cells = format_row(row, rows)
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {row['method']}: {row['error']}" for row in rows if row.get("error")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def table_text(rows: Sequence[dict]) -> str:
    """A plain-text table for the terminal."""
    headers = ["method", "deletion", "insertion", "pointing", "rand. corr", "rand. SSIM",
               *[name for name in METRICS if any(name in row for row in rows)], "photos", "s"]
    body = [format_row(row, rows) for row in rows]
    widths = [max(len(r[i]) for r in [headers] + body) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [headers] + body)


def format_row(row: dict, rows: Sequence[dict] = ()) -> list[str]:
    """The cells of one table row as text: mean ± standard error, n/a for missing values; one cell for each
    catalogue metric of ``rows`` (the whole table, so that every row has the same columns; default: ``row``)."""
    nan = float("nan")
    metrics = [name for name in METRICS if any(name in other for other in (rows or [row]))]
    return [row["method"], _pm(row["deletion_auc"], row["deletion_sem"]), _pm(row["insertion_auc"], row["insertion_sem"]),
            _pm(row["pointing"], row["pointing_sem"]), _randomized(row, "randomization_spearman"),
            _randomized(row, "randomization_ssim"),
            *[_pm(row.get(name, nan), row.get(f"{name}_sem", nan)) for name in metrics], f"{row.get('images', 0)}",
            f"{row['seconds']:.0f}"]


def _randomized(row: dict, key: str) -> str:
    """A randomisation figure; where every map became constant (no ranks left to correlate), says so."""
    constant, images = row.get("randomization_constant", 0), row.get("randomization_images", 0)
    if math.isnan(row[key]) and constant:
        return f"constant ({constant}/{images} maps)"
    text = _number(row[key])
    return f"{text} ({constant}/{images} constant)" if constant else text


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _pm(value: float, sem: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.3f}" if math.isnan(sem) else f"{value:.3f} ± {sem:.3f}"
