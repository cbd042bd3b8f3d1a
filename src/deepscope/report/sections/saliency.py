"""Section "saliency": every registered attribution method over sample images of each class.

The methods are those of :data:`deepscope.attribution.registry.METHODS` when the report runs, so a
newly registered method appears without changes here. A method that raises
:class:`~deepscope.errors.UnsupportedModelError` for this model is listed as not applicable, with
its reason. Maps are cached per (model, method and options, image content, target).
"""

from __future__ import annotations

import inspect

import torch
from tqdm.auto import tqdm

from deepscope.attribution.registry import METHODS, build_method
from deepscope.errors import DeepscopeError, UnsupportedModelError
from deepscope.images import load_image
from deepscope.maps import normalize, reduce_channels, upsample
from deepscope.render.report import heatmap_layer_uri, photo_uri
from deepscope.report.base import MapLayer, ReportContext, SaliencyCard, Section, Table
from deepscope.report.cache import make_key

#: images per attribution call: bounds the memory of a backward pass (a method batches its own work inside)
CHUNK = 8
#: a map counts as signed when its most negative value reaches this share of its largest |value|
SIGNED_SHARE = 0.05


def saliency_section(ctx: ReportContext) -> Section:
    settings, loaded = ctx.settings, ctx.loaded
    samples = ctx.samples()
    pixels = torch.stack([loaded.preprocess.crop(load_image(ctx.images.paths[i])) for i in samples])
    predictions = [ctx.prediction(i) for i in samples]
    targets = torch.tensor([c for c, _ in predictions])
    names = gallery_methods()
    layers: dict[str, list[MapLayer]] = {}
    settings_used: dict[str, str] = {}
    bar = tqdm(total=len(names) * len(samples), desc="saliency", unit="map", disable=not settings.progress, leave=False)
    with bar:
        for name in names:
            layers[name], settings_used[name] = _method_layers(ctx, name, samples, pixels, targets, bar)
    cards = []
    for row, i in enumerate(samples):
        path, folder, label = ctx.images.paths[i], ctx.images.folders[i], ctx.images.labels[i]
        cls, prob = predictions[row]
        details = []
        if label is not None:
            details.append(f"true class: {ctx.class_name(label)}" + (" (predicted correctly)" if label == cls else " (misclassified)"))
        elif folder is not None:
            details.append(f"folder: {folder}")
        cards.append(SaliencyCard(title=path.name, photo=photo_uri(pixels[row]),
                                  target=f"{ctx.class_name(cls)} ({prob:.0%})", details=details,
                                  layers=[layers[name][row] for name in names]))
    legend = Table(["method", "what the map shows", "paper", "settings here"],
                   [[name, METHODS[name].summary, METHODS[name].paper, settings_used[name]] for name in names])
    return Section("saliency", "Saliency gallery",
                   "Which pixels drive the prediction: each map explains the predicted class of its image "
                   "(gradient saliency after Simonyan, Vedaldi & Zisserman 2014, and the methods listed below). "
                   "Pick a method above each image; the slider sets how strongly maps cover the photos.",
                   [legend, *cards])


def gallery_methods() -> list[str]:
    """The registered methods, without the controls."""
    return [name for name, info in METHODS.items() if not info.control]


def _method_layers(ctx: ReportContext, name: str, samples: list[int], pixels: torch.Tensor,
                   targets: torch.Tensor, bar) -> tuple[list[MapLayer], str]:
    """One layer per sample image for method ``name`` (from the cache, computed, or a not-applicable
    note) and the method's settings."""
    settings = ctx.settings
    overrides = ctx.method_options(name)
    options = {"layer": None, "batch_size": settings.batch_size, "seed": settings.seed, "progress": False, **overrides}
    try:
        method = build_method(name, ctx.loaded.model, **options)
    except UnsupportedModelError as error:
        bar.update(len(samples))
        return [MapLayer(name, note=f"not applicable: {error}") for _ in samples], ""
    accepted = inspect.signature(METHODS[name].build).parameters
    shown = ", ".join(f"{k}={v}" for k, v in overrides.items() if k in accepted) or "defaults"
    model_key = ctx.cache.model_digest(ctx.loaded)
    keys = [make_key("saliency", model_key, name, repr(method), ctx.cache.file_digest(ctx.images.paths[i]),
                     int(target), tuple(pixels.shape[-2:])) for i, target in zip(samples, targets)]
    stored = [ctx.cache.load("maps", key) for key in keys]
    todo = [row for row, entry in enumerate(stored) if entry is None]
    bar.update(len(samples) - len(todo))
    for start in range(0, len(todo), CHUNK):
        rows = todo[start:start + CHUNK]
        inputs = ctx.loaded.preprocess.normalize(pixels[rows]).to(ctx.device)
        try:
            raw = method.attribute(inputs, target=targets[rows].to(ctx.device))
        except UnsupportedModelError as error:
            bar.update(len(todo) - start)
            return [MapLayer(name, note=f"not applicable: {error}") for _ in samples], shown
        except DeepscopeError as error:
            bar.update(len(todo) - start)
            return [MapLayer(name, note=f"failed: {error}") for _ in samples], shown
        maps, signed = display_maps(raw, tuple(pixels.shape[-2:]))
        for j, row in enumerate(rows):
            stored[row] = {"map": maps[j].to(torch.float16), "signed": bool(signed[j])}
            ctx.cache.save("maps", keys[row], stored[row])
        bar.update(len(rows))
    return [MapLayer(name, src=heatmap_layer_uri(entry["map"].float(), entry["signed"]), signed=entry["signed"])
            for entry in stored], shown


def display_maps(raw: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw maps (N, C, h, w) -> display maps (N, H, W) in [-1, 1] and a (N,) bool "signed" flag.

    Per-channel maps are reduced to max |value| over channels (the lecture's saliency); spatial maps keep
    their sign. Each map is scaled by its 99th percentile of |value|, so a few extreme pixels do not wash
    the rest out.
    """
    maps = reduce_channels(raw, "abs-max") if raw.shape[1] > 1 else raw
    maps = upsample(maps.detach().float(), size)
    flat = maps.flatten(1)
    signed = flat.amin(1) < -SIGNED_SHARE * flat.abs().amax(1)
    scaled = normalize(maps, "percentile")[:, 0]
    return torch.where(signed.view(-1, 1, 1), scaled, scaled.clamp(min=0)).cpu(), signed.cpu()
