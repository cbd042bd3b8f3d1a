"""What a report section is made of, and the context every section is built from.

A section is a function ``build(context) -> Section``. It reads the model, the images and the settings
from a :class:`ReportContext`, keeps expensive results in ``context.cache`` (:class:`deepscope.cache.Cache`),
takes the photos it shows from ``context.pixels`` (each decoded once per run), and returns a
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

from deepscope.cache import Cache, expect, expect_keys, expect_tensor, images_digest, make_key, model_digest
from deepscope.catalogue import QUICK_METHOD_OPTIONS, build_method, get_method
from deepscope.classify import Classification, classify
from deepscope.errors import DeepscopeError
from deepscope.images import ImageSet, Photos, Skip, draw_per_group
from deepscope.models.zoo import LoadedModel


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


@dataclass(frozen=True)
class CostShare:
    """The share of the report's photos on which a method of one cost class (the catalogue's ``cost``) runs.

    A map that costs a forward pass per step, channel, window or mask costs tens to thousands of passes, so
    the report shows and scores those methods on fewer photos, spread over the classes, and says so on the
    page; ``deepscope explain``, ``deepscope evaluate`` and the explorer compute any method on any photo.

    Attributes
    ----------
    gallery : int or None
        Sample photos of the saliency gallery with a map of the method (None: every sample).
    trust : int or None
        Photos the trust table scores it on, out of one per class (None: all of them; 0: not scored).
    mosaics : int
        Pointing-game mosaics in the trust table (each has four photos' pixels).
    """

    gallery: int | None
    trust: int | None
    mosaics: int


#: the report's share of photos per cost class: what keeps the report over 20 classes within minutes on a
#: 2-core CPU (the README gives the measured times)
COST_SHARES = {"free": CostShare(None, None, 4), "one pass": CostShare(None, None, 4),
               "passes": CostShare(8, 8, 1), "channels": CostShare(8, 8, 1), "windows": CostShare(8, 8, 1),
               "masks": CostShare(2, 0, 0)}


def cost_share(method: str) -> CostShare:
    """The report's :class:`CostShare` for catalogue method ``method``."""
    return COST_SHARES[get_method(method).cost]


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
class _Run:
    """What a report run computes once: digests, predictions, decoded photos."""

    model_key: str | None = None
    images_key: str | None = None
    classification: Classification | None = None
    photos: Photos | None = None


@dataclass
class ReportContext:
    """Everything a section may use: the model, the images, the settings, the cache, the timer, and a results
    store whose dataset jobs (``deepscope classify/features/neurons/explain/evaluate --store``) stand in for
    the sections' own computations where they fit (same model, same photos).

    The context computes the model and image digests, the predictions and the decoded photos once and keeps
    them; :func:`~deepscope.report.write_report` starts afresh (:meth:`new_run`), so a model or a folder
    changed between two reports is seen.
    """

    loaded: LoadedModel
    images: ImageSet
    settings: ReportSettings = field(default_factory=ReportSettings)
    cache: Cache = field(default_factory=lambda: Cache(None))
    timer: Timer = field(default_factory=Timer)
    store: Any = None
    _run: _Run = field(default_factory=_Run, repr=False)

    def new_run(self) -> None:
        """Forget the digests, predictions and photos kept so far."""
        self._run = _Run()

    @property
    def device(self) -> torch.device:
        from deepscope.probe import model_device

        return model_device(self.loaded.model)

    @property
    def model_key(self) -> str:
        """:func:`deepscope.cache.model_digest` of the model (once per run)."""
        if self._run.model_key is None:
            self._run.model_key = model_digest(self.loaded)
        return self._run.model_key

    @property
    def images_key(self) -> str:
        """:func:`deepscope.cache.images_digest` of the images (once per run)."""
        if self._run.images_key is None:
            self._run.images_key = images_digest(self.images)
        return self._run.images_key

    def stored_job(self, kind: str, accept: Callable[[Any], bool] = lambda job: True, **settings):
        """The newest complete job of ``kind`` in :attr:`store` for this model and exactly these photos, with
        ``settings`` and accepted by ``accept(job)``; None without one."""
        if self.store is None:
            return None
        paths = [str(p) for p in self.images.paths]
        for job in self.store.find(kind, self.model_key, **settings):
            if accept(job) and job.table("files").column("path").to_pylist() == paths:
                return job
        return None

    def classification(self) -> Classification:
        """Top-5 predictions for every readable image (a classify job's from the store, else computed once and
        cached on disk)."""
        if self._run.classification is None and (job := self.stored_job("classify", lambda j: j.settings["topk"] >= 5)):
            from deepscope.jobs import stored_classification

            self._run.classification = stored_classification(job)
        if self._run.classification is None:
            key = make_key("classify", 2, self.model_key, self.images_key)  # 2: with label ranks
            self._run.classification = self.cache.get_or_compute(
                "classify", key, lambda: classify(self.loaded, self.images, topk=5, batch_size=self.settings.batch_size,
                                                  progress=self.settings.progress),
                lambda stored: _classification_from_store(stored, self.images, len(self.loaded.classes)),
                write=lambda result: _classification_to_store(result, self.images))
        return self._run.classification

    @property
    def skipped(self) -> list[Skip]:
        """The files of the image set that the report could not read (none of its sections shows them)."""
        return self.classification().skipped

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        """``(N, 3, S, S)`` [0, 1] model-size crops of the images at ``indices``, each photo decoded once per run."""
        return self.photos.crops([self.images.paths[i] for i in indices])

    @property
    def photos(self) -> Photos:
        """The run's decoded photos (crops and thumbnails)."""
        if self._run.photos is None:
            self._run.photos = Photos(self.loaded.preprocess)
        return self._run.photos

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

        key = make_key("figure", what, list(parts), self.model_key, self.images_key if images else None)
        png = self.cache.get_or_compute("figures", key, lambda: png_tensor(draw()), read_png)
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
        groups = []
        for path, row in zip(result.paths, result.topk_indices[:, 0].tolist()):
            folder = self.images.folders[position[path]]
            groups.append((position[path], f"folder:{folder}" if folder is not None else f"pred:{row}"))
        return draw_per_group(groups, self.settings.per_class, self.settings.seed, self.settings.max_images)

    def prediction(self, index: int) -> tuple[int, float]:
        """(class, probability) of the top prediction for the image at ``index``."""
        result = self.classification()
        row = result.paths.index(self.images.paths[index])
        return int(result.topk_indices[row, 0]), float(result.topk_probs[row, 0])


#: the first bytes of every PNG file
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(stored: Any) -> torch.Tensor:
    """A cached figure: PNG bytes in a uint8 tensor (``ValueError`` for anything else)."""
    expect(bytes(expect_tensor(stored, torch.uint8, 1, "a figure")[:8].tolist()) == PNG_SIGNATURE,
           "a figure should be PNG bytes")
    return stored


def _classification_to_store(result: Classification, images: ImageSet) -> dict:
    position = {path: i for i, path in enumerate(images.paths)}
    return {"kept": torch.tensor([position[p] for p in result.paths], dtype=torch.long),
            "indices": result.topk_indices, "probs": result.topk_probs,
            "ranks": torch.tensor([-1 if r is None else r for r in result.label_ranks], dtype=torch.long),
            "skipped": [[str(p), reason] for p, reason in result.skipped]}


def _classification_from_store(stored: Any, images: ImageSet, classes: int) -> Classification:
    expect_keys(stored, ("kept", "indices", "probs", "ranks", "skipped"), "predictions")
    kept = expect_tensor(stored["kept"], torch.long, 1, "kept")
    ranks = expect_tensor(stored["ranks"], torch.long, 1, "ranks")
    indices = expect_tensor(stored["indices"], torch.long, 2, "indices")
    probs = expect_tensor(stored["probs"], (torch.float32, torch.float16), 2, "probs")
    expect(indices.shape == probs.shape and len(kept) == len(indices) == len(ranks),
           "rows of kept, indices, probs and ranks differ")
    expect(bool(((kept >= 0) & (kept < len(images))).all()) and bool(((indices >= 0) & (indices < classes)).all()),
           "an index is out of range")
    skipped = stored["skipped"]
    expect(isinstance(skipped, list) and all(isinstance(s, list) and len(s) == 2 and all(isinstance(t, str) for t in s)
                                             for s in skipped), "skipped should be [path, reason] pairs")
    rows = kept.tolist()
    labels = [images.labels[i] for i in rows]
    return Classification([images.paths[i] for i in rows], labels, indices, probs.float(),
                          [(Path(p), r) for p, r in skipped],
                          [None if label is None else int(r) for label, r in zip(labels, ranks.tolist())])
