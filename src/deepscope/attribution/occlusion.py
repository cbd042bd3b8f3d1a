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
A window changes only a cone of activations, so the first stages of the network run on crops around
the window and the results are pasted into the clean image's activations at a chain of cuts (see
:mod:`deepscope.attribution.incremental`). The chain is chosen by its estimated cost, or ends at the
stage named by ``incremental="features.6"``. Before it is used, a few windows are compared with full
forward passes; on a mismatch (a model whose forward is not a chain through its stages, a global
operation hidden in a block's ``forward``) the method warns and falls back to full forward passes.
The last cut used is stored in :attr:`cut_layer_` (``None``: full forward passes).

Approximate occlusion (opt-in, never exact)
-------------------------------------------
Krypton (Nakandala et al., SIGMOD 2019) approximates occlusion in two ways on top of the incremental path;
either can be used alone or both together.

Projective-field thresholding (``approximate=tau``): the box of recomputed positions at each cut is capped at
``ceil(tau * length)`` of the map's length per axis, centred on the positions the window's change reaches (see
:meth:`~deepscope.attribution.incremental.ConePlan.build`); the change outside it is dropped. Late layers,
where an exact cone covers nearly the whole map, then run on small crops, and the chain of cuts can go
deeper. ``tau=1`` caps nothing and gives the exact map.

Adaptive drill-down (``drill_down=fraction``): a coarse pass computes the windows on every ``coarse_factor``-th
row and column of the window grid (and on the last ones, so that every window lies between computed ones).
Then, per image, ``fraction`` of the windows it left out are computed as well: those in the cells of the coarse
grid whose corner drops differ most, where interpolation is least sure. The other windows get the bilinear
interpolation, on the window grid, of the coarse drops, and the map is made from all windows as usual. Every
computed window goes through the incremental path (thresholded too where ``approximate`` is set);
``drill_down=1`` computes every window and gives the exact map. Krypton drills into the regions of largest
coarse drops instead; on in20 photos that chose windows whose interpolation was already right, and gave lower
SSIMs than windows drawn at random.

Each approximate map is checked against the exact one: the windows on every ``check``-th row and column
of the window grid (about ``1 / check**2`` of them) are also computed by the exact incremental path, and
:attr:`ssim_` holds, per image, the SSIM (signed maps, the exact map's range) between the maps the two
give from those windows, each window widened to the sub-grid's stride so that the maps have no gaps
(with ``check=1``: the SSIM of the whole maps, where windows reach). With drill-down, the checked windows are
moved off the coarse grid -- the middle row and column of every ``ceil(check / coarse_factor)``-th gap between
its rows and columns -- so that each is a window the coarse pass left out (interpolated or drilled), as far from
a computed one as any. A warning names the images whose SSIM is below 0.9. ``check=0`` skips the check
(``ssim_`` is then ``None``, as it is for exact maps); where nothing is approximated (no box capped, no window
interpolated), the map is exact and ``ssim_`` is 1 without a check. :attr:`windows_` counts the windows computed
for the map and for the check.

What the approximations save and cost depends on the network. On the imported MobileNet-V2 (224 px, 16 px
windows, stride 4, 2,809 windows; measured on in20 photos) the exact path already crops everything before the
14x14 maps; what remains is the 14x14 and 7x7 blocks, whose exact cones cover the whole map. Thresholding them
drops changes that the global average pooling sums: ``tau=0.5`` is 1.6x faster than the exact path at an SSIM of
0.33-0.53 (2 photos); :data:`DEFAULT_TAU` keeps the SSIM above 0.9 by capping nothing there. Drill-down saves in
proportion to the windows it leaves out, but these maps have detail at the scale of the stride that no
interpolation recovers. On 20 photos (the second of each class), interpolating from every second row and column
alone (729 windows) gives an SSIM of 0.91 on average and 0.80 at worst; ``drill_down=0.1`` (937 windows) 0.92 and
0.83; 0.5 (1,769 windows) 0.97 and 0.91. Every third row and column (361 windows) falls to 0.83 on average, every
fourth (196) to 0.73. The defaults (:data:`DEFAULT_COARSE_FACTOR` 2, :data:`DEFAULT_DRILL_DOWN` 0.1) are 2.95x
faster than the exact path without the check and 2.66x with it (on the first photo of 4 classes, one thread; SSIM
0.90 on average there, 0.88 at worst); 4 of the 20 maps stay below 0.9: of the settings measured (coarse factors
2 to 6, fractions 0 to 0.5) none is 3x faster at 0.9 on every photo. The check's maps of single windows lack the
whole map's averaging over overlapping windows, which smooths interpolation errors out, so for drill-down its
SSIM is lower than the whole map's (at the defaults 0.58-0.86 where the whole map's is 0.83-0.97; it follows it,
correlation 0.88) and the warning is conservative there. The check adds 169 windows per photo at the defaults.
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
from deepscope.attribution.incremental import ConePlan, ConeRunner, conv_costs, local_stages, pair, plan_costs
from deepscope.errors import DeepscopeError
from deepscope.maps import Display
from deepscope.probe import Probe, fast_layout
from deepscope.targets import Target, repeat_target, resolve_target, target_scores

BASELINES = ("zero", "mean", "blur")
SCORES = ("logit", "probability")
#: approximate maps whose checked SSIM against the exact map is lower get a warning
MIN_SSIM = 0.9
#: the projective-field threshold of ``approximate=True``: the smallest that keeps the SSIM of the imported
#: MobileNet-V2's maps (16 px windows, in20 photos) above 0.9 -- which on that model caps nothing: every cap
#: of its 7x7 maps drops changes its global average pooling sums (tau 0.75: SSIM 0.6-0.7, tau 0.5: 0.3-0.5)
DEFAULT_TAU = 0.9
#: the fraction of ``drill_down=True`` and the default ``coarse_factor``: about 3x faster than the exact path at an
#: SSIM of 0.92 on average on in20 photos with the imported MobileNet-V2, 16 px windows at stride 4 (0.83 at worst;
#: see the module docstring)
DEFAULT_DRILL_DOWN = 0.1
DEFAULT_COARSE_FACTOR = 2

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
        Compute the first stages on crops around each window (exact, see above); a stage name ends
        the chain of cuts there. ``False``: a full forward pass per window.
    progress : bool
        Progress bar over window batches.
    approximate : float in (0, 1], True or None
        Projective-field threshold ``tau`` of approximate occlusion (see above); ``True``: :data:`DEFAULT_TAU`;
        ``None`` or ``False``: the exact map.
    drill_down : float in [0, 1], True or None
        Adaptive drill-down (see above): after a coarse pass, the fraction of the windows it left out that are
        computed, where its drops vary most; the others are interpolated. ``True``:
        :data:`DEFAULT_DRILL_DOWN`; ``None``, ``False`` or 1: every window is computed.
    coarse_factor : int >= 2
        With ``drill_down`` only: the coarse pass computes every ``coarse_factor``-th row and column of windows
        (and the last).
    check : int
        Approximate maps only: windows on every ``check``-th row and column (with ``drill_down``: off the
        coarse pass's rows and columns) are also computed exactly to report :attr:`ssim_`; 0 skips the check.

    Attributes
    ----------
    cut_layer_ : str or None
        The last cut of the incremental path in the last call (``None``: full forward passes).
    ssim_ : (N,) tensor or None
        Approximate maps: each map's SSIM against the exact map on the checked windows.
    windows_ : (int, int)
        Windows computed per image in the last call: for the map, and (exactly) for the check.
    """

    name = "occlusion"
    #: a window can raise the score as well as lower it
    display = Display(signed=True)

    def __init__(self, model: nn.Module, window=16, stride=8, baseline: str | float = "zero",
                 score: str = "logit", batch_size: int = 64, incremental: bool | str = True, progress: bool = False,
                 approximate: float | bool | None = None, drill_down: float | bool | None = None,
                 coarse_factor: int = DEFAULT_COARSE_FACTOR, check: int = 4):
        super().__init__(model)
        self.window, self.stride = pair(window), pair(stride)
        if min(self.window) < 1 or min(self.stride) < 1:
            raise DeepscopeError(f"occlusion window and stride must be positive, got {window} and {stride}.")
        if not isinstance(baseline, (int, float)) and baseline not in BASELINES:
            raise DeepscopeError(f"unknown occlusion baseline {baseline!r}; use one of {', '.join(BASELINES)} or a number.")
        if score not in SCORES:
            raise DeepscopeError(f"unknown occlusion score {score!r}; use logit or probability.")
        if batch_size < 1:
            raise DeepscopeError(f"batch_size must be positive, got {batch_size}.")
        approximate = {True: DEFAULT_TAU, False: None}.get(approximate, approximate) \
            if isinstance(approximate, bool) else approximate
        if approximate is not None and not (isinstance(approximate, (int, float)) and 0 < approximate <= 1):
            raise DeepscopeError(f"approximate (the projective-field threshold tau) must be in (0, 1], got "
                                 f"{approximate!r}; use None for the exact map.")
        if approximate is not None and incremental is False:
            raise DeepscopeError("approximate occlusion thresholds the incremental path; use incremental=True "
                                 "(or a stage name) with approximate, or approximate=None.")
        drill_down = {True: DEFAULT_DRILL_DOWN, False: None}[drill_down] if isinstance(drill_down, bool) else drill_down
        if drill_down is not None and not (isinstance(drill_down, (int, float)) and 0 <= drill_down <= 1):
            raise DeepscopeError(f"drill_down (the fraction of the windows left out by the coarse pass that are "
                                 f"computed) must be in [0, 1], got {drill_down!r}; use None for the exact map.")
        if isinstance(coarse_factor, bool) or not isinstance(coarse_factor, int) or coarse_factor < 2:
            raise DeepscopeError(f"coarse_factor (the coarse pass computes every n-th row and column of windows) must "
                                 f"be a whole number >= 2, got {coarse_factor!r}.")
        if not isinstance(check, int) or check < 0:
            raise DeepscopeError(f"check must be a whole number >= 0 (0: no exact check), got {check!r}.")
        if isinstance(incremental, str):
            local_stages(model, incremental)
        self.baseline = baseline
        self.score = score
        self.batch_size = batch_size
        self.incremental = incremental
        self.progress = progress
        self.approximate = approximate
        self.drill_down = drill_down
        self.coarse_factor = coarse_factor
        self.check = check
        self.cut_layer_: str | None = None
        self.ssim_: torch.Tensor | None = None
        self.windows_: tuple[int, int] = (0, 0)

    # -- the protocol ------------------------------------------------------------------------------------
    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        n, _, height, width = inputs.shape
        positions = window_positions((height, width), self.window, self.stride)
        grid = window_grid((height, width), self.window, self.stride)
        starts = torch.tensor(positions).view(-1, 2)  # geometry stays on the host: no device syncs per batch
        baselines = self.baseline_images(inputs)
        stages, costs = [], []
        if self.incremental:
            stages = local_stages(self.model, self.incremental if isinstance(self.incremental, str) else None)
        if self.incremental is True:  # the chain is chosen by estimated cost
            costs = conv_costs(self.model, inputs[:1])
        with Probe(self.model, [stage.name for stage in stages], detach=True) as probe, torch.inference_mode():
            clean = probe(fast_layout(inputs))
            resolved = resolve_target(target, clean)
            clean_scores = self._scores(clean, resolved)
            references = {name: value for name, value in probe.activations.items() if value.ndim == 4}
            runner = ConeRunner(probe, stages) if stages else None
            chosen = [probe, runner, stages, costs, references, inputs, baselines, starts]
            exact = plan = self._choose_plan(*chosen) if stages else None
            if plan and self.approximate is not None:
                plan = self._choose_plan(*chosen, tau=self.approximate) or exact
            self.cut_layer_ = plan.last if plan else None
            capped = plan is not None and any(any(segment.thresholded) for segment in plan.segments)
            coarse = CoarseGrid.build(grid, self.coarse_factor) \
                if self.drill_down is not None and self.drill_down < 1 else None
            drilled = coarse.drilled_count(self.drill_down) if coarse else 0
            computed = len(coarse.indices) + drilled if coarse else len(positions)
            interpolated = computed < len(positions)
            lines, spacing = self._checked_lines(grid, coarse if interpolated else None) \
                if (capped or interpolated) and self.check else (([], []), 0)
            checked = [row * grid[1] + col for row in lines[0] for col in lines[1]]
            self.windows_ = (computed, len(checked))
            bar = tqdm(total=n * sum(self.windows_), desc="occlusion", unit="window",
                       disable=not self.progress, leave=False)
            run = [probe, runner, references, inputs, baselines, resolved, clean_scores, bar]
            drops = self._drill_down(coarse, drilled, plan, starts, run) if interpolated \
                else self._drops(plan, starts, *run)
            # a map that nothing approximated is exact (a plan that caps nothing was checked against full passes)
            approximating = self.approximate is not None or self.drill_down is not None
            self.ssim_ = inputs.new_ones(n) if approximating and not (capped or interpolated) else None
            if checked:  # the exact map from a sub-grid of windows, against the approximate one from the same
                truth = self._drops(exact, starts[checked], *run)
                self.ssim_ = self._sub_grid_ssim(drops[:, checked], truth, tuple(map(len, lines)), spacing)
                low = [i for i, value in enumerate(self.ssim_.tolist()) if not value >= MIN_SSIM]
                if low:
                    settings = ([f"tau={self.approximate}"] if capped else []) + \
                        ([f"drill_down={self.drill_down}, coarse_factor={self.coarse_factor}"] if interpolated else [])
                    advice = (["a larger tau or approximate=None"] if capped else []) + \
                        (["a larger drill_down, a smaller coarse_factor or drill_down=None"] if interpolated else [])
                    warnings.warn(f"approximate occlusion ({', '.join(settings)}): SSIM against the exact map on "
                                  f"checked windows is below {MIN_SSIM} for image(s) {low} (lowest "
                                  f"{float(self.ssim_.min()):.3f}); use {'; '.join(advice)}.", stacklevel=3)
            bar.close()
        return spread_windows(drops.clone(), (height, width), self.window, self.stride)

    def _drops(self, plan, starts, probe, runner, references, inputs, baselines, resolved, clean_scores, bar):
        """(N, K) drops of the target score for windows at ``starts``, (K, 2) for every image or (N, K, 2) one row
        per image, computed through ``plan``."""
        drops = inputs.new_empty(len(inputs), starts.shape[-2])
        if plan:  # only the plan's cuts are pasted into
            references = {segment.name: references[segment.name] for segment in plan.segments}
        for i in range(len(inputs)):
            if plan:
                runner.set_reference({name: value[i:i + 1] for name, value in references.items()})
            sample_target = _index(resolved, i)
            image_starts = starts[i] if starts.ndim == 3 else starts
            for start in range(0, len(image_starts), self.batch_size):
                chunk = image_starts[start:start + self.batch_size]
                output = self._occluded_output(probe, runner, plan, inputs[i], baselines[i], chunk)
                scores = self._scores(output, repeat_target(sample_target, len(chunk)))
                drops[i, start:start + len(chunk)] = clean_scores[i] - scores
                probe.activations.clear()  # captured stages are needed only for the clean pass
                bar.update(len(chunk))
        return drops

    def _drill_down(self, coarse: "CoarseGrid", count: int, plan, starts, run) -> torch.Tensor:
        """(N, windows) drops by adaptive drill-down: the coarse pass, then per image the ``count`` windows where its
        drops vary most; the others interpolated from the coarse pass."""
        sampled = self._drops(plan, starts[coarse.indices], *run)
        drops = coarse.interpolate(sampled)
        drops[:, coarse.indices] = sampled  # interpolation reproduces them; this makes it exact to the bit
        chosen = coarse.roughest(sampled, count)
        drops.scatter_(1, chosen, self._drops(plan, starts[chosen], *run))
        return drops

    def _checked_lines(self, grid: tuple[int, int], coarse: "CoarseGrid | None"
                       ) -> tuple[tuple[list[int], list[int]], int]:
        """The rows and columns of the window grid whose windows the check computes exactly, and their spacing in
        windows: every ``check``-th, or every fewer where fewer than 7 rows or columns would be left. With drill-down
        (``coarse``), the middle row and column of every ``ceil(check / coarse_factor)``-th gap between the coarse
        pass's rows and columns (along an axis where they leave no gap, those rows or columns themselves), so that no
        checked window is one the coarse pass computed."""
        if coarse is None:
            lines, unit = [list(range(length)) for length in grid], 1
        else:
            lines = [middles or list(line) for middles, line in zip(coarse.middles(), coarse.lines)]
            unit = coarse.factor
        every = math.ceil(self.check / unit)
        while every > 1 and min(math.ceil(len(line) / every) for line in lines) < 7:
            every -= 1
        return (lines[0][::every], lines[1][::every]), every * unit

    def _sub_grid_ssim(self, values: torch.Tensor, truth: torch.Tensor, shape: tuple[int, int],
                       spacing: int) -> torch.Tensor:
        """(N,) SSIM of the maps from a sub-grid of ``shape`` windows, ``spacing`` strides apart (each window widened
        to the sub-grid's stride, so that the maps have no gaps), against the exact ones from the same windows."""
        sub_stride = (self.stride[0] * spacing, self.stride[1] * spacing)
        cell = (max(self.window[0], sub_stride[0]), max(self.window[1], sub_stride[1]))
        size = tuple((count - 1) * step + side for count, step, side in zip(shape, sub_stride, cell))
        return map_ssim(spread_windows(values.clone(), size, cell, sub_stride),
                        spread_windows(truth, size, cell, sub_stride))

    def _occluded_output(self, probe, runner, plan, image, baseline, starts) -> torch.Tensor:
        """The model's output for ``image`` with a window at each of ``starts`` set to ``baseline``."""
        if plan is None:
            return probe(fast_layout(_occlude(image, baseline, starts, self.window)))
        placement = plan.place(starts)
        crops = _occlude(image, baseline, starts, self.window, placement.origins[0], plan.input_crop)
        return runner.run(plan, crops, placement)

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
    def _choose_plan(self, probe, runner, stages, costs, references, inputs, baselines, starts,
                     tau: float | None = None) -> ConePlan | None:
        """The cheapest chain of cuts that reproduces full forward passes on a few windows (or None).

        With ``tau``, the chain is chosen by the cost of its approximate plan, checked through its exact twin,
        and returned approximate.
        """
        sizes = {name: tuple(value.shape[-2:]) for name, value in references.items()}
        usable, size = [s for s in stages if s.name in sizes], tuple(inputs.shape[-2:])
        longest = ConePlan.build(usable, sizes, size, self.window)
        if not longest.segments:
            return None
        chosen = longest if tau is None else ConePlan.build(usable, sizes, size, self.window, tau)
        if isinstance(self.incremental, str):
            counts = [len(longest.segments)]
        else:
            channels = {name: value.shape[1] for name, value in references.items()}
            totals = plan_costs(self.model, chosen, costs, channels)
            full = sum(cost for _, cost in costs)
            counts = [count for total, count in sorted((total, count) for count, total in enumerate(totals, start=1)
                                                       if total < 0.9 * full)]
        failures = []
        runner.set_reference({name: value[:1] for name, value in references.items()})
        check = starts[[0, len(starts) // 2, len(starts) - 1]]
        for count in counts[:3]:
            plan = longest.truncated(count)
            try:
                fast = self._occluded_output(probe, runner, plan, inputs[0], baselines[0], check)
                pasted = runner.pasted[plan.last]
                full = self._occluded_output(probe, runner, None, inputs[0], baselines[0], check)
                truth = probe.activations[plan.last]
                # compare at the cut too: a global operation before it may barely move the outputs
                if (torch.allclose(pasted, truth, rtol=1e-5, atol=1e-5 * float(truth.abs().max()))
                        and torch.allclose(fast, full, rtol=1e-4, atol=1e-4 * float(full.abs().max().clamp_min(1)))):
                    return chosen.truncated(count)
                failures.append(f"at {plan.last}: crop results differ from full forward passes")
            except RuntimeError as error:  # the model is not a chain through the cuts (shapes differ)
                failures.append(f"at {plan.last}: {str(error).splitlines()[0]}")
        if failures:
            warnings.warn(f"occlusion: incremental evaluation is not exact for this model ({'; '.join(failures)}); "
                          "using full forward passes.", stacklevel=4)
        return None


def window_positions(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of all windows that fit in ``size`` (row-major), as captum enumerates them."""
    if window[0] > size[0] or window[1] > size[1]:
        raise DeepscopeError(f"occlusion window {window} is larger than the input {size}; use a smaller window.")
    return [(y, x) for y in range(0, size[0] - window[0] + 1, stride[0])
            for x in range(0, size[1] - window[1] + 1, stride[1])]


def window_grid(size: tuple[int, int], window, stride) -> tuple[int, int]:
    """(rows, columns) of the grid of window positions that fit in ``size``."""
    return (size[0] - window[0]) // stride[0] + 1, (size[1] - window[1]) // stride[1] + 1


@dataclass(frozen=True)
class CoarseGrid:
    """Adaptive drill-down's coarse pass on a grid of ``shape`` (rows, columns) windows: the windows on every
    ``factor``-th row and column and on the last (so that every window lies between computed ones), ``lines``."""

    shape: tuple[int, int]
    factor: int
    lines: tuple[tuple[int, ...], tuple[int, ...]]

    @classmethod
    def build(cls, shape: tuple[int, int], factor: int) -> "CoarseGrid":
        lines = tuple(tuple(sorted({*range(0, length, factor), length - 1})) for length in shape)
        return cls(tuple(shape), factor, lines)

    @property
    def indices(self) -> list[int]:
        """Row-major indices (in the whole grid) of the windows the coarse pass computes."""
        return [row * self.shape[1] + col for row in self.lines[0] for col in self.lines[1]]

    def drilled_count(self, fraction: float) -> int:
        """How many windows the drill-down computes: ``fraction`` of those the coarse pass leaves out, rounded."""
        return round(fraction * (self.shape[0] * self.shape[1] - len(self.indices)))

    def interpolate(self, values: torch.Tensor) -> torch.Tensor:
        """(N, coarse windows) values -> (N, windows): bilinear on the window grid between the coarse windows."""
        rows, cols = (_linear_weights(length, line).to(values) for length, line in zip(self.shape, self.lines))
        grid = values.reshape(-1, len(self.lines[0]), len(self.lines[1]))
        return (rows @ grid @ cols.T).reshape(len(values), -1)

    def roughest(self, values: torch.Tensor, count: int) -> torch.Tensor:
        """(N, count) row-major indices of the windows left out of the coarse pass whose cell's coarse values (at its
        corners) differ most, per image: where interpolation is least sure. Ties go in row-major order."""
        grid = values.reshape(-1, len(self.lines[0]), len(self.lines[1]))
        (top, bottom), (left, right) = (_brackets(length, line) for length, line in zip(self.shape, self.lines))
        corners = torch.stack([grid[:, rows][:, :, cols] for rows in (top, bottom) for cols in (left, right)])
        spread = (corners.amax(dim=0) - corners.amin(dim=0)).reshape(len(values), -1)
        spread[:, self.indices] = -math.inf
        return spread.argsort(dim=1, descending=True, stable=True)[:, :count].sort(dim=1).values

    def middles(self) -> list[list[int]]:
        """Per axis, the middle row (column) of each gap between the coarse pass's rows (columns)."""
        return [[(a + b) // 2 for a, b in zip(line, line[1:]) if b - a > 1] for line in self.lines]


def _brackets(length: int, line: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each index ``0 .. length - 1``, the positions in ``line`` of the last entry <= it and the first >= it."""
    nodes, index = torch.tensor(line), torch.arange(length)
    return torch.searchsorted(nodes, index, right=True) - 1, torch.searchsorted(nodes, index)


def _linear_weights(length: int, line: tuple[int, ...]) -> torch.Tensor:
    """(length, len(line)) weights that interpolate values at the indices ``line`` linearly to every index."""
    low, high = _brackets(length, line)
    nodes, index = torch.tensor(line, dtype=torch.float64), torch.arange(length, dtype=torch.float64)
    gap = (nodes[high] - nodes[low]).clamp_min(1)
    share = (index - nodes[low]) / gap  # 0 at a node (low == high)
    weights = torch.zeros(length, len(line), dtype=torch.float64)
    weights.index_put_((torch.arange(length), low), 1 - share, accumulate=True)
    weights.index_put_((torch.arange(length), high), share, accumulate=True)
    return weights


def spread_windows(values: torch.Tensor, size: tuple[int, int], window, stride) -> torch.Tensor:
    """(N, positions) window values -> (N, 1, H, W): each pixel's mean over the windows covering it."""
    grid = values.view(-1, 1, *window_grid(size, window, stride))
    kernel = values.new_ones(1, 1, *window)
    total = F.conv_transpose2d(grid, kernel, stride=stride)
    count = F.conv_transpose2d(torch.ones_like(grid[:1]), kernel, stride=stride)
    pad = (0, size[1] - total.shape[-1], 0, size[0] - total.shape[-2])
    return F.pad(total / count.clamp_min(1), pad)


def map_ssim(maps: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(N,) SSIM (Wang et al. 2004, scikit-image's, 7x7 window) of (N, 1, H, W) signed maps against reference maps,
    with each reference map's range as the data range."""
    from skimage.metrics import structural_similarity

    values = []
    for a, b in zip(maps[:, 0].double().cpu().numpy(), reference[:, 0].double().cpu().numpy()):
        side = min(a.shape)
        window = min(7, side if side % 2 else side - 1)
        values.append(structural_similarity(a, b, win_size=window, data_range=max(float(b.max() - b.min()), 1e-12)))
    return torch.tensor(values, dtype=maps.dtype, device=maps.device)


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


def _occlude(image: torch.Tensor, baseline: torch.Tensor, starts: torch.Tensor, window, origins=None,
             size=None) -> torch.Tensor:
    """A batch of crops of ``image`` (at ``origins``, of ``size``; default the whole image), each with the
    window at the matching row of ``starts`` set to the baseline."""
    size = size or tuple(image.shape[-2:])
    corners = starts.tolist()
    tops = origins.tolist() if origins is not None else [(0, 0)] * len(corners)
    batch = image.new_empty(len(corners), image.shape[0], *size)
    for b, ((y, x), (top, left)) in enumerate(zip(corners, tops)):
        batch[b] = image[:, top:top + size[0], left:left + size[1]]
        y0, y1 = max(y, top), min(y + window[0], top + size[0])
        x0, x1 = max(x, left), min(x + window[1], left + size[1])
        if y0 < y1 and x0 < x1:
            batch[b, :, y0 - top:y1 - top, x0 - left:x1 - left] = baseline[:, y0:y1, x0:x1]
    return batch
