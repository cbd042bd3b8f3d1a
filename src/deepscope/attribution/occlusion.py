"""Occlusion (Zeiler and Fergus, 2014): slide a patch of baseline values over the image.

Differs from the protocol: returns a (N, 1, H, W) map. For every window position the patch
(``window`` pixels, moved by ``stride``) is replaced by the ``baseline``; the map at a pixel is the
drop of the target score, ``score(clean) - score(occluded)``, averaged over the windows that cover the
pixel -- as captum's ``Occlusion`` computes it, so both agree for the same settings (a pixel that no
window covers gets 0 here and NaN in captum). Targets are resolved once on the clean input; a callable
target is evaluated on every occluded output (after the softmax when ``score="probability"``).

Perturbations are built lazily, ``batch_size`` at a time, and run under ``torch.inference_mode()``.

Incremental evaluation (``incremental=True``, exact)
-----------------------------------------------------
A window changes only a cone of activations (Krypton, Nakandala et al., SIGMOD 2019). Up to a cut
layer whose operations are all local (convolutions, batch norm, pointwise activations, pooling
windows) an occluded image is therefore computed on a crop around the window only: the crop holds
the window plus the receptive field of the layers up to the cut, its activation at the cut is pasted
into the clean image's activation (computed once), and the rest of the network runs as usual.
Crops start on the cut's stride grid and reach the image border whenever the window is near it, so
zero padding is the network's own and the pasted values equal a full forward pass's.

The cut is chosen automatically among the model's sequential stages (children of the model and of
its ``nn.Sequential`` containers, e.g. ``features.4`` or ``blocks.2``) by the estimated cost, or named
with ``incremental="features.3"``. Before it is used, the result of a few windows is compared with
full forward passes; on a mismatch (a model whose forward is not a chain through the cut, a global
operation hidden in a block's ``forward``) the method warns and falls back to full forward passes.
The layer used is stored in :attr:`cut_layer_` (``None``: full forward passes).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from deepscope.attribution.base import Attribution
from deepscope.errors import DeepscopeError, LayerNotFoundError
from deepscope.probe import Probe, fast_layout, get_layer
from deepscope.targets import Target, repeat_target, resolve_target, target_scores

BASELINES = ("zero", "mean", "blur")
SCORES = ("logit", "probability")

#: layers that act on each position (or each channel at each position) on their own
_POINTWISE = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
              nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardtanh, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout2d)
_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class Occlusion(Attribution):
    """Occlusion map, see the module docstring.

    Parameters
    ----------
    window, stride : int or (int, int)
        Patch size and step in pixels (height, width).
    baseline : "zero", "mean", "blur" or float
        What replaces the patch: 0 in the model's input space (for mean/std-normalised input, the
        dataset's mean colour), each image's mean colour, the image blurred with a Gaussian of sigma
        ``window / 4``, or a constant.
    score : "logit" or "probability"
        The target score whose drop is measured.
    batch_size : int
        Occluded images per forward pass.
    incremental : bool or str
        Compute the first layers on crops around each window (exact, see above); a layer name fixes
        the cut. ``False``: a full forward pass per window.
    progress : bool
        Progress bar over window batches.
    """

    name = "occlusion"

    def __init__(self, model: nn.Module, window=16, stride=8, baseline: str | float = "zero",
                 score: str = "logit", batch_size: int = 64, incremental: bool | str = True, progress: bool = False):
        super().__init__(model)
        self.window, self.stride = _pair(window), _pair(stride)
        if min(self.window) < 1 or min(self.stride) < 1:
            raise DeepscopeError(f"occlusion window and stride must be positive, got {window} and {stride}.")
        if not isinstance(baseline, (int, float)) and baseline not in BASELINES:
            raise DeepscopeError(f"unknown occlusion baseline {baseline!r}; use one of {', '.join(BASELINES)} or a number.")
        if score not in SCORES:
            raise DeepscopeError(f"unknown occlusion score {score!r}; use logit or probability.")
        if batch_size < 1:
            raise DeepscopeError(f"batch_size must be positive, got {batch_size}.")
        if isinstance(incremental, str):
            get_layer(model, incremental)
        self.baseline = baseline
        self.score = score
        self.batch_size = batch_size
        self.incremental = incremental
        self.progress = progress
        self.cut_layer_: str | None = None

    # -- the protocol ------------------------------------------------------------------------------------
    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        n, _, height, width = inputs.shape
        positions = window_positions((height, width), self.window, self.stride)
        baselines = self.baseline_images(inputs)
        cuts = _cut_candidates(self.model, self.incremental) if self.incremental else {}
        with Probe(self.model, list(cuts), detach=True) as probe, torch.inference_mode():
            clean = probe(fast_layout(inputs))
            resolved = resolve_target(target, clean)
            clean_scores = self._scores(clean, resolved)
            clean_activations = dict(probe.activations)
            runner = _FullRunner()
            if cuts:
                runner = self._choose_runner(probe, cuts, clean_activations, inputs, baselines, positions) or runner
            self.cut_layer_ = runner.cut
            clean_activations = {runner.cut: clean_activations[runner.cut]} if runner.cut else {}
            drops = inputs.new_empty(n, len(positions))
            bar = tqdm(total=n * len(positions), desc="occlusion", unit="window", disable=not self.progress,
                       leave=False)
            for i in range(n):
                runner.prepare(clean_activations, i)
                sample_target = _index(resolved, i)
                for start in range(0, len(positions), self.batch_size):
                    chunk = positions[start:start + self.batch_size]
                    output = runner.run(probe, inputs[i], baselines[i], chunk, self.window)
                    scores = self._scores(output, repeat_target(sample_target, len(chunk)))
                    drops[i, start:start + len(chunk)] = clean_scores[i] - scores
                    probe.activations.clear()  # captured stages are needed only for the clean pass
                    bar.update(len(chunk))
            bar.close()
        return spread_windows(drops.clone(), (height, width), self.window, self.stride)

    def _scores(self, output: torch.Tensor, target) -> torch.Tensor:
        return target_scores(output.softmax(dim=1) if self.score == "probability" else output, target)

    def baseline_images(self, inputs: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) values that replace an occluded patch."""
        if isinstance(self.baseline, (int, float)):
            return torch.full_like(inputs, float(self.baseline))
        if self.baseline == "zero":
            return torch.zeros_like(inputs)
        if self.baseline == "mean":
            return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
        return gaussian_blur(inputs, sigma=max(self.window) / 4)

    # -- incremental evaluation ------------------------------------------------------------------------
    def _choose_runner(self, probe, cuts, clean_activations, inputs, baselines, positions) -> "_CropRunner | None":
        """The cheapest cut whose crops reproduce full forward passes on a few windows (or None)."""
        height, width = inputs.shape[-2:]
        plans = []
        for name, reach in cuts.items():
            activation = clean_activations.get(name)
            plan = _CutPlan.build(name, reach, activation, (height, width), self.window) if activation is not None else None
            if plan is not None:
                plans.append(plan)
        if not plans:
            return None
        if not isinstance(self.incremental, str):
            costs = _prefix_costs(self.model, inputs[:1], [p.name for p in plans])
            total = costs[None]
            estimate = {p.name: costs[p.name] * p.crop_fraction + total - costs[p.name] for p in plans}
            plans = sorted((p for p in plans if estimate[p.name] < 0.9 * total), key=lambda p: estimate[p.name])
        failures = []
        for plan in plans[:3]:
            runner = self._checked_runner(probe, plan, clean_activations, inputs, baselines, positions, failures)
            if runner is not None:
                return runner
        if failures:
            warnings.warn(f"occlusion: incremental evaluation is not exact for this model ({'; '.join(failures)}); "
                          "using full forward passes.", stacklevel=4)
        return None

    def _checked_runner(self, probe, plan, clean_activations, inputs, baselines, positions,
                        failures: list[str]) -> "_CropRunner | None":
        """A runner for ``plan`` if it reproduces full forward passes on three windows of the first image."""
        runner = _CropRunner(plan)
        probe.replace_output(plan.name, runner.paste)
        check = [positions[0], positions[len(positions) // 2], positions[-1]]
        try:
            runner.prepare(clean_activations, 0)
            fast = runner.run(probe, inputs[0], baselines[0], check, self.window)
            pasted = runner.pasted
            full = _FullRunner().run(probe, inputs[0], baselines[0], check, self.window)
            truth = probe.activations[plan.name]
            # compare at the cut too: a global operation before it may barely move the outputs
            exact = (torch.allclose(pasted, truth, rtol=1e-5, atol=1e-5 * float(truth.abs().max()))
                     and torch.allclose(fast, full, rtol=1e-4, atol=1e-4 * float(full.abs().max().clamp_min(1))))
        except RuntimeError as error:  # the model is not a chain through the cut (shapes differ)
            exact, reason = False, str(error).splitlines()[0]
        else:
            reason = "crop results differ from full forward passes"
        runner.active = False
        if not exact:
            failures.append(f"at {plan.name}: {reason}")
            return None
        return runner


def window_positions(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of all windows that fit in ``size`` (row-major), as captum enumerates them."""
    if window[0] > size[0] or window[1] > size[1]:
        raise DeepscopeError(f"occlusion window {window} is larger than the input {size}; use a smaller window.")
    return [(y, x) for y in range(0, size[0] - window[0] + 1, stride[0])
            for x in range(0, size[1] - window[1] + 1, stride[1])]


def spread_windows(values: torch.Tensor, size: tuple[int, int], window, stride) -> torch.Tensor:
    """(N, positions) window values -> (N, 1, H, W): each pixel's mean over the windows covering it."""
    rows = (size[0] - window[0]) // stride[0] + 1
    cols = (size[1] - window[1]) // stride[1] + 1
    grid = values.view(-1, 1, rows, cols)
    kernel = values.new_ones(1, 1, *window)
    total = F.conv_transpose2d(grid, kernel, stride=stride)
    count = F.conv_transpose2d(torch.ones_like(grid[:1]), kernel, stride=stride)
    pad = (0, size[1] - total.shape[-1], 0, size[0] - total.shape[-2])
    return F.pad(total / count.clamp_min(1), pad)


def gaussian_blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel with a Gaussian of ``sigma`` pixels (reflected borders)."""
    radius = max(1, min(int(3 * sigma), min(inputs.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = inputs.shape[1]
    out = F.pad(inputs, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _index(resolved, i: int):
    return resolved[i:i + 1] if isinstance(resolved, torch.Tensor) else resolved


def _occlude(image: torch.Tensor, baseline: torch.Tensor, positions, window, origin=(0, 0), size=None) -> torch.Tensor:
    """A batch of copies of ``image[:, origin:origin+size]``, each with one window set to the baseline."""
    top, left = origin
    size = size or tuple(image.shape[-2:])
    crops = image[:, top:top + size[0], left:left + size[1]]
    batch = crops.expand(len(positions), *crops.shape).clone()
    for b, (y, x) in enumerate(positions):
        y0, y1 = max(y, top), min(y + window[0], top + size[0])
        x0, x1 = max(x, left), min(x + window[1], left + size[1])
        if y0 < y1 and x0 < x1:
            batch[b, :, y0 - top:y1 - top, x0 - left:x1 - left] = baseline[:, y0:y1, x0:x1]
    return batch


class _FullRunner:
    """One full forward pass per occluded image."""

    cut = None

    def prepare(self, clean_activations, index):
        pass

    def run(self, probe, image, baseline, positions, window):
        return probe(fast_layout(_occlude(image, baseline, positions, window)))


@dataclass
class _CutPlan:
    """Geometry of incremental evaluation up to layer ``name`` (per axis: rows, then columns)."""

    name: str
    stride: tuple[int, int]   # input pixels per activation position at the cut
    reach: tuple[tuple[int, int], tuple[int, int]]  # input pixels an activation depends on, before/after
    size: tuple[int, int]     # input size
    out_size: tuple[int, int]  # activation size at the cut
    box: tuple[int, int]      # activation positions recomputed per window
    crop: tuple[int, int]     # input pixels computed per window

    @classmethod
    def build(cls, name, reach_stride, activation, size, window) -> "_CutPlan | None":
        reach, stride = reach_stride
        if activation.ndim != 4:
            return None
        out_size = tuple(activation.shape[-2:])
        box, crop = [], []
        for axis in range(2):
            s, (before, after), n, h = stride[axis], reach[axis], size[axis], out_size[axis]
            if n % s or n // s != h:
                return None
            b = min(h, (window[axis] - 1 + before + after) // s + 2)
            c = min(n, _align((b - 1) * s + after + 1 + _align(before, s), s))
            box.append(b)
            crop.append(c)
        return cls(name, tuple(stride), tuple(reach), tuple(size), out_size, tuple(box), tuple(crop))

    @property
    def crop_fraction(self) -> float:
        return self.crop[0] * self.crop[1] / (self.size[0] * self.size[1])

    def place(self, axis: int, start: int) -> tuple[int, int]:
        """(first recomputed activation position, first crop pixel) for a window starting at ``start``."""
        s, (before, after) = self.stride[axis], self.reach[axis]
        box = min(max(-((after - start) // s), 0), self.out_size[axis] - self.box[axis])
        origin = min(max(box * s - _align(before, s), 0), self.size[axis] - self.crop[axis])
        return box, origin


class _CropRunner:
    """Occluded crops through the layers up to the cut; pasted into the clean activation there."""

    def __init__(self, plan: _CutPlan):
        self.plan = plan
        self.cut = plan.name
        self.active = False
        self._clean = None
        self._boxes = []
        self.pasted = None

    def prepare(self, clean_activations, index):
        self._clean = clean_activations[self.plan.name][index:index + 1]

    def run(self, probe, image, baseline, positions, window):
        plan = self.plan
        self._boxes, origins = [], []
        for y, x in positions:
            (by, oy), (bx, ox) = plan.place(0, y), plan.place(1, x)
            self._boxes.append((by, bx, oy // plan.stride[0], ox // plan.stride[1]))
            origins.append((oy, ox))
        crops = fast_layout(torch.stack([_occlude(image, baseline, [p], window, origin, plan.crop)[0]
                                         for p, origin in zip(positions, origins)]))
        self.active = True
        try:
            return probe(crops)
        finally:
            self.active = False

    def paste(self, output):
        if not self.active:
            return None
        (bh, bw), (h, w) = self.plan.box, self.plan.out_size
        expected = (len(self._boxes), self._clean.shape[1], *(c // s for c, s in zip(self.plan.crop, self.plan.stride)))
        if tuple(output.shape) != expected:
            raise RuntimeError(f"activation at {self.cut} has shape {tuple(output.shape)}, expected {expected}")
        pasted = self._clean.expand(len(self._boxes), -1, h, w).clone(memory_format=torch.preserve_format)
        for b, (by, bx, cy, cx) in enumerate(self._boxes):
            pasted[b, :, by:by + bh, bx:bx + bw] = output[b, :, by - cy:by - cy + bh, bx - cx:bx - cx + bw]
        self.pasted = pasted
        return pasted


def _align(value: int, step: int) -> int:
    return -(-value // step) * step


def _window_geometry(module: nn.Module) -> tuple[list[int], list[tuple[int, int]]] | None:
    """(strides, (reach before, reach after)) per axis of a windowed layer; None if not windowed."""
    if not isinstance(module, _WINDOWED):
        return None
    kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
    dilation = _pair(getattr(module, "dilation", 1))
    spans = [(k - 1) * d for k, d in zip(kernel, dilation)]
    padding = module.padding
    exact_padding = (type(module) in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d) and not getattr(module, "ceil_mode", False)
                     and getattr(module, "padding_mode", "zeros") == "zeros")
    if exact_padding and padding == "same":
        reach = [(span // 2, span - span // 2) for span in spans]
    elif exact_padding and padding == "valid":
        reach = [(0, span) for span in spans]
    elif exact_padding:
        reach = [(p, span - p) for p, span in zip(_pair(padding), spans)]
    else:  # padding decided in forward (TF 'SAME'), ceil mode...: assume any offset within the span
        reach = [(span, span) for span in spans]
    return list(stride), reach


def _cut_candidates(model: nn.Module, incremental: bool | str) -> dict[str, tuple]:
    """{layer: ((reach per axis), (stride per axis))} for the model's sequential stages with local layers only."""
    stages = []

    def visit(module, prefix):
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            stages.append(full)
            if type(child) is nn.Sequential:  # a subclass may have its own forward (a residual block)
                visit(child, full + ".")

    visit(model, "")
    if isinstance(incremental, str):
        stages = [incremental]
    leaves = []
    skip = None
    for name, module in model.named_modules():
        if not name or (skip and name.startswith(skip)):
            continue
        if isinstance(module, _WINDOWED + _POINTWISE) or not any(True for _ in module.children()):
            leaves.append((name, module))
            skip = name + "."
    states, stride, reach = [], [1, 1], [[0, 0], [0, 0]]
    for name, module in leaves:
        geometry = _window_geometry(module)
        if geometry is None and not isinstance(module, _POINTWISE):
            break
        if geometry is not None:
            for axis in range(2):
                reach[axis][0] += geometry[1][axis][0] * stride[axis]
                reach[axis][1] += geometry[1][axis][1] * stride[axis]
                stride[axis] *= geometry[0][axis]
        states.append((name, (tuple(map(tuple, reach)), tuple(stride))))
    cuts = {}
    for stage in stages:
        inside = [i for i, (name, _) in enumerate(leaves) if name == stage or name.startswith(stage + ".")]
        if inside and inside[-1] < len(states):
            cuts[stage] = states[inside[-1]][1]
    if isinstance(incremental, str) and not cuts:
        raise LayerNotFoundError(f"incremental occlusion cannot cut at {incremental!r}: only convolutions, pooling, "
                                 "batch norm and activations may come before the cut.")
    return cuts


def _prefix_costs(model: nn.Module, image: torch.Tensor, cuts: list[str]) -> dict:
    """Estimated cost (multiply-adds plus memory traffic) of the convolutions up to each cut, and in total."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    costs_by_conv = []
    with Probe(model, convs, detach=True) as probe:
        probe(image)
        for name in convs:
            module, out = get_layer(model, name), probe.activations.get(name)
            if out is None:
                continue
            per_output = module.in_channels // module.groups * math.prod(_pair(module.kernel_size))
            costs_by_conv.append((name, out[0].numel() * (per_output + 16)))
    total = sum(cost for _, cost in costs_by_conv)
    result = {None: total}
    for cut in cuts:
        names = [name for name, _ in model.named_modules()]
        end = max(i for i, name in enumerate(names) if name == cut or name.startswith(cut + "."))
        before = set(names[:end + 1])
        result[cut] = sum(cost for name, cost in costs_by_conv if name in before)
    return result
