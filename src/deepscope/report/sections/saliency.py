"""Section "saliency": every registered attribution method over sample images of each class.

The methods are those of the catalogue (:data:`deepscope.catalogue.METHODS`) when the report runs, so a
method added there appears without changes here. The costly ones (many passes per map) are computed on
their :class:`~deepscope.report.base.CostShare` of the samples; the other cards say so. A method that raises
:class:`~deepscope.errors.UnsupportedModelError` for this model is listed as not applicable, with
its reason. Maps are cached per (model, method and options, image content, target).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from deepscope.cache import expect, expect_keys, expect_tensor, file_digest, make_key
from deepscope.catalogue import ATTRIBUTION_CHUNK, COSTS, get_method, method_names
from deepscope.errors import DeepscopeError, UnsupportedModelError
from deepscope.maps import Display, display_maps
from deepscope.images import evenly_spaced
from deepscope.render.report import heatmap_layer_uri, photo_uri
from deepscope.report.base import MapLayer, ReportContext, SaliencyCard, Section, Table, cost_share


def saliency_section(ctx: ReportContext) -> Section:
    settings = ctx.settings
    samples = ctx.samples()
    pixels = ctx.pixels(samples)
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
    legend = Table(["method", "what the map shows", "paper", "settings here", "photos"],
                   [[name, get_method(name).summary, get_method(name).paper, settings_used[name],
                     _shown(layers[name])] for name in names])
    return Section("saliency", "Saliency gallery",
                   "Which pixels drive the prediction: each map explains the predicted class of its image "
                   "(gradient saliency after Simonyan, Vedaldi & Zisserman 2014, and the methods listed below). "
                   "Pick a method above each image; the slider sets how strongly maps cover the photos.",
                   [legend, *cards])


def gallery_methods() -> list[str]:
    """The catalogue's methods, without the controls."""
    return method_names(controls=False)


def _shown(layers: list[MapLayer]) -> str:
    """"all" or "k of n": the sample photos with a map of the method."""
    count = sum(layer.src is not None for layer in layers)
    return "all" if count == len(layers) else f"{count} of {len(layers)}"


def _method_layers(ctx: ReportContext, name: str, samples: list[int], pixels: torch.Tensor,
                   targets: torch.Tensor, bar) -> tuple[list[MapLayer], str]:
    """One layer per sample image for method ``name`` (from an explain job in the store, the cache, computed,
    or a note: not applicable, or not among the method's share of the photos) and the method's settings."""
    job = ctx.stored_job("explain", method=name, target="pred", size=int(pixels.shape[-1]))
    if job is not None:
        display = Display(job.summary["reduction"], job.summary["signed"])
        maps = display_maps(torch.from_numpy(job.rows("maps", samples).astype("float32")), display)
        bar.update(len(samples))
        options = ", ".join(f"{k}={v}" for k, v in job.settings["options"]) or "defaults"
        return ([MapLayer(name, src=heatmap_layer_uri(m, display.signed), signed=display.signed) for m in maps],
                f"{options} (the store's job {job.path.name})")
    overrides = ctx.method_options(name)
    try:
        method = ctx.build_method(name)
    except UnsupportedModelError as error:
        bar.update(len(samples))
        return [MapLayer(name, note=f"not applicable: {error}") for _ in samples], ""
    shown = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
    size = tuple(pixels.shape[-2:])
    keys = [make_key("saliency", ctx.model_key, name, repr(method), file_digest(ctx.images.paths[i]), int(target), size)
            for i, target in zip(samples, targets)]
    share = evenly_spaced(len(samples), cost_share(name).gallery)
    shared = set(share)
    stored = [ctx.cache.load("maps", keys[row], lambda entry: _read_map(entry, size)) if row in shared else None
              for row in range(len(samples))]
    todo = [row for row in share if stored[row] is None]
    bar.update(len(samples) - len(todo))
    for start in range(0, len(todo), ATTRIBUTION_CHUNK):
        rows = todo[start:start + ATTRIBUTION_CHUNK]
        inputs = ctx.loaded.preprocess.normalize(pixels[rows]).to(ctx.device)
        try:
            raw = method.attribute(inputs, target=targets[rows].to(ctx.device))
        except UnsupportedModelError as error:
            bar.update(len(todo) - start)
            return [MapLayer(name, note=f"not applicable: {error}") for _ in samples], shown
        except DeepscopeError as error:
            bar.update(len(todo) - start)
            return [MapLayer(name, note=f"failed: {error}") for _ in samples], shown
        maps = display_maps(raw, method.display, tuple(pixels.shape[-2:])).cpu()
        for j, row in enumerate(rows):
            stored[row] = {"map": maps[j].to(torch.float16), "signed": method.display.signed}
            ctx.cache.save("maps", keys[row], stored[row])
        bar.update(len(rows))
    skipped = MapLayer(name, note=f"not computed for this photo: a {name} map costs {COSTS[get_method(name).cost]}, "
                                  f"so the report computes it for {len(share)} of the {len(samples)} photos; "
                                  "`deepscope explain` or the explorer (`deepscope serve`) computes it for any photo")
    return [MapLayer(name, src=heatmap_layer_uri(entry["map"].float(), entry["signed"]), signed=entry["signed"])
            if entry is not None else skipped for entry in stored], shown


def _read_map(entry, size: tuple[int, int]) -> dict:
    """A cached map: ``{"map": (H, W) float16 tensor of the photo's size, "signed": bool}``."""
    expect_keys(entry, ("map", "signed"), "a map entry")
    expect(tuple(expect_tensor(entry["map"], torch.float16, 2, "map").shape) == size, f"the map should be {size}")
    expect(isinstance(entry["signed"], bool), "signed should be a bool")
    return entry
