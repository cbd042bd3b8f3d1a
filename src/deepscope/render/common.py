"""Shared rendering helpers: figures, tensors to pictures, heatmap overlays, atomic figure saving.

Figures are :class:`matplotlib.figure.Figure` objects made without pyplot, so rendering never selects or
changes matplotlib's backend and leaves no figure open in pyplot's list (a notebook user's setup stays as
it was); saving them uses matplotlib's Agg canvas for the file format. They are :class:`DisplayFigure` objects,
which Jupyter shows as PNG (without pyplot, IPython knows no way to show a figure).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from deepscope.fileio import atomic_path

#: colour maps: magnitudes get a sequential map, signed maps a diverging one centred on zero
SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"


class DisplayFigure(Figure):
    """A matplotlib figure that Jupyter and IPython show as PNG (``_repr_png_``), made without pyplot."""

    def _repr_png_(self) -> bytes:
        return figure_png_bytes(self)


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, dpi=None, layout=None, **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot (see the module docstring)."""
    figure = DisplayFigure(figsize=figsize, dpi=dpi, layout=layout)
    return figure, figure.subplots(nrows, ncols, **kwargs)


def to_image_array(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (H, W) tensor in [0, 1] -> (H, W, 3) or (H, W) uint8 array (clamped)."""
    array = pixels.detach().float().clamp(0, 1).cpu().numpy()
    if array.ndim == 3:
        array = array.transpose(1, 2, 0)
    return (array * 255 + 0.5).astype(np.uint8)


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [0, 1] -> PIL RGB image."""
    return Image.fromarray(to_image_array(pixels))


def colorize(shown: torch.Tensor, signed: bool = False, cmap: str | None = None) -> np.ndarray:
    """A display map (:func:`deepscope.maps.display_maps`: [0, 1], or [-1, 1] when ``signed``) -> (H, W, 4)
    RGBA floats; a signed map's zero is the centre of the diverging colour map."""
    values = shown.detach().float().cpu().numpy()
    normed = 0.5 + 0.5 * np.clip(values, -1, 1) if signed else np.clip(values, 0, 1)
    return matplotlib.colormaps[cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)](normed)


def overlay(pixels: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.5, signed: bool = False) -> np.ndarray:
    """Blend a colourised (h, w) display map (resized to the image) over (3, H, W) pixels; (H, W, 3) uint8."""
    if heatmap.shape[-2:] != pixels.shape[-2:]:
        heatmap = torch.nn.functional.interpolate(heatmap[None, None].float(), size=pixels.shape[-2:],
                                                  mode="bilinear", align_corners=False)[0, 0]
    base = pixels.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
    color = colorize(heatmap, signed)[..., :3]
    return ((1 - alpha) * base * 255 + alpha * color * 255 + 0.5).clip(0, 255).astype(np.uint8)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def figure_png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of ``fig`` (for embedding in HTML)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, bbox_inches="tight", format="png")
    return buffer.getvalue()


def save_array_png(array: np.ndarray, path: str | Path) -> Path:
    """Save a uint8 (H, W[, 3]) array as PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)
