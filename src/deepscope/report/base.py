"""What a report section is made of, and the context every section is built from.

A section is a function ``build(context) -> Section``. It reads the model, the images and the settings
from a :class:`ReportContext`, keeps expensive results in ``context.cache``, and returns a
:class:`Section`: a title, one or two sentences saying what it shows and the paper it comes from, and
items (facts, tables, figures, saliency cards, notes) that the page renderer turns into HTML.
Items hold plain strings and numbers (escaped by the renderer) and images as data URIs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from deepscope.catalogue import QUICK_METHOD_OPTIONS, build_method, get_method
from deepscope.classify import Classification, classify
from deepscope.errors import DeepscopeError
from deepscope.images import ImageSet
from deepscope.models.zoo import LoadedModel
from deepscope.report.cache import Cache, classification_key, make_key


@dataclass(frozen=True)
class ReportSettings:
    """Sizes and seeds of a report run.

    Attributes
    ----------
    per_class : int
        Sample images shown per class (by folder label, else by predicted class).
    max_images : int
        Cap on the number of sample images over all classes.
    steps : int or None
        Steps of iterative methods (Integrated Gradients, optimised images, deletion curves);
        None keeps each method's default.
    seed : int
        Seeds torch before every section and is passed to every seeded method.
    batch_size : int
        Images per forward pass.
    progress : bool
        Progress bars on stderr.
    method_options : mapping of method name to options
        Options of single methods (``--option ig.steps=32``), over the report's quick settings.
    """

    per_class: int = 2
    max_images: int = 40
    steps: int | None = None
    seed: int = 0
    batch_size: int = 32
    progress: bool = True
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("per_class", "max_images", "batch_size"):
            if getattr(self, name) < 1:
                raise DeepscopeError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.steps is not None and self.steps < 1:
            raise DeepscopeError(f"steps must be at least 1, got {self.steps}.")
        for name, options in self.method_options.items():
            get_method(name).check_options(options)

    def as_rows(self) -> list[tuple[str, str]]:
        rows = [(name, "method default" if value is None else str(value)) for name, value in vars(self).items()
                if name not in ("progress", "method_options")]
        options = "; ".join(f"{name} {', '.join(f'{k}={v}' for k, v in opts.items())}"
                            for name, opts in self.method_options.items())
        return rows + ([("method options", options)] if options else [])


# ----------------------------------------------------------------------------------------------- items
@dataclass
class Item:
    """One block of a section; ``kind`` picks the template macro that draws it."""

    kind: ClassVar[str] = "item"


@dataclass
class Facts(Item):
    """Label/value pairs (a two-column table)."""

    kind: ClassVar[str] = "facts"
    rows: list[tuple[str, str]]
    caption: str = ""


@dataclass
class Table(Item):
    """A table with a header row; cells are shown as text."""

    kind: ClassVar[str] = "table"
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure(Item):
    """A picture (data URI) with a caption; click to enlarge."""

    kind: ClassVar[str] = "figure"
    src: str
    caption: str = ""
    alt: str = ""


@dataclass
class Gallery(Item):
    """Several figures in a grid of thumbnails."""

    kind: ClassVar[str] = "gallery"
    figures: list[Figure]
    caption: str = ""


@dataclass
class Note(Item):
    """A short remark (what was left out and why)."""

    kind: ClassVar[str] = "note"
    text: str


@dataclass
class MapLayer:
    """One method's map over an image: a transparent heatmap (data URI), or why there is none."""

    method: str
    src: str | None = None
    note: str = ""
    signed: bool = False


@dataclass
class SaliencyCard(Item):
    """An image with every method's map, switchable, plus the target it explains."""

    kind: ClassVar[str] = "saliency"
    title: str
    photo: str
    target: str
    details: list[str]
    layers: list[MapLayer]
    key: str = ""  # unique page id, set when the page is written


@dataclass
class Section:
    """A titled part of the report."""

    name: str
    title: str
    intro: str
    items: list[Item] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------- context
class Timer:
    """Wall time per named step, in the order the steps ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class ReportContext:
    """Everything a section may use: the model, the images, the settings, the cache and the timer."""

    loaded: LoadedModel
    images: ImageSet
    settings: ReportSettings = field(default_factory=ReportSettings)
    cache: Cache = field(default_factory=lambda: Cache(None))
    timer: Timer = field(default_factory=Timer)
    _classification: Classification | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        from deepscope.probe import model_device

        return model_device(self.loaded.model)

    def classification(self) -> Classification:
        """Top-5 predictions for every readable image (computed once, cached on disk)."""
        if self._classification is None:
            key = classification_key(self.cache, self.loaded, self.images)
            stored = self.cache.load("classify", key)
            if stored is not None:
                self._classification = _classification_from_store(stored, self.images)
            else:
                result = classify(self.loaded, self.images, topk=5, batch_size=self.settings.batch_size,
                                  progress=self.settings.progress)
                self.cache.save("classify", key, _classification_to_store(result, self.images))
                self._classification = result
        return self._classification

    def method_options(self, name: str) -> dict:
        """The options of method ``name`` in the report that differ from its defaults:
        :data:`QUICK_METHOD_OPTIONS`, then ``--steps`` for methods with a ``steps`` option, then
        ``settings.method_options`` (``--option``)."""
        entry = get_method(name)
        quick = QUICK_METHOD_OPTIONS.get(name, {})
        return {**quick, **entry.offered(steps=self.settings.steps), **self.settings.method_options.get(name, {})}

    def build_method(self, name: str):
        """Method ``name`` with the report's options (:meth:`method_options`), batch size and seed."""
        entry = get_method(name)
        options = {**entry.offered(batch_size=self.settings.batch_size, seed=self.settings.seed),
                   **self.method_options(name)}
        return build_method(name, self.loaded.model, preprocess=self.loaded.preprocess, progress=False, **options)

    def figure(self, what: str, parts: Sequence[Any], draw: Callable[[], Any], *, images: bool = True) -> str:
        """Data URI of the matplotlib figure ``draw()`` returns, cached on disk as PNG.

        The key is ``what``, ``parts`` (the settings the figure depends on), the model, and (if ``images``)
        the image set's content.
        """
        from deepscope.render.report import data_uri, png_tensor

        key = make_key("figure", what, list(parts), self.cache.model_digest(self.loaded),
                       self.cache.images_digest(self.images) if images else None)
        png = self.cache.get_or_compute("figures", key, lambda: png_tensor(draw()))
        return data_uri(png.numpy().tobytes(), "image/png")

    def class_name(self, index: int | None) -> str:
        return "unknown" if index is None else self.loaded.classes.names[index]

    def samples(self) -> list[int]:
        """Positions in :attr:`images` of the sample images: ``per_class`` per class, at most ``max_images``.

        Classes are the folder labels when the images have folders, else the predicted classes. Within a
        class the images are drawn with ``seed``; classes follow their first appearance.
        """
        result = self.classification()
        position = {path: i for i, path in enumerate(self.images.paths)}
        groups: dict[str, list[int]] = {}
        for path, row in zip(result.paths, result.topk_indices[:, 0].tolist()):
            i = position[path]
            folder = self.images.folders[i]
            key = f"folder:{folder}" if folder is not None else f"pred:{row}"
            groups.setdefault(key, []).append(i)
        generator = torch.Generator().manual_seed(self.settings.seed)
        chosen: list[int] = []
        for members in groups.values():
            order = torch.randperm(len(members), generator=generator).tolist()
            chosen += sorted(members[j] for j in order[: self.settings.per_class])
        return chosen[: self.settings.max_images]

    def prediction(self, index: int) -> tuple[int, float]:
        """(class, probability) of the top prediction for the image at ``index``."""
        result = self.classification()
        row = result.paths.index(self.images.paths[index])
        return int(result.topk_indices[row, 0]), float(result.topk_probs[row, 0])


def _classification_to_store(result: Classification, images: ImageSet) -> dict:
    position = {path: i for i, path in enumerate(images.paths)}
    return {"kept": torch.tensor([position[p] for p in result.paths], dtype=torch.long),
            "indices": result.topk_indices, "probs": result.topk_probs,
            "skipped": [[str(p), reason] for p, reason in result.skipped]}


def _classification_from_store(stored: dict, images: ImageSet) -> Classification:
    kept = stored["kept"].tolist()
    known = {str(p) for p, _ in images.skipped}
    images.skipped += [(Path(p), r) for p, r in stored["skipped"] if p not in known]
    return Classification([images.paths[i] for i in kept], [images.labels[i] for i in kept],
                          stored["indices"], stored["probs"], list(images.skipped))
