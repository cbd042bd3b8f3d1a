"""The report page: pictures as data URIs, heatmaps as transparent layers, and the HTML itself.

Everything is embedded (images as base64 data URIs, CSS and JavaScript inline), so the page makes
no network request and works from a ``file://`` URL. Jinja2 escapes every value written into the
page (file names, class names, model names, error messages).
"""

from __future__ import annotations

import base64
import io
from importlib import resources

import jinja2
import matplotlib
import numpy as np
import torch
from PIL import Image

from deepscope.render.common import DIVERGING_CMAP, SEQUENTIAL_CMAP, figure_png_bytes, to_image_array

#: a heatmap's opacity over its photo is ``clip(GAIN * |value|, 0, 1) ** GAMMA`` (the page's slider scales it):
#: weak evidence stays see-through, so the photo shows where a map is near zero
LAYER_ALPHA_GAIN = 1.4
LAYER_ALPHA_GAMMA = 1.2


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def photo_uri(pixels: torch.Tensor, quality: int = 88) -> str:
    """A (3, H, W) [0, 1] tensor as a JPEG data URI."""
    buffer = io.BytesIO()
    Image.fromarray(to_image_array(pixels)).save(buffer, format="JPEG", quality=quality)
    return data_uri(buffer.getvalue(), "image/jpeg")


def png_uri(array: np.ndarray) -> str:
    """A uint8 (H, W[, 3|4]) array as a PNG data URI."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return data_uri(buffer.getvalue(), "image/png")


def figure_uri(fig) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    return data_uri(figure_png_bytes(fig), "image/png")


def png_tensor(fig) -> torch.Tensor:
    """A matplotlib figure as PNG bytes in a uint8 tensor (storable in the cache); the figure is closed."""
    return torch.frombuffer(bytearray(figure_png_bytes(fig)), dtype=torch.uint8)


def heatmap_layer_uri(heatmap: torch.Tensor, signed: bool = False) -> str:
    """An (H, W) map as a transparent palette PNG to lay over its photo.

    ``heatmap`` is in [0, 1] (magnitudes: sequential colour map) or [-1, 1] (``signed``: diverging map
    centred on zero). Colour and opacity both follow the value; one palette entry per level keeps the
    file small.
    """
    values = heatmap.detach().float().cpu().clamp(-1 if signed else 0, 1).numpy()
    levels = np.linspace(-1, 1, 256) if signed else np.linspace(0, 1, 256)
    colours = matplotlib.colormaps[DIVERGING_CMAP if signed else SEQUENTIAL_CMAP](0.5 + 0.5 * levels if signed else levels)
    alpha = np.clip(LAYER_ALPHA_GAIN * np.abs(levels), 0, 1) ** LAYER_ALPHA_GAMMA
    index = np.rint((values - levels[0]) / (levels[-1] - levels[0]) * 255).astype(np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette((colours[:, :3] * 255 + 0.5).astype(np.uint8).ravel().tolist())
    image.info["transparency"] = bytes((alpha * 255 + 0.5).astype(np.uint8).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True, transparency=image.info["transparency"])
    return data_uri(buffer.getvalue(), "image/png")


def colour_scale_uri(signed: bool, width: int = 160, height: int = 10) -> str:
    """A horizontal colour bar for the legend."""
    levels = np.linspace(-1, 1, width) if signed else np.linspace(0, 1, width)
    colours = matplotlib.colormaps[DIVERGING_CMAP if signed else SEQUENTIAL_CMAP](0.5 + 0.5 * levels if signed else levels)
    row = (colours[:, :3] * 255 + 0.5).astype(np.uint8)
    return png_uri(np.repeat(row[None], height, axis=0))


def _environment() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(
        lambda name: resources.files("deepscope.report").joinpath("templates", name).read_text(encoding="utf-8"))
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def render_page(**context) -> str:
    """The report page (``report.html.j2``) filled with ``context``; every value is escaped."""
    env = _environment()
    env.globals["colour_scale_uri"] = colour_scale_uri
    return env.get_template("report.html.j2").render(**context)
