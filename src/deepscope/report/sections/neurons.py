"""Section "neurons": where a few channels of an intermediate block fire most, with each neuron's guided backprop."""

from __future__ import annotations

import torch
from torch import nn

from deepscope.jobs import stored_top_activations
from deepscope.neurons import neuron_view
from deepscope.probe import get_layer
from deepscope.render.neurons import neuron_figure
from deepscope.report.base import Figure, ReportContext, Section
from deepscope.report.layers import block_layer

#: channels shown, and top-activating crops per channel
CHANNELS, TOP = 3, 8


def neurons_section(ctx: ReportContext) -> Section:
    loaded, settings = ctx.loaded, ctx.settings
    layer = block_layer(loaded.model)
    channels = spread_channels(get_layer(loaded.model, layer), CHANNELS)
    k = min(TOP, len(ctx.images))
    job = ctx.stored_job("neurons", lambda j: j.summary.get("k", 0) >= k and set(channels) <= set(j.summary["channels"]),
                         layer=layer, neuron=None)
    top = stored_top_activations(job) if job is not None else None

    def draw():
        view = neuron_view(loaded.model, loaded.preprocess, ctx.images, layer, channels, k, pixels=ctx.pixels,
                           batch_size=settings.batch_size, progress=settings.progress, top=top)
        return neuron_figure(view)

    src = ctx.figure("neurons", [layer, channels, k], draw)
    caption = (f"Channels {', '.join(map(str, channels))} of {layer}: the {k} image regions (receptive fields) where "
               "each fires most, above the guided backprop of that neuron on each crop"
               + (f" (top activations from the store's job {job.path.name})." if job is not None else "."))
    return Section("neurons", "Neurons",
                   "What intermediate units respond to: for a few channels of a block two thirds of the way through "
                   "the network, the image crops that excite them most and the pixels that drive them "
                   "(Zeiler & Fergus 2014; guided backprop after Springenberg et al. 2015).",
                   [Figure(src, caption=caption)])


def spread_channels(block: nn.Module, count: int) -> list[int]:
    """``count`` evenly spaced channel indices of a block's output (its last convolution or batch norm)."""
    width = None
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            width = module.out_channels
        elif isinstance(module, nn.BatchNorm2d):
            width = module.num_features
    if width is None:
        return list(range(count))
    return torch.linspace(0, width - 1, count + 2)[1:-1].round().long().tolist()
