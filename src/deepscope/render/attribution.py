"""Attribution maps drawn over their images: one panel per image, a grid of images x methods.

Maps come straight from a method (``(N, C, H, W)`` or ``(N, 1, H, W)``, any scale). For display a
per-channel map is summed over channels (signed methods such as Integrated Gradients keep their
sign; for them the sum is what adds up to the score difference). A map with negative values is
drawn with a diverging colour map centred on zero, a map of magnitudes with a sequential one. Colours
are relative to each map's 99.5th percentile of |value| (colour bars read in those units).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import torch

from deepscope.maps import reduce_channels
from deepscope.render.common import DIVERGING_CMAP, SEQUENTIAL_CMAP, overlay, to_image_array


def display_map(maps: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(N, C, H, W) raw maps -> ((N, H, W) maps for display, whether they are signed)."""
    flat = reduce_channels(maps, "sum") if maps.shape[1] > 1 else maps
    flat = torch.nan_to_num(flat.detach().float())[:, 0]
    return flat, bool((flat < 0).any())


def display_scale(heatmap: torch.Tensor, signed: bool) -> torch.Tensor:
    """One (H, W) map scaled for colouring: divided by the 99.5th percentile of |map| and clipped, so a few
    extreme pixels (common in gradient maps) do not wash out the rest; [0, 1], or [-1, 1] when signed."""
    scale = torch.quantile(heatmap.abs().flatten(), 0.995).clamp_min(1e-12)
    return (heatmap / scale).clamp(-1 if signed else 0, 1)


def _draw(ax, pixels: torch.Tensor, heatmap: torch.Tensor | None, signed: bool, title: str, alpha: float) -> None:
    if heatmap is None:
        ax.imshow(to_image_array(pixels))
    else:
        scaled = display_scale(heatmap, signed)  # max 1 after clipping, as overlay's min..max stretch assumes
        ax.imshow(overlay(pixels, scaled, alpha=alpha, signed=signed))
        norm = matplotlib.colors.Normalize(-1 if signed else float(scaled.min()), 1)
        mappable = matplotlib.cm.ScalarMappable(norm, DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)
        bar = ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def attribution_panel(pixels: torch.Tensor, maps: Mapping[str, torch.Tensor], target_name: str = "",
                      alpha: float = 0.5, image_title: str = "image") -> plt.Figure:
    """One image and its maps side by side, each titled with the method's name and the target class.

    Parameters
    ----------
    pixels : (3, H, W) tensor in [0, 1]
        The image as shown (e.g. ``preprocess.denormalize(inputs)[i]``).
    maps : {method name: (C, H, W) or (1, C, H, W) map}
    target_name : str
        The explained class, shown under each method's name.
    """
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.6 * (len(maps) + 1), 2.8), squeeze=False)
    _draw(axes[0, 0], pixels, None, False, image_title, alpha)
    for ax, (name, one) in zip(axes[0, 1:], maps.items()):
        heatmap, signed = display_map(one if one.ndim == 4 else one[None])
        _draw(ax, pixels, heatmap[0], signed, f"{name}\n{target_name}" if target_name else name, alpha)
    fig.tight_layout()
    return fig


def attribution_grid(pixels: torch.Tensor, maps: Mapping[str, torch.Tensor], row_titles: Sequence[str] = (),
                     target_names: Sequence[str] = (), alpha: float = 0.5) -> plt.Figure:
    """A grid of images (rows) x methods (columns), as in the lecture's slides.

    Parameters
    ----------
    pixels : (N, 3, H, W) tensor in [0, 1]
    maps : {method name: (N, C, H, W) maps}
    row_titles, target_names : one per image (file name, explained class)
    """
    n, methods = pixels.shape[0], list(maps)
    fig, axes = plt.subplots(n, len(methods) + 1, figsize=(2.3 * (len(methods) + 1), 2.4 * n), squeeze=False)
    shown = {name: display_map(maps[name]) for name in methods}
    for i in range(n):
        title = row_titles[i] if i < len(row_titles) else f"image {i}"
        if i < len(target_names):
            title = f"{title}\n{target_names[i]}"
        _draw(axes[i, 0], pixels[i], None, False, title, alpha)
        for ax, name in zip(axes[i, 1:], methods):
            heatmap, signed = shown[name]
            _draw(ax, pixels[i], heatmap[i], signed, name if i == 0 else "", alpha)
    fig.tight_layout()
    return fig
