"""Shared rendering helpers: tensors to pictures, heatmap overlays, atomic figure saving."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; figures are written to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from deepscope.fileio import atomic_path  # noqa: E402

#: colour maps: magnitudes get a sequential map, signed maps a diverging one centred on zero
SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"


def to_image_array(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (H, W) tensor in [0, 1] -> (H, W, 3) or (H, W) uint8 array (clamped)."""
    array = pixels.detach().float().clamp(0, 1).cpu().numpy()
    if array.ndim == 3:
        array = array.transpose(1, 2, 0)
    return (array * 255 + 0.5).astype(np.uint8)


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [0, 1] -> PIL RGB image."""
    return Image.fromarray(to_image_array(pixels))


def colorize(heatmap: torch.Tensor, signed: bool = False, cmap: str | None = None) -> np.ndarray:
    """(H, W) map -> (H, W, 4) float RGBA array in [0, 1].

    Magnitudes are scaled by their max; signed maps by their max |value|, with zero at the centre of a
    diverging map.
    """
    values = heatmap.detach().float().cpu().numpy()
    if signed:
        scale = np.abs(values).max() or 1.0
        normed = 0.5 + 0.5 * values / scale
    else:
        low, high = values.min(), values.max()
        normed = (values - low) / ((high - low) or 1.0)
    return matplotlib.colormaps[cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP)](normed)


def overlay(pixels: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.5, signed: bool = False) -> np.ndarray:
    """Blend a colourised (h, w) heatmap (resized to the image) over (3, H, W) pixels; (H, W, 3) uint8."""
    if heatmap.shape[-2:] != pixels.shape[-2:]:
        heatmap = torch.nn.functional.interpolate(heatmap[None, None].float(), size=pixels.shape[-2:],
                                                  mode="bilinear", align_corners=False)[0, 0]
    base = pixels.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
    color = colorize(heatmap, signed)[..., :3]
    return ((1 - alpha) * base * 255 + alpha * color * 255 + 0.5).clip(0, 255).astype(np.uint8)


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` atomically (format from the suffix) and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def figure_png_bytes(fig: "plt.Figure", dpi: int = 110) -> bytes:
    """PNG bytes of ``fig`` (for embedding in HTML), closing it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def save_array_png(array: np.ndarray, path: str | Path) -> Path:
    """Save a uint8 (H, W[, 3]) array as PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)
