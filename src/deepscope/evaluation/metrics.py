"""Every faithfulness metric by its short name: what it needs, which way is better, where chance lies, its cost.

Each :class:`MetricEntry` declares

- ``function``: the metric's public function and ``value``, how its result becomes one number per image;
- ``needs``: ``"maps"`` (``function(model, inputs, maps, target, **options)``: tensors only) or
  ``"method"`` (``function(method, model, inputs, target, **options)`` with a builder ``model -> explainer``,
  for the metrics that explain perturbed inputs or randomised models); never a method's name;
- ``direction``: ``"higher"`` or ``"lower"`` is better;
- ``chance``: the value of a map that knows nothing, where the metric defines one (``None`` otherwise),
  and in words how the controls (:mod:`deepscope.attribution.controls`) show it;
- ``cost``: a key of :data:`COSTS` and, in ``passes``, how many model passes one image costs;
- ``options``: the options a caller may set (:class:`deepscope.catalogue.Option`, checked; unknown names raise).

:meth:`MetricEntry.compute` runs a metric and returns its (N,) values. The grid pointing game needs labelled
photos and mosaics rather than one batch: it is :func:`~deepscope.evaluation.pointing_game.grid_pointing_game`.

Example
-------
>>> entry = METRICS["road-gap"]
>>> values = entry.compute(model, inputs, maps)                       # maps: a tensor
>>> values = METRICS["sensitivity-max"].compute(model, inputs, Gradient)  # a builder model -> explainer
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepscope.catalogue import Option
from deepscope.errors import DeepscopeError, did_you_mean
from deepscope.evaluation.confidence import confidence_change
from deepscope.evaluation.deletion_insertion import deletion_curve, insertion_curve
from deepscope.evaluation.infidelity import infidelity, sensitivity_max
from deepscope.evaluation.mprt import efficient_mprt, smooth_mprt, smooth_mprt_score
from deepscope.evaluation.perturbation import BASELINES
from deepscope.evaluation.pixel_flipping import irof, pixel_flipping, region_perturbation
from deepscope.evaluation.randomization import cascading_randomization
from deepscope.evaluation.road import road
from deepscope.targets import Target

#: cost classes, from cheapest: what one image costs
COSTS = {
    "forward": "a forward pass of the image and one of a perturbed copy",
    "forwards": "a fixed number of forward passes (steps, regions, segments, perturbations)",
    "imputations": "a forward pass and a sparse linear solve per percentage and order",
    "explanations": "a number of explanations (of perturbed inputs or randomised models)",
}
NEEDS = ("maps", "method")
DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class MetricEntry:
    """A metric of the catalogue (see the module docstring for the fields)."""

    name: str
    function: Callable[..., Any]
    value: Callable[[Any], torch.Tensor]
    direction: str
    paper: str
    summary: str
    needs: str = "maps"
    cost: str = "forwards"
    passes: str = ""
    chance: float | None = None
    chance_note: str = ""
    options: tuple[Option, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.direction not in DIRECTIONS or self.needs not in NEEDS or self.cost not in COSTS:
            raise ValueError(f"{self.name}: bad direction, needs or cost")

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options, each checked; an unknown name raises, naming the valid ones."""
        valid = {option.name: option for option in self.options}
        checked = {}
        for name, value in options.items():
            if name not in valid:
                raise DeepscopeError(f"{self.name}: unknown option {name!r}.{did_you_mean(name, valid)} "
                                     f"Its options: {', '.join(valid) or 'none'}.")
            checked[name] = valid[name].check(self.name, value)
        return checked

    def compute(self, model: nn.Module, inputs: torch.Tensor, explanation, target: Target = None, *,
                reduction: str | None = None, **options) -> torch.Tensor:
        """(N,) values of the metric: ``explanation`` is maps (N, C, h, w) or a builder ``model -> explainer``,
        as :attr:`needs` says. ``reduction`` (a method's ``display.reduction``) is how a metric that ranks
        pixels reduces a map's channels, so that it ranks them as they are shown; the others ignore it."""
        checked = {**self.fixed, **self.check_options(options)}
        if reduction is not None and self.ranks_pixels:
            checked["reduction"] = reduction
        if self.needs == "maps":
            if not isinstance(explanation, torch.Tensor):
                raise DeepscopeError(f"{self.name} scores maps: pass the maps tensor, "
                                     f"got {type(explanation).__name__}.")
            result = self.function(model, inputs, explanation, target, **checked)
        else:
            if isinstance(explanation, torch.Tensor) or not callable(explanation):
                raise DeepscopeError(f"{self.name} explains again: pass a builder model -> explainer (e.g. Gradient), "
                                     f"got {type(explanation).__name__}.")
            result = self.function(explanation, model, inputs, target, **checked)
        return self.value(result)

    @property
    def ranks_pixels(self) -> bool:
        """Whether the metric's function reduces a map's channels (takes ``reduction``)."""
        return "reduction" in inspect.signature(self.function).parameters

    @property
    def header(self) -> str:
        """The metric's column header: its name and which way is better."""
        return f"{self.name} ({self.direction} is better" + ("" if self.chance is None else f", chance {self.chance:g}") + ")"

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is better than ``b``."""
        return a > b if self.direction == "higher" else a < b


def _batch(default: int) -> Option:
    return Option("batch_size", int, default, "inputs per forward pass (memory stays bounded)", minimum=1)


def _explained_per_call() -> Option:
    return Option("batch_size", int, None, "images explained per call (default: all at once)", minimum=1,
                  optional=True)


def _seed(what: str) -> Option:
    return Option("seed", int, 0, f"seed of {what}")


#: baselines that need no seed (``uniform`` noise is region perturbation's, which takes one)
_BASELINE_NAMES = tuple(b for b in BASELINES if b != "uniform")
_ROAD_OPTIONS = (Option("noise", float, 0.01, "standard deviation of the imputation noise (model-input units)",
                        minimum=0), _seed("the imputation noise"), _batch(32))
_ROAD_NOTE = "the random control removes random pixels in both orders: its MoRF and LeRF agree (gap 0)"
_ORDER_NOTE = "the random control ranks features at random: the value of a random order"

#: every metric, in the order a table shows them
METRICS: dict[str, MetricEntry] = {entry.name: entry for entry in [
    MetricEntry("deletion", deletion_curve, lambda r: r.auc, "lower", "Petsiuk, Das & Saenko 2018",
                "area under the probability curve as the most salient pixels are deleted",
                passes="steps + 1 forwards", chance_note=_ORDER_NOTE,
                options=(Option("steps", int, 50, "deletion steps", minimum=1),
                         Option("baseline", str, "zero", "what deleted pixels become", choices=_BASELINE_NAMES),
                         _batch(64))),
    MetricEntry("insertion", insertion_curve, lambda r: r.auc, "higher", "Petsiuk, Das & Saenko 2018",
                "area under the probability curve as the most salient pixels are revealed on a blurred image",
                passes="steps + 2 forwards", chance_note=_ORDER_NOTE,
                options=(Option("steps", int, 50, "insertion steps", minimum=1),
                         Option("baseline", str, "blur", "the image pixels are revealed on", choices=_BASELINE_NAMES),
                         _batch(64))),
    MetricEntry("pixel-flipping", pixel_flipping, lambda r: r.auc, "lower", "Bach et al. 2015; Samek et al. 2017",
                "area under the probability curve as features are flipped to the image's minimum, most relevant first",
                passes="H * W / features_per_step forwards", chance_note=_ORDER_NOTE,
                options=(Option("features_per_step", int, 1024, "pixels flipped per step (49 steps at 224 px; "
                                "the paper flips one, a forward pass per pixel)", minimum=1),
                         Option("baseline", str, "min", "what flipped pixels become", choices=_BASELINE_NAMES),
                         _batch(64))),
    MetricEntry("region-perturbation", region_perturbation, lambda r: r.aopc, "higher", "Samek et al. 2017",
                "AOPC: mean drop of the probability as patches are replaced by noise, most relevant first",
                passes="regions + 1 forwards", chance_note=_ORDER_NOTE,
                options=(Option("patch", int, 8, "side of a region in pixels", minimum=1),
                         Option("regions", int, 100, "regions replaced", minimum=1),
                         Option("baseline", str, "uniform", "what replaced regions become", choices=BASELINES),
                         _seed("the uniform noise"), _batch(64))),
    MetricEntry("irof", irof, lambda r: r.aoc, "higher", "Rieger & Hansen 2020",
                "area over the relative-probability curve as SLIC superpixels are replaced by the mean colour",
                passes="one forward per superpixel (about n_segments)", chance_note=_ORDER_NOTE,
                options=(Option("n_segments", int, 100, "SLIC's target number of superpixels", minimum=1),
                         Option("baseline", str, "mean", "what removed superpixels become", choices=_BASELINE_NAMES),
                         _batch(64))),
    MetricEntry("road-morf", road, lambda r: r.morf_mean, "lower", "Rong et al. 2022",
                "mean probability after removing 10..90 % most relevant pixels, noisily imputed",
                cost="imputations", passes="9 forwards and solves", chance_note=_ROAD_NOTE,
                options=_ROAD_OPTIONS, fixed={"orders": ("morf",)}),
    MetricEntry("road-lerf", road, lambda r: r.lerf_mean, "higher", "Rong et al. 2022",
                "mean probability after removing 10..90 % least relevant pixels, noisily imputed",
                cost="imputations", passes="9 forwards and solves", chance_note=_ROAD_NOTE,
                options=_ROAD_OPTIONS, fixed={"orders": ("lerf",)}),
    MetricEntry("road-gap", road, lambda r: r.gap, "higher", "Rong et al. 2022",
                "ROAD's LeRF minus MoRF mean probability", cost="imputations", passes="18 forwards and solves",
                chance=0.0, chance_note=_ROAD_NOTE, options=_ROAD_OPTIONS),
    MetricEntry("infidelity", infidelity, lambda r: r, "lower", "Yeh et al. 2019",
                "squared error of the map as a linear model of the logit under Gaussian perturbations",
                passes="samples + 1 forwards",
                chance_note="no fixed chance level; compare with the random control",
                options=(Option("samples", int, 50, "perturbations per image", minimum=1),
                         Option("sigma", float, 0.1, "perturbation standard deviation (model-input units)",
                                minimum=1e-12),
                         Option("normalize", bool, True, "scale each map optimally first"),
                         _seed("the perturbations"), _batch(64))),
    MetricEntry("sensitivity-max", sensitivity_max, lambda r: r, "lower", "Yeh et al. 2019",
                "largest relative change of the map when the input moves uniformly within a small radius",
                needs="method", cost="explanations", passes="samples + 1 explanations",
                chance_note="a map redrawn at random each call (the random control) moves by about 0.7",
                options=(Option("samples", int, 10, "perturbations per image", minimum=1),
                         Option("radius", float, 0.02, "largest change of an input value (model-input units)",
                                minimum=1e-12),
                         Option("common_noise", bool, True, "one perturbation per call, so a seeded stochastic "
                                "explainer (SmoothGrad) draws the same noise as for the unperturbed map"),
                         _seed("the perturbations"),
                         Option("batch_size", int, 16, "images explained per call", minimum=1))),
    MetricEntry("average-drop", confidence_change, lambda r: r.drop, "lower", "Chattopadhay et al. 2018",
                "relative drop of the probability on the image times its map (mean over images)",
                cost="forward", passes="2 forwards",
                chance_note="no fixed chance level; compare with the random control",
                options=(_batch(64),)),
    MetricEntry("increase-in-confidence", confidence_change, lambda r: r.increase, "higher",
                "Chattopadhay et al. 2018", "share of images whose probability rises on the image times its map",
                cost="forward", passes="2 forwards",
                chance_note="no fixed chance level; compare with the random control",
                options=(_batch(64),)),
    MetricEntry("cascading-randomization", cascading_randomization, lambda r: r.spearman[1], "lower",
                "Adebayo et al. 2018", "rank correlation of |maps| after randomising the output layer",
                needs="method", cost="explanations", passes="max_steps + 2 explanations", chance=1.0,
                chance_note="the random control, rebuilt with its seed, keeps its maps: correlation 1",
                options=(Option("depth", int, None, "group layers into blocks of this many dotted parts",
                                minimum=1, optional=True),
                         Option("max_steps", int, 1, "layers randomised", minimum=1, optional=True),
                         _seed("the randomisation"), _explained_per_call())),
    MetricEntry("emprt", efficient_mprt, lambda r: r.rise, "higher", "Hedström et al. 2023",
                "relative rise of the maps' histogram entropy when every layer is randomised",
                needs="method", cost="explanations", passes="2 explanations", chance=0.0,
                chance_note="the random control, rebuilt with its seed, keeps its maps: rise 0",
                options=(Option("bins", int, 100, "histogram bins", minimum=1), _seed("the randomisation"),
                         _explained_per_call())),
    MetricEntry("smprt", smooth_mprt, smooth_mprt_score, "lower", "Hedström et al. 2023",
                "mean rank correlation of noise-averaged |maps| as layers are randomised bottom-up",
                needs="method", cost="explanations", passes="samples x (steps + 2) explanations", chance=1.0,
                chance_note="the random control, rebuilt with its seed, keeps its maps: correlation 1",
                options=(Option("samples", int, 50, "noisy copies averaged per map", minimum=1),
                         Option("noise", float, 0.1, "noise standard deviation as a fraction of the image's range",
                                minimum=0),
                         Option("depth", int, None, "group layers into blocks of this many dotted parts",
                                minimum=1, optional=True),
                         Option("max_steps", int, None, "layers randomised (the first ones from the input)",
                                minimum=1, optional=True),
                         _seed("the noise and the randomisation"),
                         Option("batch_size", int, 50, "noisy copies explained per call", minimum=1))),
]}


def get_metric(name: str) -> MetricEntry:
    """The entry called ``name``; a DeepscopeError listing the metrics otherwise."""
    if name not in METRICS:
        raise DeepscopeError(f"unknown metric {name!r}.{did_you_mean(str(name), METRICS)} "
                             f"Choose from: {', '.join(METRICS)}.")
    return METRICS[name]
