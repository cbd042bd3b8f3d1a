"""Figures of neurons and optimised images: top-activating crops with guided backprop, class models, Deep Dream."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from deepscope.maps import Display, display_maps
from deepscope.render.common import subplots, to_image_array


def gradient_as_image(grad: torch.Tensor) -> torch.Tensor:
    """A signed (3, h, w) gradient as [0, 1] pixels: grey is zero, black/white the display scale's +-1
    (:func:`deepscope.maps.display_maps`, channels kept)."""
    return 0.5 + 0.5 * display_maps(grad[None], Display(reduction=None, signed=True))[0]


def neuron_figure(view, title: str | None = None) -> Figure:
    """Per channel of a :class:`deepscope.neurons.NeuronView`: a row of top crops over a row of their guided backprop."""
    rows, cols = 2 * len(view.channels), max(len(row) for row in view.crops)
    fig, axes = subplots(rows, cols, figsize=(1.25 * cols, 1.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, channel in enumerate(view.channels):
        for j, (crop, grad) in enumerate(zip(view.crops[i], view.guided[i])):
            axes[2 * i, j].imshow(to_image_array(crop))
            axes[2 * i, j].set_title(f"{float(view.top.values[i, j]):.2f}", fontsize=7)
            axes[2 * i + 1, j].imshow(to_image_array(gradient_as_image(grad)))
        axes[2 * i, 0].text(-0.15, 0.0, f"channel {channel}", transform=axes[2 * i, 0].transAxes,
                            rotation=90, ha="right", va="center", fontsize=9)
    field = view.field
    fig.suptitle(title or f"{view.layer}: top-{cols} crops (receptive field {field.size} px, stride {field.stride}, "
                 f"{field.method}) and {view.gradient_method} of each neuron", fontsize=9)
    fig.tight_layout()
    return fig


def image_grid_figure(images: torch.Tensor, titles: Sequence[str] = (), suptitle: str | None = None,
                      columns: int | None = None) -> Figure:
    """(N, 3, H, W) [0, 1] images in a grid with one title each (class models, dreams)."""
    n = images.shape[0]
    columns = columns or min(n, 6)
    rows = -(-n // columns)
    fig, axes = subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(to_image_array(images[i]))
        if i < len(titles):
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig
