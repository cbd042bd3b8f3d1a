"""Intermediate neurons: receptive fields, top-activating image regions, and their guided backprop.

The lecture's "visualising intermediate features" (Zeiler and Fergus 2014; Springenberg et al. 2015):
for a channel of a layer, scan a dataset for the (image, position) pairs where the channel fires most,
crop each image at the neuron's receptive field around that position, and show the guided backprop
of that neuron next to each crop.

- :func:`receptive_field` computes a layer's receptive field from the architecture (kernel sizes,
  strides, paddings and dilations along the path to the layer; TF-``SAME`` convolutions, pooling,
  residual blocks; see :mod:`deepscope.geometry`), and falls back to the support of the input gradient
  for layers it cannot follow.
- :func:`top_activations` keeps a running top-k per channel while scanning batches (activations of the
  whole dataset are never held in memory).
- :func:`neuron_view` puts both together into crops and guided-backprop crops for a figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from deepscope.attribution.gradient import Gradient
from deepscope.attribution.guided import GuidedBackprop
from deepscope.errors import DeepscopeError, TargetError, UnsupportedModelError
from deepscope.geometry import walk_fields
from deepscope.images import ImageSet, Photos, Skip, iter_batches
from deepscope.models.preprocess import Preprocess
from deepscope.probe import Probe, get_layer, model_device


class ReceptiveField(NamedTuple):
    """Where a layer's neurons look in the input image (one spatial axis; square layers).

    Neuron ``(y, x)`` of the layer sees input rows ``offset + y * stride`` to
    ``offset + y * stride + size - 1`` (and the same for columns); ``offset`` can be negative
    (the padding). ``method`` says how it was found: ``"architecture"`` or ``"gradient"``.
    """

    size: int
    stride: int
    offset: int
    method: str = "architecture"


def architecture_receptive_field(model: nn.Module, layer: str, input_size: int) -> ReceptiveField:
    """Receptive field of ``layer`` from the modules on the path to it.

    Raises
    ------
    UnsupportedModelError
        If a module on the path has an effect the walk cannot know (attention, global pooling inside
        a block, non-square kernels, ...), or the computed feature-map size disagrees with the model's.
    """
    get_layer(model, layer)
    walk = walk_fields(model, (input_size, input_size))
    if layer not in walk.fields:
        reason = walk.stopped or "it lies inside a layer taken as a whole"
        raise UnsupportedModelError(f"cannot follow the architecture to layer {layer!r}: {reason}.")
    rows, columns = walk.fields[layer]
    if rows != columns:
        raise UnsupportedModelError(f"cannot follow the architecture to layer {layer!r}: its receptive field is not "
                                    f"square ({rows.size}x{columns.size} px, stride {rows.stride}x{columns.stride}).")
    actual = _feature_size(model, layer, input_size)
    if actual != rows.length:
        raise UnsupportedModelError(f"cannot follow the architecture to layer {layer!r}: computed a "
                                    f"{rows.length}-px feature map, the model gives {actual} px.")
    return ReceptiveField(rows.size, rows.stride, rows.offset, "architecture")


def _feature_size(model: nn.Module, layer: str, input_size: int) -> int:
    with Probe(model, [layer], detach=True) as probe, torch.inference_mode():
        probe(torch.zeros(1, 3, input_size, input_size, device=model_device(model)))
        activation = probe.activations[layer]
    if activation.ndim != 4 or activation.shape[-1] != activation.shape[-2]:
        raise UnsupportedModelError(f"layer {layer!r} gives shape {tuple(activation.shape)}; neuron views need "
                                    "a square (N, C, H, W) feature map.")
    return int(activation.shape[-1])


def gradient_receptive_field(model: nn.Module, layer: str, input_size: int, seed: int = 0,
                             repeats: int = 4) -> ReceptiveField:
    """Receptive field of ``layer`` measured as the support of the input gradient.

    The summed activation of all channels of two neighbouring neurons near the centre of the map is
    differentiated w.r.t. ``repeats`` random inputs; the rows with a non-zero gradient give the size and the
    offset, the shift between the two neurons gives the stride. A field larger than the image is
    clipped to it (the size is then a lower bound).
    """
    length = _feature_size(model, layer, input_size)
    y = max((length - 1) // 2, 0)
    y2 = min(y + 1, length - 1)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2 * repeats, 3, input_size, input_size, generator=generator).to(model_device(model))
    half = torch.arange(2 * repeats, device=inputs.device) < repeats

    def score(activation: torch.Tensor) -> torch.Tensor:
        return torch.where(half, activation[:, :, y, y].sum(1), activation[:, :, y2, y2].sum(1))

    grad = Gradient(model, absolute=True, neuron_layer=layer).attribute(inputs, target=score)  # (2R, 1, H, W)
    # Rows each neuron sees, united over the random inputs (a dead ReLU can hide a row in one of them).
    rows = (grad[:, 0].abs().amax(dim=2) > 0).view(2, repeats, input_size).any(dim=1)
    if not bool(rows.any(dim=1).all()):
        raise UnsupportedModelError(f"the input gradient of layer {layer!r} is zero; cannot measure its receptive field.")
    index = torch.arange(input_size, device=rows.device)
    first = torch.where(rows, index, input_size).amin(dim=1)
    last = torch.where(rows, index, -1).amax(dim=1)
    stride = max(int(first[1] - first[0]), 1) if y2 != y else input_size
    size = int(last[0] - first[0]) + 1
    return ReceptiveField(size, stride, int(first[0]) - y * stride, "gradient")


def receptive_field(model: nn.Module, layer: str, input_size: int = 224) -> ReceptiveField:
    """The receptive field of ``layer``'s neurons: from the architecture, else from the gradient's support.

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    layer : str
        Dotted name of a layer with a square (N, C, H, W) output.
    input_size : int
        Side of the square model input.

    Returns
    -------
    ReceptiveField
        ``(size, stride, offset, method)``; see :func:`neuron_box`.
    """
    try:
        return architecture_receptive_field(model, layer, input_size)
    except UnsupportedModelError:
        return gradient_receptive_field(model, layer, input_size)


def neuron_box(rf: ReceptiveField, y: int, x: int, image_size: int | None = None) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` (bottom/right exclusive) of neuron ``(y, x)``'s field, clipped to the image."""
    top, left = rf.offset + y * rf.stride, rf.offset + x * rf.stride
    bottom, right = top + rf.size, left + rf.size
    if image_size is not None:
        top, left = max(top, 0), max(left, 0)
        bottom, right = min(bottom, image_size), min(right, image_size)
    return top, left, bottom, right


# -- top activations --------------------------------------------------------------------------------
@dataclass
class TopActivations:
    """The k strongest activations of each channel over a dataset, strongest first.

    Attributes
    ----------
    layer : str
    channels : list of int
    values : (C, k) tensor
        Activation values.
    image_indices : (C, k) long tensor
        Positions in the scanned ImageSet.
    positions : (C, k, 2) long tensor
        ``(y, x)`` of the neuron in the feature map.
    map_size : int
        Side of the layer's feature map.
    skipped : list of (Path, str)
        Files of the image set that were not scanned (not images, or unreadable), and why.
    """

    layer: str
    channels: list[int]
    values: torch.Tensor
    image_indices: torch.Tensor
    positions: torch.Tensor
    map_size: int
    skipped: list[Skip]

    def select(self, channels: Sequence[int], k: int) -> "TopActivations":
        """The first ``k`` of the given ``channels`` (each must be among :attr:`channels`)."""
        missing = [c for c in channels if c not in self.channels]
        if missing or k > self.values.shape[1]:
            raise DeepscopeError(f"these top activations of {len(self.channels)} channel(s), {self.values.shape[1]} "
                                 f"image(s) each, do not hold channels {missing} or k={k}.")
        rows = torch.tensor([self.channels.index(c) for c in channels], dtype=torch.long)
        return TopActivations(self.layer, list(channels), self.values[rows, :k], self.image_indices[rows, :k],
                              self.positions[rows, :k], self.map_size, self.skipped)


def batch_top_activations(activation: torch.Tensor, channels: Sequence[int],
                          neuron: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel, the strongest activation and its flat position: two (N, C) tensors.

    With ``neuron=(y, x)`` the value at that one position is used instead of the maximum over space.
    """
    picked = activation[:, list(channels)]
    n, c, h, w = picked.shape
    if neuron is not None:
        y, x = neuron
        if not (0 <= y < h and 0 <= x < w):
            raise TargetError(f"neuron position ({y}, {x}) is outside the {h}x{w} feature map.")
        return picked[:, :, y, x], torch.full((n, c), y * w + x, dtype=torch.long, device=picked.device)
    return picked.flatten(2).max(dim=2)


def merge_top(best: tuple[torch.Tensor, ...] | None, values: torch.Tensor, images: torch.Tensor,
              flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge a batch's (C, n) candidates into the running (C, <=k) top-k (values, images, positions)."""
    if best is not None:
        values = torch.cat([best[0], values], dim=1)
        images = torch.cat([best[1], images], dim=1)
        flat = torch.cat([best[2], flat], dim=1)
    top_values, order = values.topk(min(k, values.shape[1]), dim=1)
    return top_values, images.gather(1, order), flat.gather(1, order)


def top_activations(model: nn.Module, images: ImageSet, transform, layer: str, channels: Sequence[int] | None = None,
                    k: int = 9, *, neuron: tuple[int, int] | None = None, batch_size: int = 32,
                    progress: bool = True) -> TopActivations:
    """Scan ``images`` and keep, per channel, the k (image, position) pairs with the largest activation.

    Each image counts once per channel (at its strongest position), as in Zeiler and Fergus 2014.

    Parameters
    ----------
    transform : callable
        PIL image -> normalised model input (``loaded.preprocess``).
    channels : sequence of int, optional
        Channels of ``layer`` (default: all).
    neuron : (y, x), optional
        Rank images by the activation at this one spatial position instead of the channel's maximum.
    """
    if k < 1:
        raise DeepscopeError(f"k (--top) must be at least 1, got {k}.")
    device = model_device(model)
    best = None
    map_size = 0
    skipped = list(images.skipped)
    with Probe(model, [layer], detach=True) as probe, torch.inference_mode():
        for batch in iter_batches(images, transform, batch_size, progress="activations" if progress else False):
            skipped += batch.skipped
            if not batch.indices:
                continue
            probe(batch.inputs.to(device))
            activation = probe.activations[layer]
            if activation.ndim != 4:
                raise UnsupportedModelError(f"layer {layer!r} gives shape {tuple(activation.shape)}; "
                                            "neuron views need an (N, C, H, W) feature map.")
            if channels is None:
                channels = list(range(activation.shape[1]))
            bad = [c for c in channels if not 0 <= c < activation.shape[1]]
            if bad:
                raise TargetError(f"channel {bad[0]} is out of range: layer {layer!r} has {activation.shape[1]} channels.")
            map_size = activation.shape[-1]
            values, flat = batch_top_activations(activation, channels, neuron)
            index = torch.as_tensor(batch.indices, device=values.device).expand(len(channels), -1)
            best = merge_top(best, values.T, index, flat.T, k)
    if best is None:
        raise DeepscopeError("no readable image to scan.")
    values, image_indices, flat = best
    positions = torch.stack([flat // map_size, flat % map_size], dim=-1)
    return TopActivations(layer, list(channels), values, image_indices, positions, map_size, skipped)


# -- crops and guided backprop -------------------------------------------------------------------------
@dataclass
class NeuronView:
    """Top-activating crops of several channels and the guided backprop of each neuron on them.

    ``crops[i][j]`` and ``guided[i][j]`` are (3, h, w) tensors for channel ``channels[i]``'s j-th image:
    [0, 1] pixels and the signed guided-backprop gradient w.r.t. the pixels, cut at the same box.
    """

    layer: str
    channels: list[int]
    top: TopActivations
    field: ReceptiveField
    boxes: list[list[tuple[int, int, int, int]]]
    crops: list[list[torch.Tensor]]
    guided: list[list[torch.Tensor]]
    paths: list[list[str]]
    gradient_method: str


def neuron_view(model: nn.Module, preprocess: Preprocess, images: ImageSet, layer: str, channels: Sequence[int],
                k: int = 9, *, neuron: tuple[int, int] | None = None,
                pixels: Callable[[Sequence[int]], torch.Tensor] | None = None, batch_size: int = 32,
                progress: bool = True, top: TopActivations | None = None) -> NeuronView:
    """Scan ``images`` for ``channels`` of ``layer`` and cut their top-k crops with guided backprop.

    With ``neuron=(y, x)`` images are ranked by that one spatial neuron of each channel (see
    :func:`top_activations`). ``pixels(indices)`` gives the ``(N, 3, S, S)`` [0, 1] crops
    (``preprocess.crop``) of the top images by their positions in ``images``, e.g. from photos a caller
    has decoded already; by default they are decoded here, each once. ``top`` gives top activations found
    before (over ``images``, of ``layer``, with these channels among its own, e.g. a neurons job's): the
    images are then not scanned again.

    Guided backprop (Springenberg et al. 2015) of neuron ``a[:, c, y, x]`` at each image's strongest
    position; models with activations guided backprop cannot handle get the plain gradient instead
    (``gradient_method`` says which).
    """
    if top is None:
        top = top_activations(model, images, preprocess, layer, channels, k, neuron=neuron, batch_size=batch_size,
                              progress=progress)
    else:
        top = top.select(channels, k)
    field = receptive_field(model, layer, preprocess.input_size)
    try:
        method: Gradient = GuidedBackprop(model, absolute=False, neuron_layer=layer)
        gradient_method = "guided backprop"
    except UnsupportedModelError:
        method = Gradient(model, absolute=False, neuron_layer=layer)
        gradient_method = "gradient"
    if pixels is None:
        photos = Photos(preprocess)

        def pixels(indices: Sequence[int]) -> torch.Tensor:
            return photos.crops([images.paths[i] for i in indices])

    device = model_device(model)
    boxes, crops, guided, paths = [], [], [], []
    for row, channel in enumerate(top.channels):
        indices = top.image_indices[row].tolist()
        top_pixels = pixels(indices).to(device)
        ys, xs = top.positions[row, :, 0].to(device), top.positions[row, :, 1].to(device)
        arange = torch.arange(len(indices), device=device)

        def score(activation, c=channel, ys=ys, xs=xs, arange=arange):
            return activation[arange, c, ys, xs]

        grads = method.attribute(preprocess.normalize(top_pixels), target=score)
        row_boxes = [neuron_box(field, int(y), int(x), preprocess.input_size) for y, x in top.positions[row].tolist()]
        boxes.append(row_boxes)
        crops.append([p[:, t:b, l:r] for p, (t, l, b, r) in zip(top_pixels, row_boxes)])
        guided.append([g[:, t:b, l:r] for g, (t, l, b, r) in zip(grads, row_boxes)])
        paths.append([str(images.paths[i]) for i in indices])
    return NeuronView(layer, top.channels, top, field, boxes, crops, guided, paths, gradient_method)
