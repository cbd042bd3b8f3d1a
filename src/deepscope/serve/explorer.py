"""What the explorer computes, and which worker computes it.

An :class:`Explorer` holds the model, the photos (:class:`~deepscope.serve.photos.PhotoLibrary`) and two
:class:`~deepscope.serve.worker.ModelWorker` threads:

- ``interactive``: owns the model; loads it, and computes predictions, maps, neuron views and the feature
  space. Every map request of the page is queued here, deduplicated and cached (in memory, bounded, LRU);
- ``background``: owns a copy of the model, made when the first long job arrives; computes optimised images
  and the trust table, so that a job of minutes does not hold up the maps.

Each ``*_job`` method checks its arguments at once (on the caller's thread, raising a
:class:`~deepscope.errors.DeepscopeError` that the server turns into a 4xx), then queues the work and
returns a :class:`concurrent.futures.Future`. Everything a page draws is made the way the report makes it:
maps by the catalogue's methods (:func:`deepscope.catalogue.build_method`) with the report's quick
settings, shown by :func:`deepscope.maps.display_maps` as the report's transparent heatmap layers, neurons
by :func:`deepscope.neurons.neuron_view`, optimised images by :mod:`deepscope.optimize` (Lucid preset),
the feature space by :mod:`deepscope.features` and the trust table by
:func:`deepscope.trust_table.evaluate_methods`.

The model is loaded on the interactive worker when the server starts, so the server answers before the
model is ready; :meth:`Explorer.ready` is the future of the loaded model.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepscope.catalogue import QUICK_METHOD_OPTIONS, get_method, method_names
from deepscope.errors import DeepscopeError, LayerNotFoundError, TargetError, UnsupportedModelError, did_you_mean
from deepscope.serve.photos import UPLOAD_TYPES, Photo, PhotoLibrary, UploadLimits
from deepscope.serve.worker import ModelWorker, ResultCache



@dataclass(frozen=True)
class ServeSettings:
    """Sizes of the explorer's work and of its memory.

    Attributes
    ----------
    top_k : int
        Predictions listed per photo.
    neuron_top : int
        Top-activating crops per neuron.
    optimise_steps : int
        Steps of a neuron's optimised image (Lucid preset).
    trust_steps, trust_mosaics : int
        Deletion/insertion steps and pointing-game mosaics of the trust table (the report's quick settings).
    cache_megabytes : float
        Memory for computed results (maps, neuron views, projections): least recently used first out.
    batch_size : int
        Images per forward pass: in scans (features, neurons) and inside the methods that batch their work
        (occlusion windows, noisy copies, path points): small, so that a server's memory stays moderate.
    method_options : mapping
        Options per method over the catalogue defaults (default: the report's quick settings).
    feature_cache : path, bool or None
        Disk cache of feature banks (see :func:`deepscope.features.extract_features`); False: none.
    uploads : UploadLimits
    """

    top_k: int = 5
    neuron_top: int = 8
    optimise_steps: int = 48
    trust_steps: int = 20
    trust_mosaics: int = 8
    cache_megabytes: float = 128.0
    batch_size: int = 8
    method_options: dict = field(default_factory=lambda: {k: dict(v) for k, v in QUICK_METHOD_OPTIONS.items()})
    feature_cache: str | Path | bool | None = None
    uploads: UploadLimits = UploadLimits()

    def __post_init__(self):
        for name in ("top_k", "neuron_top", "optimise_steps", "trust_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise DeepscopeError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name, options in self.method_options.items():
            get_method(name).check_options(options)


@dataclass(frozen=True)
class LayerInfo:
    """A layer whose output is a spatial map (CAM layers, neuron layers)."""

    name: str
    channels: int
    height: int
    width: int

    def describe(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrustRun:
    """The trust table being computed: one row per method, filled in as each finishes."""

    photos: tuple[str, ...]
    methods: list[str]
    state: str = "queued"           # queued, running, done, failed
    current: str | None = None
    rows: list[dict] = field(default_factory=list)
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _jpeg(pixels: torch.Tensor, quality: int = 90) -> bytes:
    from deepscope.render.common import to_pil

    buffer = io.BytesIO()
    to_pil(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _size_of(result: Any) -> int:
    """Bytes a cached result holds (strings and bytes counted, the rest a small constant)."""
    if isinstance(result, (bytes, str)):
        return len(result) + 64
    if isinstance(result, dict):
        return 64 + sum(_size_of(k) + _size_of(v) for k, v in result.items())
    if isinstance(result, (list, tuple)):
        return 64 + sum(_size_of(v) for v in result)
    if isinstance(result, torch.Tensor):
        return result.numel() * result.element_size() + 64
    return 64


class Explorer:
    """A model and its photos, explored on demand (see the module docstring).

    Parameters
    ----------
    model : str or LoadedModel
        A model spec for :func:`deepscope.models.zoo.load_model` (loaded on the worker) or a loaded model.
    images : ImageSet
        The served photos.
    settings : ServeSettings
    device : str, optional
        Where the model runs (``cpu``, ``cuda``; default: cuda if available); a loaded model stays where it is.
    pretrained : bool
        False builds the architecture with random weights (``--random-weights``).
    worker_setup : callable, optional
        Run on each worker thread before its first job (the command line flushes denormals there).
    """

    def __init__(self, model, images, settings: ServeSettings = ServeSettings(), *, device: str | None = None,
                 pretrained: bool = True, worker_setup: Callable[[], None] | None = None):
        self.settings = settings
        self.photos = PhotoLibrary(images, settings.uploads)
        self._model_spec = model if isinstance(model, str) else None
        self._loaded = None if isinstance(model, str) else model
        self._device = device
        self._pretrained = pretrained
        cache = ResultCache(int(settings.cache_megabytes * 1e6))
        self.cache = cache
        self.interactive = ModelWorker("interactive", cache, worker_setup)
        self.background = ModelWorker("background", cache, worker_setup)
        self._ready: Future | None = None
        self._loaded_event = threading.Event()
        self._copy = None
        self._copy_lock = threading.Lock()
        self._small_lock = threading.Lock()
        self.layers: list[LayerInfo] = []
        self.default_layer: str | None = None
        self._trust: TrustRun | None = None

    # --------------------------------------------------------------------------------- lifecycle
    def start(self) -> Future:
        """Start the workers and queue the model's loading; returns :meth:`ready`."""
        self.interactive.start()
        self.background.start()
        return self.ready()

    def stop(self) -> None:
        self.interactive.stop()
        self.background.stop()
        self.photos.close()

    def ready(self) -> Future:
        """The future of the loaded model (queued on the interactive worker at the first call)."""
        with self._small_lock:
            if self._ready is None:
                self._ready = self.interactive.submit(None, self._load, "loading the model")
            return self._ready

    @property
    def loaded(self):
        """The :class:`~deepscope.models.zoo.LoadedModel` (only once :meth:`ready` is done)."""
        if not self._loaded_event.is_set():
            raise DeepscopeError("the model is still loading; wait for the server to be ready.")
        return self._loaded

    def _load(self):
        from deepscope.attribution.cam import POOLING_TYPES, default_cam_layer
        from deepscope.commands.common import resolve_device
        from deepscope.models.zoo import load_model
        from deepscope.probe import Probe, layer_names, model_device

        if self._loaded is None:
            loaded = load_model(self._model_spec, pretrained=self._pretrained)
            loaded.model.to(resolve_device(self._device or "auto"))
            self._loaded = loaded
        self.photos.label_with(self._loaded.classes)
        model, size = self._loaded.model, self._loaded.preprocess.input_size
        modules = dict(model.named_modules())
        names = [n for n in layer_names(model) if n.count(".") < 2]
        probe_input = torch.zeros(1, 3, size, size, device=model_device(model))
        with Probe(model, names, detach=True) as probe, torch.inference_mode():
            probe(probe_input)
            shapes = {n: tuple(probe.activations[n].shape) for n in names if n in probe.activations}
        skip = POOLING_TYPES + (torch.nn.Identity, torch.nn.Dropout)
        layers = [LayerInfo(n, s[1], s[2], s[3]) for n, s in shapes.items()
                  if len(s) == 4 and s[2] * s[3] > 1 and not isinstance(modules[n], skip)]
        try:
            self.default_layer = default_cam_layer(model, probe_input)
        except UnsupportedModelError:
            self.default_layer = None
        if self.default_layer is not None and self.default_layer not in {layer.name for layer in layers}:
            shape = shapes.get(self.default_layer) or tuple(default_shape(model, self.default_layer, probe_input))
            # a deeper block, or a vision transformer's token sequence (N, T, C): no height and width
            layers.append(LayerInfo(self.default_layer, shape[1], *shape[2:4]) if len(shape) == 4
                          else LayerInfo(self.default_layer, shape[-1], 0, 0))
        self.layers = layers  # empty for a model without spatial maps: CAMs and neurons do not apply
        self._loaded_event.set()
        return self._loaded

    def info(self) -> dict:
        """The model, the methods with their settings here, the layers, and the colour scales."""
        from deepscope.render.report import colour_scale_uri

        loaded = self.loaded
        methods = []
        for name in method_names():
            entry = get_method(name)
            options = self.settings.method_options.get(name, {})
            methods.append({"name": name, "summary": entry.summary, "paper": entry.paper, "cost": entry.cost,
                            "signed": entry.display.signed, "control": entry.control,
                            "layer": entry.accepts("layer"),
                            "settings": ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"})
        return {"model": loaded.name, "source": loaded.source, "input_size": loaded.preprocess.input_size,
                "classes": len(loaded.classes), "photos": len(self.photos), "methods": methods,
                "layers": [layer.describe() for layer in self.layers],
                "default_layer": self.default_layer, "top_k": self.settings.top_k,
                "scales": {"unsigned": colour_scale_uri(False), "signed": colour_scale_uri(True)},
                "uploads": {"max_bytes": self.settings.uploads.max_bytes, "types": list(UPLOAD_TYPES)}}

    # --------------------------------------------------------------------------------- checks
    def resolve_class(self, text: str | int | None) -> int | None:
        """A class index from an index or any name of a class (None: the predicted class)."""
        if text is None or text == "" or text == "pred":
            return None
        return self.loaded.classes.index(text)

    def check_layer(self, layer: str | None) -> str | None:
        """``layer`` if the model has it as a spatial layer (None: the default)."""
        if layer in (None, ""):
            return None
        known = [info.name for info in self.layers]
        if layer not in known:
            raise LayerNotFoundError(f"unknown layer {layer[:80]!r}.{did_you_mean(layer, known)} "
                                     f"Layers with a spatial map: {', '.join(known[:12])}"
                                     f"{', ...' if len(known) > 12 else ''}.")
        return layer

    def check_channel(self, layer: str, channel: int) -> LayerInfo:
        info = next(info for info in self.layers if info.name == layer)
        if not 0 <= channel < info.channels:
            raise TargetError(f"channel {channel} is out of range: layer {layer!r} has {info.channels} channels "
                              f"(0..{info.channels - 1}).")
        return info

    # --------------------------------------------------------------------------------- photos
    def pixels(self, photo: Photo) -> torch.Tensor:
        """The photo as the model sees it: (3, S, S) in [0, 1], resized and centre-cropped (cached)."""
        from deepscope.images import load_image

        key = ("pixels", photo.id, photo.path)
        cached = self.cache.get(key)
        if cached is None:
            cached = self.loaded.preprocess.crop(load_image(photo.path))
            self.cache.put(key, cached, _size_of(cached))
        return cached

    def photo_jpeg(self, photo: Photo, thumbnail: bool = False) -> bytes:
        """JPEG of the model's view of the photo, or a 96-px thumbnail of the whole photo (cached; no model)."""
        key = ("jpeg", photo.id, thumbnail)
        cached = self.cache.get(key)
        if cached is None:
            if thumbnail:
                from PIL import Image

                from deepscope.images import load_image, thumbnail as make_thumbnail

                buffer = io.BytesIO()
                Image.fromarray(make_thumbnail(load_image(photo.path), 112)).save(buffer, format="JPEG", quality=85)
                cached = buffer.getvalue()
            else:
                cached = _jpeg(self.pixels(photo))
            self.cache.put(key, cached, _size_of(cached))
        return cached

    # --------------------------------------------------------------------------------- predictions
    def predictions_job(self, photo: Photo) -> Future:
        return self.interactive.submit(("predictions", photo.id), lambda: self._predictions(photo),
                                       f"classifying {photo.name}", _size_of)

    def _top_predictions(self, photo: Photo) -> list[dict]:
        """:meth:`_predictions`, from the cache when it is there (on a worker)."""
        cached = self.cache.get(("predictions", photo.id))
        if cached is None:
            cached = self._predictions(photo)
            self.cache.put(("predictions", photo.id), cached, _size_of(cached))
        return cached

    def _predictions(self, photo: Photo) -> list[dict]:
        from deepscope.probe import Probe, model_device

        loaded = self.loaded
        inputs = loaded.preprocess.normalize(self.pixels(photo)[None]).to(model_device(loaded.model))
        with Probe(loaded.model, detach=True), torch.inference_mode():
            probs = loaded.model(inputs).float().softmax(dim=1)[0]
        values, indices = probs.topk(min(self.settings.top_k, probs.numel()))
        return [{"index": int(i), "name": loaded.classes.names[int(i)], "probability": round(float(p), 5)}
                for p, i in zip(values.tolist(), indices.tolist())]

    # --------------------------------------------------------------------------------- maps
    def map_job(self, photo: Photo, method: str, target: int | None, layer: str | None) -> Future:
        """The future map of ``method`` for ``photo`` and class ``target`` (None: predicted), at ``layer`` for
        the methods that take one (others ignore it); arguments checked before anything is queued."""
        entry = get_method(method)
        layer = self.check_layer(layer) if entry.accepts("layer") else None
        if target is not None and not 0 <= target < len(self.loaded.classes):
            raise TargetError(f"class {target} is out of range (0..{len(self.loaded.classes) - 1}).")
        key = ("map", photo.id, method, target, layer)
        return self.interactive.submit(key, lambda: self._map(photo, method, target, layer),
                                       f"{method} on {photo.name}", _size_of)

    def method_options(self, method: str, layer: str | None) -> dict:
        entry = get_method(method)
        return {**entry.offered(layer=layer, seed=0, batch_size=self.settings.batch_size),
                **self.settings.method_options.get(method, {})}

    def _map(self, photo: Photo, method: str, target: int | None, layer: str | None) -> dict:
        from deepscope.catalogue import build_method
        from deepscope.maps import display_maps
        from deepscope.probe import model_device
        from deepscope.render.report import heatmap_layer_uri

        loaded = self.loaded
        if target is None:
            target = self._top_predictions(photo)[0]["index"]
        result = {"photo": photo.id, "method": method, "target": target, "target_name": loaded.classes.names[target],
                  "layer": layer if layer is not None or not get_method(method).accepts("layer") else self.default_layer,
                  "applicable": True, "note": "", "image": None, "signed": get_method(method).display.signed}
        pixels = self.pixels(photo)
        started = time.perf_counter()
        try:
            built = build_method(method, loaded.model, preprocess=loaded.preprocess, progress=False,
                                 **self.method_options(method, layer))
            raw = built.attribute(loaded.preprocess.normalize(pixels[None]).to(model_device(loaded.model)),
                                  target=target)
        except (UnsupportedModelError, LayerNotFoundError) as error:  # the method does not fit this model
            result.update(applicable=False, note=f"not applicable: {error}")
            return result
        shown = display_maps(raw, built.display, tuple(pixels.shape[-2:]))[0].cpu()
        result.update(image=heatmap_layer_uri(shown, built.display.signed), signed=built.display.signed,
                      seconds=round(time.perf_counter() - started, 3))
        return result

    # --------------------------------------------------------------------------------- neurons
    def neuron_job(self, layer: str, channel: int) -> Future:
        """Top-activating crops of ``channel`` of ``layer`` over every photo, with their guided backprop."""
        layer = self.check_layer(layer)
        if layer is None:
            raise LayerNotFoundError("name the layer of the neuron (see the layer list).")
        self.check_channel(layer, channel)
        photos = tuple(photo.id for photo in self.photos.list())
        return self.interactive.submit(("neuron", layer, channel, photos), lambda: self._neuron(layer, channel),
                                       f"neuron {layer}:{channel}", _size_of)

    def _neuron(self, layer: str, channel: int) -> dict:
        from deepscope.neurons import neuron_view
        from deepscope.render.neurons import gradient_as_image
        from deepscope.render.report import png_uri
        from deepscope.render.common import to_image_array

        loaded = self.loaded
        images = self.photos.image_set()
        by_path = self.photos.by_path()
        k = min(self.settings.neuron_top, len(images))
        view = neuron_view(loaded.model, loaded.preprocess, images, layer, [channel], k,
                           batch_size=self.settings.batch_size, progress=False)
        items = []
        for j, (crop, grad, path) in enumerate(zip(view.crops[0], view.guided[0], view.paths[0])):
            photo = by_path[Path(path)]
            items.append({"photo": photo.id, "name": photo.name, "activation": round(float(view.top.values[0, j]), 4),
                          "box": list(view.boxes[0][j]), "crop": _data_uri(_jpeg(crop.cpu()), "image/jpeg"),
                          "guided": png_uri(to_image_array(gradient_as_image(grad.cpu())))})
        field_ = view.field
        return {"layer": layer, "channel": channel, "gradient_method": view.gradient_method,
                "field": {"size": field_.size, "stride": field_.stride, "method": field_.method}, "items": items}

    def optimised_job(self, layer: str, channel: int) -> Future:
        """An image optimised to excite ``channel`` of ``layer`` (Lucid preset), on the background worker."""
        layer = self.check_layer(layer)
        if layer is None:
            raise LayerNotFoundError("name the layer of the neuron (see the layer list).")
        self.check_channel(layer, channel)
        return self.background.submit(("optimised", layer, channel, self.settings.optimise_steps),
                                      lambda: self._optimised(layer, channel),
                                      f"optimising {layer}:{channel}", _size_of)

    def _optimised(self, layer: str, channel: int) -> dict:
        from deepscope.optimize import PRESETS, channel as channel_objective, fourier_image, optimize_image
        from deepscope.probe import model_device

        loaded = self.background_model()
        preset, size = PRESETS["lucid"], loaded.preprocess.input_size
        generator = torch.Generator().manual_seed(0)
        param = fourier_image((1, 3, size, size), generator, device=model_device(loaded.model))
        started = time.perf_counter()
        pixels = optimize_image(loaded.model, channel_objective(layer, channel), loaded.preprocess, param,
                                steps=self.settings.optimise_steps, lr=preset.lr, transform=preset.transforms(size),
                                generator=generator, progress=False)
        return {"layer": layer, "channel": channel, "steps": self.settings.optimise_steps,
                "seconds": round(time.perf_counter() - started, 1),
                "image": _data_uri(_jpeg(pixels[0].cpu()), "image/jpeg")}

    def background_model(self):
        """The background worker's copy of the model, made on the interactive worker (so that no hook or
        temporary change of a running job is copied) the first time it is needed."""
        with self._copy_lock:
            if self._copy is None:
                loaded = self.loaded
                self._copy = self.interactive.submit(
                    None, lambda: dataclasses.replace(loaded, model=copy.deepcopy(loaded.model)),
                    "copying the model for long jobs").result()
            return self._copy

    # --------------------------------------------------------------------------------- feature space
    def projection_job(self, space: str, method: str) -> Future:
        """Every photo in 2-D: PCA or t-SNE of the penultimate features (``space="features"``) or of the pixels."""
        from deepscope.features import PROJECTIONS

        if space not in ("features", "pixels"):
            raise DeepscopeError(f"space must be features or pixels, got {space[:40]!r}.")
        if method not in PROJECTIONS:
            raise DeepscopeError(f"projection must be one of {', '.join(PROJECTIONS)}, got {method[:40]!r}."
                                 f"{did_you_mean(method, PROJECTIONS)}")
        photos = tuple(photo.id for photo in self.photos.list())
        return self.interactive.submit(("projection", space, method, photos), lambda: self._projection(space, method),
                                       f"{method} of the {space}", _size_of)

    def _banks(self):
        """The feature bank and the pixel bank of every photo (cached while the photos stay the same)."""
        from deepscope.features import extract_features, pixel_bank

        photos = tuple(photo.id for photo in self.photos.list())
        key = ("banks", photos)
        banks = self.cache.get(key)
        if banks is None:
            images = self.photos.image_set()
            cache = self.settings.feature_cache
            features = extract_features(self.loaded, images, batch_size=self.settings.batch_size, cache=cache)
            pixels = pixel_bank(images, self.loaded.preprocess, size=min(64, self.loaded.preprocess.input_size), batch_size=self.settings.batch_size,
                                cache=cache)
            banks = (features, pixels)
            self.cache.put(key, banks, _size_of(features.features) + _size_of(pixels.features))
        return banks

    def _projection(self, space: str, method: str) -> dict:
        from deepscope.features import project

        features, pixels = self._banks()
        bank = features if space == "features" else pixels
        projection = project(bank, method, seed=0)
        points = projection.points
        low, high = points.amin(0), points.amax(0)
        scaled = (points - low) / (high - low).clamp_min(1e-12)
        by_path = self.photos.by_path()
        predicted = self._all_predictions()
        rows = []
        for (x, y), path in zip(scaled.tolist(), bank.paths):
            photo = by_path[Path(path)]
            rows.append({"photo": photo.id, "name": photo.name, "x": round(x, 5), "y": round(1 - y, 5),
                         "predicted": predicted.get(photo.id, "")})
        explained = (None if projection.explained_variance is None
                     else [round(float(v), 4) for v in projection.explained_variance])
        return {"space": space, "method": method, "layer": bank.layer, "dimensions": int(bank.features.shape[1]),
                "explained_variance": explained, "points": rows}

    def _all_predictions(self) -> dict[str, str]:
        """Top-1 class name of every photo (one batched pass over the photos not predicted yet)."""
        from deepscope.classify import classify

        result: dict[str, str] = {}
        missing = []
        for photo in self.photos.list():
            cached = self.cache.get(("predictions", photo.id))
            if cached is None:
                missing.append(photo)
            else:
                result[photo.id] = cached[0]["name"]
        if missing:
            by_path = {p.path: p for p in missing}
            subset = self.photos.image_set()
            keep = [i for i, path in enumerate(subset.paths) if path in by_path]
            done = classify(self.loaded, subset.subset(keep), topk=self.settings.top_k,
                            batch_size=self.settings.batch_size)
            names = self.loaded.classes.names
            for path, indices, probs in zip(done.paths, done.topk_indices.tolist(), done.topk_probs.tolist()):
                rows = [{"index": i, "name": names[i], "probability": round(p, 5)} for i, p in zip(indices, probs)]
                photo = by_path[path]
                self.cache.put(("predictions", photo.id), rows, _size_of(rows))
                result[photo.id] = rows[0]["name"]
        return result

    def neighbours_job(self, photo: Photo, k: int = 5) -> Future:
        """The ``k`` nearest photos to ``photo`` in feature space and in pixel space (cosine distance)."""
        if not 1 <= k <= 50:
            raise DeepscopeError(f"k must be between 1 and 50, got {k}.")
        photos = tuple(p.id for p in self.photos.list())
        return self.interactive.submit(("neighbours", photo.id, k, photos), lambda: self._neighbours(photo, k),
                                       f"neighbours of {photo.name}", _size_of)

    def _neighbours(self, photo: Photo, k: int) -> dict:
        from deepscope.features import nearest_neighbours

        by_path = self.photos.by_path()
        predicted = self._all_predictions()
        result = {"photo": photo.id, "name": photo.name}
        for space, bank in zip(("features", "pixels"), self._banks()):
            rows = [i for i, path in enumerate(bank.paths) if Path(path) == photo.path]
            if not rows:
                raise DeepscopeError(f"photo {photo.name!r} could not be read.")
            found = nearest_neighbours(bank, rows, min(k, len(bank) - 1))
            neighbours = [(by_path[Path(bank.paths[i])], d)
                          for i, d in zip(found.indices[0].tolist(), found.distances[0].tolist())]
            result[space] = [{"photo": other.id, "name": other.name, "distance": round(float(d), 4),
                              "predicted": predicted.get(other.id, "")} for other, d in neighbours]
            result[f"{space}_layer"] = bank.layer
        return result

    # --------------------------------------------------------------------------------- trust table
    def trust_status(self) -> dict:
        from deepscope.trust_table import TRUST_METRICS, format_row, table_columns

        run = self._trust
        shape = [dict.fromkeys(TRUST_METRICS), *(run.rows if run else [])]  # every row has the table's columns
        columns = [header for _, header, _ in table_columns(shape)]
        if run is None:
            return {"state": "idle", "methods": method_names(), "columns": columns, "rows": []}
        return {"state": run.state, "current": run.current, "done": len(run.rows), "total": len(run.methods),
                "methods": run.methods, "columns": columns, "rows": [format_row(row, shape) for row in run.rows],
                "notes": [f"{row['method']}: {row['error']}" for row in run.rows if row["error"]],
                "error": run.error, "photos": len(run.photos),
                "seconds": round(run.seconds if run.state in ("done", "failed") else time.monotonic() - run.started, 1),
                "settings": f"{self.settings.trust_steps} deletion/insertion steps, up to {self.settings.trust_mosaics} "
                            "pointing-game mosaics (class folders only), top-layer randomisation on 1 photo, "
                            "quick method settings as in the photo view"}

    def trust_job(self) -> dict:
        """Start the trust table of the photos (if it is not running or done for these photos); its status."""
        photos = tuple(photo.id for photo in self.photos.list())
        with self._small_lock:
            run = self._trust
            if run is None or (run.photos != photos and run.state in ("done", "failed")) or run.state == "failed":
                self._trust = TrustRun(photos, method_names())
                self.background.submit(None, lambda run=self._trust: self._run_trust(run), "trust table")
        return self.trust_status()

    def _run_trust(self, run: TrustRun) -> None:
        from deepscope.trust_table import evaluate_methods

        loaded = self.background_model()
        images = self.photos.image_set()
        images = images.subset([i for i, photo in enumerate(self.photos.list()) if photo.id in run.photos])
        run.state, run.started = "running", time.monotonic()
        labelled = any(folder is not None for folder in images.folders)
        try:
            for name in run.methods:
                run.current = name
                result = evaluate_methods(
                    loaded, images, [name], images_per_class=1 if labelled else len(images),
                    mosaics=self.settings.trust_mosaics, steps=self.settings.trust_steps, cascade_steps=1,
                    randomization_images=1, batch_size=self.settings.batch_size, seed=0,
                    method_options={name: self.settings.method_options.get(name, {})})
                run.rows.append(result[0].row())
        except Exception as error:
            run.state, run.error = "failed", str(error).splitlines()[0] if str(error) else type(error).__name__
        else:
            run.state = "done"
        finally:
            run.current = None
            run.seconds = time.monotonic() - run.started

    # --------------------------------------------------------------------------------- status
    def status(self) -> dict:
        ready = self._ready
        if ready is None or not ready.done():
            model = "loading"
        elif ready.exception() is not None:
            model = f"failed: {ready.exception()}"
        else:
            model = "ready"
        return {"model": model, "workers": [self.interactive.status(), self.background.status()],
                "memory_megabytes": resident_megabytes()}


def default_shape(model, layer: str, inputs: torch.Tensor) -> torch.Size:
    """The output shape of one layer for ``inputs``."""
    from deepscope.probe import Probe

    with Probe(model, [layer], detach=True) as probe, torch.inference_mode():
        probe(inputs)
        return probe.activations[layer].shape


def resident_megabytes() -> float | None:
    """This process's resident memory in MB (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)

