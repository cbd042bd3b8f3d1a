"""Maps in notebooks: :func:`explain` returns an :class:`Explanation` that Jupyter shows by itself, and
:func:`show` draws images x methods as one figure.

An :class:`Explanation` holds the photos as the model saw them and each method's raw maps; Jupyter shows it
as HTML (each map as the report's transparent heatmap layer over its photo, with the colour scales) or, in a
front end without HTML, as a PNG figure. :func:`show` returns a matplotlib figure made without pyplot
(:func:`deepscope.render.attribution.attribution_grid`), which Jupyter shows as PNG; it never touches
pyplot's state or matplotlib's backend.

Example
-------
>>> from deepscope.models.zoo import load_model
>>> from deepscope.notebook import explain, show
>>> loaded = load_model("default")
>>> explain(loaded, "cat.jpg", ["gradcam", "ig"], target="tabby")     # displays itself
>>> figure = show(loaded, ["cat.jpg", "dog.jpg"], ["gradient", "gradcam"])
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from deepscope.catalogue import build_method, get_method
from deepscope.errors import DeepscopeError, UnsupportedModelError
from deepscope.maps import Display

#: the methods explained when none are named: one of each family, all cheap
DEFAULT_METHODS = ("gradcam", "gradient", "ig")


@dataclass
class Explanation:
    """Maps of several methods for a few photos.

    Attributes
    ----------
    pixels : (N, 3, H, W) tensor
        The photos as the model saw them (resized, centre-cropped), in [0, 1], on the CPU.
    maps : {method: (N, C, H, W) tensor}
        Each method's raw maps (``method.attribute``), on the CPU.
    displays : {method: Display}
        How each method's maps are shown (:func:`deepscope.maps.display_maps`).
    targets, target_names : list
        The class each photo's maps explain.
    titles : list of str
        A name per photo (its file name).
    notes : {method: str}
        Methods that do not apply to this model, and why.
    """

    pixels: torch.Tensor
    maps: dict[str, torch.Tensor]
    displays: dict[str, Display]
    targets: list[int]
    target_names: list[str]
    titles: list[str]
    notes: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Explanation({len(self.titles)} photo(s) x {len(self.maps)} method(s): {', '.join(self.maps)}"
                + (f"; not applicable: {', '.join(self.notes)}" if self.notes else "") + ")")

    def figure(self, alpha: float = 0.5):
        """A figure of photos (rows) x methods (columns), with colour bars."""
        from deepscope.render.attribution import attribution_grid

        if not self.maps:
            raise DeepscopeError(f"no method applies to this model: {'; '.join(self.notes.values())}")
        return attribution_grid(self.pixels, self.maps, self.displays, self.titles, self.target_names, alpha=alpha)

    def _repr_png_(self) -> bytes:
        from deepscope.render.common import figure_png_bytes

        return figure_png_bytes(self.figure())

    def _repr_html_(self) -> str:
        from deepscope.maps import display_maps
        from deepscope.render.report import colour_scale_uri, heatmap_layer_uri, photo_uri

        size = tuple(self.pixels.shape[-2:])
        shown = {name: display_maps(maps, self.displays[name], size) for name, maps in self.maps.items()}
        cell = "display:inline-block;margin:0 8px 8px 0;vertical-align:top;font:12px sans-serif;text-align:center"
        stack = "position:relative;width:180px;height:180px"
        layer = "position:absolute;left:0;top:0;width:180px;height:180px"
        rows = []
        for i, title in enumerate(self.titles):
            photo = photo_uri(self.pixels[i])
            cells = [f'<div style="{cell}"><img src="{photo}" style="width:180px;height:180px" alt=""><br>'
                     f"{html.escape(title)}<br><b>{html.escape(self.target_names[i])}</b></div>"]
            for name, maps in shown.items():
                heat = heatmap_layer_uri(maps[i], self.displays[name].signed)
                cells.append(f'<div style="{cell}"><div style="{stack}"><img src="{photo}" style="{layer}" alt="">'
                             f'<img src="{heat}" style="{layer};opacity:0.7" alt="{html.escape(name)} map"></div>'
                             f"{html.escape(name)}</div>")
            rows.append("<div>" + "".join(cells) + "</div>")
        scales = (f'<div style="font:11px sans-serif;color:#555">low <img src="{colour_scale_uri(False)}" alt=""> high'
                  f' &nbsp; negative <img src="{colour_scale_uri(True)}" alt=""> positive</div>')
        notes = "".join(f'<div style="font:12px sans-serif;color:#8a5a00">{html.escape(name)}: '
                        f"{html.escape(note)}</div>" for name, note in self.notes.items())
        return f'<div class="deepscope-explanation">{"".join(rows)}{scales}{notes}</div>'


def _pixels(loaded, image) -> tuple[torch.Tensor, str]:
    """A photo (a path or a PIL image) as the model sees it, in [0, 1], and its name."""
    from deepscope.images import load_image, to_rgb

    if isinstance(image, Image.Image):
        return loaded.preprocess.crop(to_rgb(image)), "image"
    if isinstance(image, (str, Path)):
        return loaded.preprocess.crop(load_image(image)), Path(image).name
    raise DeepscopeError(f"images must be file paths or PIL images, got {type(image).__name__}.")


def explain(loaded, images, methods: str | Sequence[str] = DEFAULT_METHODS, *, target: Any = None,
            layer: str | None = None, options: Mapping[str, Mapping[str, Any]] | None = None) -> Explanation:
    """Maps of ``methods`` (catalogue names) for ``images``, as an :class:`Explanation` that displays itself.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`deepscope.models.zoo.load_model`; the model is left as it was.
    images : path, PIL image, or a list of them
    methods : str or list of str
        ``"gradcam,ig"`` or ``["gradcam", "ig"]``.
    target : None, int, str, or a list with one per image
        The class to explain: None for each photo's predicted class, a class index, or a class name.
    layer : str, optional
        The layer the CAM methods weight (others ignore it).
    options : {method: {option: value}}, optional
        Options of single methods, checked by the catalogue (e.g. ``{"ig": {"steps": 16}}``).
    """
    from deepscope.catalogue import parse_methods
    from deepscope.probe import model_device

    names = parse_methods(methods, "methods")
    options = dict(options or {})
    for name, chosen in options.items():
        get_method(name).check_options(chosen)
    items = images if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise DeepscopeError("images is empty; give at least one photo.")
    loaded_pixels = [_pixels(loaded, image) for image in items]
    pixels = torch.stack([p for p, _ in loaded_pixels])
    titles = [title for _, title in loaded_pixels]
    device = model_device(loaded.model)
    inputs = loaded.preprocess.normalize(pixels).to(device)
    targets = _targets(loaded, inputs, target, len(items))
    maps, displays, notes = {}, {}, {}
    for name in names:
        entry = get_method(name)
        chosen = {**entry.offered(layer=layer), **options.get(name, {})}
        try:
            method = build_method(name, loaded.model, preprocess=loaded.preprocess, **chosen)
            maps[name] = method.attribute(inputs, target=torch.tensor(targets, device=device)).detach().cpu()
        except UnsupportedModelError as error:
            notes[name] = f"not applicable: {error}"
            continue
        displays[name] = method.display
    return Explanation(pixels, maps, displays, targets, [loaded.classes.names[t] for t in targets], titles, notes)


def _targets(loaded, inputs: torch.Tensor, target: Any, count: int) -> list[int]:
    """One class index per image (None: the predicted classes)."""
    from deepscope.probe import batched_forward

    if target is None:
        return batched_forward(loaded.model, inputs).argmax(dim=1).tolist()
    chosen = list(target) if isinstance(target, (list, tuple)) else [target] * count
    if len(chosen) != count:
        raise DeepscopeError(f"target: got {len(chosen)} classes for {count} image(s); give one per image or one for all.")
    return [loaded.classes.index(t) for t in chosen]


def show(loaded, images, methods: str | Sequence[str] = DEFAULT_METHODS, **kwargs):
    """A figure of ``images`` (rows) x ``methods`` (columns), each map over its photo with a colour bar.

    Takes the arguments of :func:`explain`; returns a :class:`matplotlib.figure.Figure` that Jupyter shows
    as PNG (``figure.savefig(path)`` writes it).
    """
    return explain(loaded, images, methods, **kwargs).figure()
