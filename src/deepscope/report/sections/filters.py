"""Section "filters": the first convolution's filters as colour tiles, and one intermediate layer."""

from __future__ import annotations

from deepscope.errors import UnsupportedModelError
from deepscope.filters import conv_layers, filter_view
from deepscope.probe import get_layer
from deepscope.render.filters import filter_grid_figure
from deepscope.render.report import figure_uri
from deepscope.report.base import Figure, Note, ReportContext, Section


def filters_section(ctx: ReportContext) -> Section:
    intro = ("What the first layer looks for: each tile is one filter of the first convolution, its weights "
             "drawn as colours (Krizhevsky et al. 2012; Zeiler & Fergus 2014); then the filters of a "
             "convolution halfway through the network.")
    model = ctx.loaded.model
    try:
        names = conv_layers(model)
        first = filter_view(model)
    except UnsupportedModelError as error:
        return Section("filters", "Filters", intro, [Note(f"not applicable: {error}")])
    items = [Figure(figure_uri(filter_grid_figure(first)), caption=first.description)]
    middle = intermediate_layer(model, names)
    if middle != first.layer:
        view = filter_view(model, middle)
        items.append(Figure(figure_uri(filter_grid_figure(view)), caption=view.description))
    return Section("filters", "Filters", intro, items)


def intermediate_layer(model, names: list[str]) -> str:
    """The convolution halfway through the model, preferring one with a spatial kernel (not 1x1)."""
    spatial = [name for name in names if max(get_layer(model, name).kernel_size) > 1]
    candidates = spatial or names
    return candidates[len(candidates) // 2]
