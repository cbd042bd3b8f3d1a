"""Attribution maps drawn over their images: one panel per image, a grid of images x methods.

Maps come straight from a method (``(N, C, H, W)`` or ``(N, 1, H, W)``, any scale) with the method's
:class:`~deepscope.maps.Display`; :func:`deepscope.maps.display_maps` turns them into what is coloured (the
same function the report and the metrics use). A signed map is drawn with a diverging colour map centred on
zero, a map of magnitudes with a sequential one; colour bars read in units of each map's 99.5th percentile
of |value|.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import torch
from matplotlib.figure import Figure

from deepscope.maps import Display, display_maps
from deepscope.render.common import DIVERGING_CMAP, SEQUENTIAL_CMAP, overlay, subplots, to_image_array


def _draw(ax, pixels: torch.Tensor, shown: torch.Tensor | None, signed: bool, title: str, alpha: float) -> None:
    """The photo, with ``shown`` (an (H, W) display map in [0, 1], or [-1, 1] when ``signed``) over it."""
    if shown is None:
        ax.imshow(to_image_array(pixels))
    else:
        ax.imshow(overlay(pixels, shown, alpha=alpha, signed=signed))
        norm = matplotlib.colors.Normalize(-1 if signed else float(shown.min()), 1)
        mappable = matplotlib.cm.ScalarMappable(norm, DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)
        bar = ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def attribution_panel(pixels: torch.Tensor, maps: Mapping[str, torch.Tensor], displays: Mapping[str, Display],
                      target_name: str = "", alpha: float = 0.5, image_title: str = "image") -> Figure:
    """One image and its maps side by side, each titled with the method's name and the target class.

    Parameters
    ----------
    pixels : (3, H, W) tensor in [0, 1]
        The image as shown (e.g. ``preprocess.denormalize(inputs)[i]``).
    maps : {method name: (1, C, H, W) raw map}
    displays : {method name: Display}
        How each method's maps are shown (``method.display``).
    target_name : str
        The explained class, shown under each method's name.
    """
    fig, axes = subplots(1, len(maps) + 1, figsize=(2.6 * (len(maps) + 1), 2.8), squeeze=False)
    _draw(axes[0, 0], pixels, None, False, image_title, alpha)
    size = tuple(pixels.shape[-2:])
    for ax, (name, raw) in zip(axes[0, 1:], maps.items()):
        display = displays[name]
        shown = display_maps(raw if raw.ndim == 4 else raw[None], display, size)[0]
        _draw(ax, pixels, shown, display.signed, f"{name}\n{target_name}" if target_name else name, alpha)
    fig.tight_layout()
    return fig


def attribution_grid(pixels: torch.Tensor, maps: Mapping[str, torch.Tensor], displays: Mapping[str, Display],
                     row_titles: Sequence[str] = (), target_names: Sequence[str] = (), alpha: float = 0.5) -> Figure:
    """A grid of images (rows) x methods (columns), as in the lecture's slides.

    Parameters
    ----------
    pixels : (N, 3, H, W) tensor in [0, 1]
    maps : {method name: (N, C, H, W) raw maps}
    displays : {method name: Display}
    row_titles, target_names : one per image (file name, explained class)
    """
    n, methods = pixels.shape[0], list(maps)
    fig, axes = subplots(n, len(methods) + 1, figsize=(2.3 * (len(methods) + 1), 2.4 * n), squeeze=False)
    size = tuple(pixels.shape[-2:])
    shown = {name: display_maps(maps[name], displays[name], size) for name in methods}
    for i in range(n):
        title = row_titles[i] if i < len(row_titles) else f"image {i}"
        if i < len(target_names):
            title = f"{title}\n{target_names[i]}"
        _draw(axes[i, 0], pixels[i], None, False, title, alpha)
        for ax, name in zip(axes[i, 1:], methods):
            _draw(ax, pixels[i], shown[name][i], displays[name].signed, name if i == 0 else "", alpha)
    fig.tight_layout()
    return fig
