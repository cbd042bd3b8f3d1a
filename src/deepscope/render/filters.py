"""Filter grids: a :class:`~deepscope.filters.FilterView` as a figure.

Tiles are enlarged by an integer factor with nearest-neighbour repetition and drawn one figure pixel per
image pixel, so a 3x3 filter shows nine crisp squares instead of a blur.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.figure import Figure

from deepscope.filters import FilterView
from deepscope.render.common import DIVERGING_CMAP, DisplayFigure, subplots

#: a tile is enlarged to about this many pixels per side
TILE_PIXELS = 40
GAP = 3
BACKGROUND = 1.0  # white gaps between tiles
DPI = 100


def tile_mosaic(tiles: np.ndarray, rows: int, cols: int, scale: int, gap: int = GAP) -> np.ndarray:
    """Arrange ``(n, C, h, w)`` tiles (row-major) in a ``rows x cols`` grid; ``(H, W, C)`` array.

    Each tile is repeated ``scale`` times along both axes (nearest neighbour); empty cells and gaps are white.
    """
    n, channels, h, w = tiles.shape
    big = tiles.repeat(scale, axis=2).repeat(scale, axis=3).transpose(0, 2, 3, 1)
    th, tw = h * scale, w * scale
    mosaic = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, channels), BACKGROUND, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = gap + r * (th + gap), gap + c * (tw + gap)
        mosaic[top:top + th, left:left + tw] = big[i]
    return mosaic


def filter_grid_figure(view: FilterView, *, title: str | None = None, tile_pixels: int = TILE_PIXELS):
    """The filters of ``view`` as a matplotlib figure (colour tiles, grey tiles, or a heatmap for 1x1).

    Parameters
    ----------
    view : FilterView
        From :func:`deepscope.filters.filter_view`.
    title : str, optional
        Figure title; default: the view's description.
    tile_pixels : int
        Approximate side of an enlarged tile in pixels.
    """
    title = view.description if title is None else title
    if view.kind == "pointwise":
        return _matrix_figure(view, title)
    tiles = view.tiles.detach().float().cpu().numpy()
    scale = max(1, round(tile_pixels / max(tiles.shape[-2:])))
    if view.kind == "channels":
        rows, cols = tiles.shape[0], tiles.shape[1]
        tiles = tiles.reshape(rows * cols, 1, *tiles.shape[-2:])
    else:
        cols = max(1, math.ceil(math.sqrt(tiles.shape[0] * 1.5)))  # a little wider than tall
        rows = math.ceil(tiles.shape[0] / cols)
    mosaic = tile_mosaic(tiles, rows, cols, scale)
    height, width = mosaic.shape[:2]
    wrap = max(60, int(width / 7))
    fig = DisplayFigure(figsize=(max(width, 420) / DPI, (height + 70) / DPI), dpi=DPI)
    ax = fig.add_axes([0, 0, 1, height / (height + 70)])
    image = mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(_wrap(title, wrap), fontsize=8, y=1.0, va="top")
    if view.kind == "channels":
        step = tiles.shape[-1] * scale + GAP
        ax.set_axis_on()
        ax.set_xticks([GAP + step * c + step / 2 for c in range(cols)], [str(i) for i in view.inputs.tolist()], fontsize=6)
        ax.set_yticks([GAP + step * r + step / 2 for r in range(rows)], [str(i) for i in view.outputs.tolist()], fontsize=6)
        ax.set_xlabel("input channel", fontsize=7)
        ax.set_ylabel("output channel", fontsize=7)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig


def _matrix_figure(view: FilterView, title: str):
    matrix = view.tiles.detach().float().cpu().numpy()
    limit = float(np.abs(matrix).max()) or 1.0
    rows, cols = matrix.shape
    fig, ax = subplots(figsize=(min(12, 2.5 + cols * 0.06), min(12, 1.5 + rows * 0.06)), dpi=DPI)
    shown = ax.imshow(matrix, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
    for setter, labels, count in ((ax.set_xticks, view.inputs, cols), (ax.set_yticks, view.outputs, rows)):
        positions = np.unique(np.linspace(0, count - 1, min(count, 9)).round().astype(int))
        setter(positions, [str(labels[p].item()) for p in positions], fontsize=7)
    ax.set_xlabel("input channel")
    ax.set_ylabel("output channel")
    fig.colorbar(shown, ax=ax, fraction=0.04, label="weight")
    ax.set_title(_wrap(title, 70), fontsize=8)
    return fig


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))
