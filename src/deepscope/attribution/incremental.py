"""Exact forward passes of images that differ from one reference image only inside a box.

Occlusion (a patch replaced by a baseline) and Score-CAM (the input times an upsampled channel map,
zero outside the map's support) run the model on many images that equal a reference image outside a
box. Such a change moves only a cone of activations (Krypton, Nakandala et al., SIGMOD 2019), so the
first layers need not see the whole image.

The model is cut at a chain of its sequential stages -- children of the model and of its
``nn.Sequential`` containers (``features.1``, ``features.2``, ... or ``layer1.0``, ``layer1.1``, ...)
-- up to where a layer that is not local (global pooling, a linear layer, squeeze-excitation) comes.
Local layers are convolutions, pooling windows and the element-wise layers that
:mod:`deepscope.geometry` finds local (batch norm in eval mode, activations, ...); a residual addition
inside a stage is local too, and so is a ResNet shortcut. For a batch of changed images:

1. the first segment (input to the first cut) runs on a crop of each image around its box, as wide as
   the segment's receptive field needs;
2. at every cut, the positions the box can reach are taken from the crop's result and pasted into the
   reference image's activation there (computed once); the next segment runs on a crop of that around
   the grown box;
3. after the last cut the rest of the network runs on the whole pasted activation.

Crops start on the segment's stride grid and reach the border whenever the box is near it, so the
zero padding is the network's own (TensorFlow 'SAME' padding included) and every pasted value equals
a full forward pass's. Callers check a few images against full forward passes before trusting a
chain (as :class:`~deepscope.attribution.occlusion.Occlusion` does, using :attr:`ConeRunner.pasted`), so a
model whose forward is not a chain through its stages falls back to full passes instead of giving wrong numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from deepscope.errors import LayerNotFoundError
from deepscope.geometry import Pair, pair, walk_fields
from deepscope.probe import Probe, fast_layout, get_layer


def _align(value: int, step: int) -> int:
    return -(-value // step) * step


@dataclass(frozen=True)
class Stage:
    """A place to cut: the output of layer ``name``, ``stride`` input pixels per position, each position
    reading ``reach`` (before, after) input pixels around ``position * stride`` (per axis)."""

    name: str
    stride: Pair
    reach: tuple[Pair, Pair]


def local_stages(model: nn.Module, last: str | None = None) -> list[Stage]:
    """The model's sequential stages that only local layers precede, in order (up to ``last`` if given).

    Raises
    ------
    LayerNotFoundError
        If ``last`` is given and is not such a stage.
    """
    if last is not None:
        get_layer(model, last)
    stages: list[str] = []

    def visit(module, prefix):
        for name, child in module.named_children():
            stages.append(f"{prefix}{name}")
            if type(child) is nn.Sequential:  # a subclass may have its own forward (a residual block)
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    walk = walk_fields(model, local=True)
    by_end: dict[int, Stage] = {}
    # outer names come first: an inner stage ending at the same leaf replaces them, unless ``last`` names it
    for stage in stages:
        inside = [i for i, name in enumerate(walk.leaves) if name == stage or name.startswith(stage + ".")]
        if not inside or stage not in walk.fields:
            continue
        end = inside[-1]
        if end not in by_end or by_end[end].name != last:
            rows, cols = walk.fields[stage]
            by_end[end] = Stage(stage, (rows.stride, cols.stride),
                                ((rows.before, rows.after), (cols.before, cols.after)))
    chain = [by_end[end] for end in sorted(by_end)]
    if last is not None:
        names = [stage.name for stage in chain]
        if last not in names:
            raise LayerNotFoundError(f"incremental evaluation cannot cut at {last!r}: only convolutions, pooling, "
                                     "batch norm and activations may come before the cut.")
        chain = chain[:names.index(last) + 1]
    return chain


@dataclass(frozen=True)
class Segment:
    """The layers from the previous cut (or the input) to the cut ``name``; per axis (rows, columns).

    ``stride`` and ``reach`` are in positions of the previous cut; ``box`` positions at this cut are
    recomputed per image from a ``crop`` of the previous cut's positions.
    """

    name: str
    stride: Pair
    reach: tuple[Pair, Pair]
    in_size: Pair
    out_size: Pair
    box: Pair
    crop: Pair

    @property
    def crop_fraction(self) -> float:
        return self.crop[0] * self.crop[1] / (self.in_size[0] * self.in_size[1])


def _box_length(window: int, stride: int, before: int, after: int) -> int:
    """The most positions a run of ``window`` changed inputs can reach, over all alignments."""
    # positions p with p * stride + after >= first and p * stride - before <= last changed input
    return max((offset + window - 1 + before) // stride + (after - offset) // stride + 1 for offset in range(stride))


@dataclass(frozen=True)
class Placement:
    """Where each image's box and crops lie, per segment: ``boxes[k]`` (B, 2) first recomputed position at
    cut ``k``, ``origins[k]`` (B, 2) first position of segment ``k``'s crop (input pixels for ``k = 0``)."""

    boxes: list[torch.Tensor]
    origins: list[torch.Tensor]


@dataclass(frozen=True)
class ConePlan:
    """A chain of segments for changed boxes of one size (``window``, input pixels) in ``size`` images."""

    size: Pair
    window: Pair
    segments: tuple[Segment, ...]

    @classmethod
    def build(cls, stages: list[Stage], out_sizes: dict[str, Pair], size: Pair, window: Pair) -> "ConePlan":
        """The longest chain through ``stages`` whose sizes divide evenly (it may be empty)."""
        segments = []
        previous_stride, previous_reach, in_size, changed = (1, 1), ((0, 0), (0, 0)), tuple(size), tuple(window)
        for stage in stages:
            out_size = tuple(out_sizes[stage.name])
            stride, reach, box, crop = [], [], [], []
            for axis in range(2):
                if stage.stride[axis] % previous_stride[axis]:
                    break
                s = stage.stride[axis] // previous_stride[axis]
                before = stage.reach[axis][0] - previous_reach[axis][0]
                after = stage.reach[axis][1] - previous_reach[axis][1]
                if before % previous_stride[axis] or after % previous_stride[axis] \
                        or in_size[axis] % s or in_size[axis] // s != out_size[axis]:
                    break
                before //= previous_stride[axis]
                after //= previous_stride[axis]
                b = min(out_size[axis], _box_length(changed[axis], s, before, after))
                stride.append(s)
                reach.append((before, after))
                box.append(b)
                crop.append(min(in_size[axis], _align((b - 1) * s + after + 1 + _align(before, s), s)))
            if len(box) < 2:
                break
            segments.append(Segment(stage.name, tuple(stride), tuple(reach), in_size, out_size, tuple(box),
                                    tuple(crop)))
            previous_stride, previous_reach, in_size, changed = stage.stride, stage.reach, out_size, tuple(box)
        return cls(tuple(size), tuple(window), tuple(segments))

    def truncated(self, count: int) -> "ConePlan":
        """The plan cut after its first ``count`` segments."""
        return ConePlan(self.size, self.window, self.segments[:count])

    @property
    def last(self) -> str | None:
        return self.segments[-1].name if self.segments else None

    @property
    def input_crop(self) -> Pair:
        return self.segments[0].crop

    def place(self, starts: torch.Tensor) -> Placement:
        """Boxes and crop origins for changed boxes whose top-left input pixels are ``starts`` (B, 2)."""
        boxes, origins = [], []
        start = starts.long()
        for segment in self.segments:
            stride, out, inn = (torch.tensor(v, device=start.device) for v in
                                (segment.stride, segment.out_size, segment.in_size))
            before = torch.tensor([r[0] for r in segment.reach], device=start.device)
            after = torch.tensor([r[1] for r in segment.reach], device=start.device)
            box_len, crop = (torch.tensor(v, device=start.device) for v in (segment.box, segment.crop))
            box = torch.minimum((-((after - start).div(stride, rounding_mode="floor"))).clamp_min(0), out - box_len)
            aligned_before = -((-before).div(stride, rounding_mode="floor")) * stride
            origin = torch.minimum((box * stride - aligned_before).clamp_min(0), inn - crop)
            boxes.append(box)
            origins.append(origin)
            start = box
        return Placement(boxes, origins)


class ConeRunner:
    """Runs batches of crops through a probe; hooks at the cuts paste them into a reference's activations.

    Parameters
    ----------
    probe : Probe
        An entered probe of the model; the runner adds its hooks to it (they go when the probe exits).
    stages : list of Stage
        Every stage a plan may cut at.
    """

    def __init__(self, probe: Probe, stages: list[Stage]):
        self._probe = probe
        self._plan: ConePlan | None = None
        self._placement: Placement | None = None
        self._references: dict[str, torch.Tensor] = {}
        #: the last run's pasted activation at its plan's last cut, ``{name: tensor}``, to check against a full pass
        self.pasted: dict[str, torch.Tensor] = {}
        for stage in stages:
            probe.replace_output(stage.name, self._paste_hook(stage.name))

    def set_reference(self, activations: dict[str, torch.Tensor]) -> None:
        """The reference image's (1, C, H, W) activations at the stages (from a probe's capture)."""
        self._references = {name: value[0].permute(1, 2, 0).reshape(-1, value.shape[1])
                            for name, value in activations.items() if value.ndim == 4}

    def run(self, plan: ConePlan, crops: torch.Tensor, placement: Placement) -> torch.Tensor:
        """The model's output for images given by their input ``crops`` (placed by ``plan.place``)."""
        device = crops.device
        placement = Placement([box.to(device) for box in placement.boxes], [o.to(device) for o in placement.origins])
        self._plan, self._placement = plan, placement
        self.pasted = {}
        try:
            return self._probe(fast_layout(crops))
        finally:
            self._plan = self._placement = None

    def _paste_hook(self, name: str):
        def hook(output):
            plan = self._plan
            if plan is None:
                return None
            index = next((k for k, segment in enumerate(plan.segments) if segment.name == name), None)
            if index is None:
                return None
            return self._paste(plan, index, output)
        return hook

    def _paste(self, plan: ConePlan, k: int, output: torch.Tensor) -> torch.Tensor:
        segment, placement = plan.segments[k], self._placement
        count, channels = output.shape[:2]
        computed = tuple(c // s for c, s in zip(segment.crop, segment.stride))
        if tuple(output.shape[2:]) != computed or count != len(placement.boxes[k]):
            raise RuntimeError(f"activation at {segment.name} has shape {tuple(output.shape)}, expected "
                               f"{(len(placement.boxes[k]), channels, *computed)}")
        if k + 1 < len(plan.segments):  # a crop around the grown box for the next segment
            origin, extent = placement.origins[k + 1], plan.segments[k + 1].crop
        else:  # the whole activation for the rest of the network
            origin, extent = torch.zeros_like(placement.boxes[k]), segment.out_size
        axes = []
        for axis in range(2):
            position = origin[:, axis, None] + torch.arange(extent[axis], device=origin.device)  # (B, extent)
            box = placement.boxes[k][:, axis, None]
            inside = (position >= box) & (position < box + segment.box[axis])
            source = (position - placement.origins[k][:, axis, None] // segment.stride[axis]).clamp(0, computed[axis] - 1)
            axes.append((position, inside, source))
        (py, iy, sy), (px, ix, sx) = axes
        batch = torch.arange(count, device=origin.device)[:, None, None] * (computed[0] * computed[1])
        source_rows = batch + sy[:, :, None] * computed[1] + sx[:, None, :]
        reference_rows = py[:, :, None] * segment.out_size[1] + px[:, None, :]
        inside = (iy[:, :, None] & ix[:, None, :])[..., None]
        flat = output.permute(0, 2, 3, 1).reshape(-1, channels)
        pasted = torch.where(inside, flat[source_rows], self._references[segment.name][reference_rows])
        pasted = pasted.permute(0, 3, 1, 2)  # (B, C, h, w) in channels-last memory
        if k + 1 == len(plan.segments):
            self.pasted = {segment.name: pasted}
        return pasted


def conv_costs(model: nn.Module, image: torch.Tensor) -> list[tuple[str, float]]:
    """(name, estimated cost) of every convolution in forward order: multiply-adds plus memory traffic."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with Probe(model, convs, detach=True) as probe, torch.inference_mode():
        probe(fast_layout(image[:1]))
        costs = []
        for name in convs:
            module, out = get_layer(model, name), probe.activations.get(name)
            if out is not None:
                per_output = module.in_channels // module.groups * math.prod(pair(module.kernel_size))
                costs.append((name, float(out[0].numel() * (per_output + 16))))
    return costs


def plan_costs(model: nn.Module, plan: ConePlan, costs: list[tuple[str, float]],
               channels: dict[str, int]) -> list[float]:
    """Estimated cost of one changed image with the plan truncated after 1, 2, ... segments.

    A convolution in segment ``k`` costs its share of the crop; after the last cut, all of it; each cut
    adds the copying of its pasted activation.
    """
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    ends = [max(i for name, i in order.items() if name == segment.name or name.startswith(segment.name + "."))
            for segment in plan.segments]
    # the segment each convolution belongs to (len(ends): after every cut)
    segment_of = [next((k for k, end in enumerate(ends) if order[name] <= end), len(ends)) for name, _ in costs]
    totals = []
    for count in range(1, len(plan.segments) + 1):
        total = sum(cost * (plan.segments[k].crop_fraction if k < count else 1.0)
                    for (_, cost), k in zip(costs, segment_of))
        for k in range(count):
            segment = plan.segments[k]
            extent = plan.segments[k + 1].crop if k + 1 < count else segment.out_size
            total += 24.0 * channels.get(segment.name, 0) * extent[0] * extent[1]
        totals.append(total)
    return totals
