"""Every attribution method by its short name: the options it takes, how its maps are shown, what it costs.

The command line, the report, the trust table, the explorer and the dataset jobs build every method through
:func:`build_method`, so a method added here appears everywhere. Each :class:`MethodEntry` declares

- its options (:class:`Option`: name, type, default, meaning, valid range). Each option means one thing:
  ``layer`` is always the layer whose maps a CAM weights; a method that explains a layer's channel instead
  of a class takes ``neuron_layer`` in the library (:class:`~deepscope.attribution.gradient.Gradient`) and is
  not a catalogue option, since catalogue methods explain classes;
- its display (:class:`~deepscope.maps.Display`: how channels become one map, whether the sign means
  something), read from the method class;
- its cost class (:data:`COSTS`): how many model passes a map needs.

An unknown or ill-typed option raises a :class:`~deepscope.errors.DeepscopeError` that names the valid ones;
nothing is filtered away. Two run settings are not options, since they change no map: ``preprocess`` (the
model's normalisation, for methods that need to know what a black image is) and ``progress`` (progress
bars); :func:`build_method` passes them to the methods that use them.

Example
-------
>>> method = build_method("occlusion", model, window=32, stride=16)
>>> maps = method.attribute(inputs)
>>> shown = deepscope.maps.display_maps(maps, method.display)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from deepscope.attribution.base import Attribution
from deepscope.attribution.cam import (CAM, AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM,
                                       LayerCAM, ScoreCAM, XGradCAM)
from deepscope.attribution.controls import CenterMap, RandomMap
from deepscope.attribution.fullgrad import FullGrad
from deepscope.attribution.gradient import Gradient
from deepscope.attribution.gradient_shap import GradientSHAP, ReferencePhotos
from deepscope.attribution.guided import GuidedBackprop
from deepscope.attribution.integrated_gradients import METHODS as QUADRATURES
from deepscope.attribution.integrated_gradients import IntegratedGradients
from deepscope.attribution.lrp import COMPOSITES, LRP
from deepscope.attribution.occlusion import BASELINES as OCCLUSION_BASELINES
from deepscope.attribution.occlusion import DEFAULT_COARSE_FACTOR, SCORES, Occlusion
from deepscope.attribution.rise import RISE
from deepscope.attribution.smoothgrad import SmoothGrad, VarGrad
from deepscope.errors import DeepscopeError, did_you_mean
from deepscope.maps import Display

#: cost classes, from cheapest: what one map of one image costs in model passes
COSTS = {
    "free": "no model pass (a control)",
    "one pass": "one forward and one backward pass",
    "passes": "a fixed number of forward and backward passes (steps, noisy copies)",
    "channels": "one forward pass per channel of the layer",
    "masks": "one forward pass per random mask",
    "windows": "one forward pass per window position (cheaper with incremental evaluation)",
}
#: settings of the costly methods that keep a map of one photo within seconds on a CPU: the report and the
#: explorer use them (the report's gallery legend, its trust table and the explorer's page show them)
QUICK_METHOD_OPTIONS = {"occlusion": {"window": 32, "stride": 24}, "scorecam": {"max_channels": 64},
                        "smoothgrad": {"n": 12}, "vargrad": {"n": 12}, "ig": {"steps": 16},
                        "gradientshap": {"n": 16}, "rise": {"n": 1000}}
#: images per attribution call where a caller explains many (the report, the trust table): bounds the memory of
#: a backward pass (a method batches its own work inside)
ATTRIBUTION_CHUNK = 8
#: settings that are passed to the methods that use them and change no map (see the module docstring)
RUN_SETTINGS = ("preprocess", "progress")
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a name"}


@dataclass(frozen=True)
class Option:
    """One option of a method.

    Attributes
    ----------
    name : str
    kind : type
        ``bool``, ``int``, ``float`` or ``str``.
    default : Any
        The method's default (``None`` where ``optional``).
    meaning : str
        One line for help texts and the README.
    choices : tuple of str
        For ``str`` options: the valid values.
    minimum, maximum : float, optional
        The smallest and the largest valid value of a number (inclusive).
    optional : bool
        ``None`` is valid (it means: the method decides, e.g. the default CAM layer).
    """

    name: str
    kind: type
    default: Any
    meaning: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False

    def check(self, method: str, value: Any) -> Any:
        """``value`` if valid for this option (an int is accepted as a float); else a DeepscopeError."""
        if value is None and self.optional:
            return None
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        valid = isinstance(value, self.kind) and not (self.kind is int and isinstance(value, bool))
        if not valid:
            raise DeepscopeError(f"{method}: option {self.name} must be {self.expects()}, got {value!r}.")
        if self.kind is float and not math.isfinite(value):
            raise DeepscopeError(f"{method}: option {self.name} must be a finite number, got {value!r}.")
        if self.choices and value not in self.choices:
            raise DeepscopeError(f"{method}: option {self.name} must be one of {', '.join(self.choices)}, "
                                 f"got {value!r}.{did_you_mean(str(value), self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise DeepscopeError(f"{method}: option {self.name} must be at least {self.minimum:g}, got {value!r}.")
        if self.maximum is not None and value > self.maximum:
            raise DeepscopeError(f"{method}: option {self.name} must be at most {self.maximum:g}, got {value!r}.")
        return value

    def parse(self, method: str, text: str) -> Any:
        """The value written as ``text`` (on the command line), checked."""
        text = text.strip()
        if self.optional and text.lower() in ("none", "default", ""):
            return None
        if self.kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise DeepscopeError(f"{method}: option {self.name} must be true or false, got {text!r}.")
            return self.check(method, lowered in ("true", "yes", "1", "on"))
        if self.kind in (int, float):
            try:
                value = self.kind(text)
            except ValueError:
                raise DeepscopeError(f"{method}: option {self.name} must be {self.expects()}, got {text!r}.") from None
            return self.check(method, value)
        return self.check(method, text)

    def expects(self) -> str:
        """What a valid value is, in words."""
        words = f"one of {', '.join(self.choices)}" if self.choices else _TYPE_NAMES.get(self.kind, self.kind.__name__)
        if self.minimum is not None:
            words += f" >= {self.minimum:g}"
        if self.maximum is not None:
            words += f" <= {self.maximum:g}"
        return words + (" or none" if self.optional else "")

    def describe(self) -> str:
        """``name=default (type): meaning`` for help texts."""
        return f"{self.name}={self.default} ({self.expects()}): {self.meaning}"


@dataclass(frozen=True)
class MethodEntry:
    """A method of the catalogue.

    Attributes
    ----------
    name : str
        Short name (``gradcam``), used by the command line and the report.
    method_class : type
        The :class:`~deepscope.attribution.base.Attribution` subclass (its ``display`` is the entry's).
    paper, summary : str
        Where the method comes from; what its map shows, in one line.
    options : tuple of Option
    cost : str
        A key of :data:`COSTS`.
    control : bool
        A control (random, centred map) that sets the chance level of the metrics, not an explanation.
    build : callable, optional
        ``build(model, **options)`` when the method is not just ``method_class(model, **options)``
        (SmoothGrad wraps a gradient method).
    settings : tuple of str
        The :data:`RUN_SETTINGS` the method takes.
    """

    name: str
    method_class: type
    paper: str
    summary: str
    options: tuple[Option, ...] = ()
    cost: str = "one pass"
    control: bool = False
    build: Callable[..., Attribution] | None = None
    settings: tuple[str, ...] = ()
    _by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.cost not in COSTS:
            raise ValueError(f"{self.name}: unknown cost class {self.cost!r}")
        object.__setattr__(self, "_by_name", {option.name: option for option in self.options})

    @property
    def display(self) -> Display:
        """How the maps are shown with the default options (a built method's ``display`` is exact)."""
        return self.method_class.display

    def accepts(self, option: str) -> bool:
        return option in self._by_name

    def option(self, name: str) -> Option:
        """The option called ``name``; a DeepscopeError naming the valid ones otherwise."""
        if name not in self._by_name:
            valid = ", ".join(self._by_name) or "none"
            raise DeepscopeError(f"{self.name}: unknown option {name!r}.{did_you_mean(name, self._by_name)} "
                                 f"Its options: {valid}.")
        return self._by_name[name]

    def defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self.options}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options, each checked (unknown names and ill-typed values raise)."""
        return {name: self.option(name).check(self.name, value) for name, value in options.items()}

    def offered(self, **values: Any) -> dict[str, Any]:
        """Those of ``values`` that this method declares, leaving out ``None`` (for settings that a command
        offers to every method, such as ``--layer`` or ``--batch-size``)."""
        return {name: value for name, value in values.items() if value is not None and self.accepts(name)}

    def describe(self) -> str:
        """Several lines: summary, paper, cost, options (for ``deepscope methods``)."""
        lines = [f"{self.name}: {self.summary}", f"  paper: {self.paper}", f"  cost: {COSTS[self.cost]}",
                 f"  display: {'signed' if self.display.signed else 'unsigned'}"
                 + (f", channels reduced by {self.display.reduction}" if self.display.reduction else "")]
        lines += [f"  {option.describe()}" for option in self.options] or ["  (no options)"]
        return "\n".join(lines)


def _layer_option() -> Option:
    return Option("layer", str, None, "the layer whose maps are weighted (default: the last convolutional block)",
                  optional=True)


def _relu_option(default: bool) -> Option:
    return Option("relu", bool, default, "apply the paper's ReLU to the map (false keeps the signed map)")


def _batch_option(default: int | None, what: str) -> Option:
    return Option("batch_size", int, default, f"{what} per forward pass", minimum=1, optional=default is None)


def _seed_option(what: str) -> Option:
    return Option("seed", int, 0, f"seed of {what}")


def _noise_options(n: int, batch_size: int) -> tuple[Option, ...]:
    return (Option("n", int, n, "noisy copies", minimum=1),
            Option("noise", float, 0.15, "noise standard deviation as a fraction of the image's range", minimum=0),
            _batch_option(batch_size, "noisy copies"), _seed_option("the noise"))


def _smoothgrad(model: nn.Module, n: int = 25, noise: float = 0.15, batch_size: int = 25, seed: int = 0) -> SmoothGrad:
    return SmoothGrad(Gradient(model), n=n, noise=noise, batch_size=batch_size, seed=seed)


def _vargrad(model: nn.Module, n: int = 25, noise: float = 0.15, batch_size: int = 25, seed: int = 0) -> VarGrad:
    return VarGrad(Gradient(model, absolute=False), n=n, noise=noise, batch_size=batch_size, seed=seed)


def _gradientshap(model: nn.Module, baselines: str = "builtin", n: int = 50, noise: float = 0.0,
                  batch_size: int = 50, seed: int = 0, preprocess=None) -> GradientSHAP:
    return GradientSHAP(model, ReferencePhotos(baselines, preprocess), n=n, noise=noise, batch_size=batch_size,
                        seed=seed)


#: every method, in the order the report shows them
METHODS: dict[str, MethodEntry] = {entry.name: entry for entry in [
    MethodEntry("gradient", Gradient, "Simonyan, Vedaldi & Zisserman 2014",
                "max over colour channels of |d score / d pixel|",
                (Option("absolute", bool, True, "return |gradient| reduced over channels (false: the raw signed "
                        "gradient per channel; shown the same way)"),)),
    MethodEntry("guided", GuidedBackprop, "Springenberg et al. 2015",
                "gradient where ReLUs pass only positive gradients of positive inputs",
                (Option("absolute", bool, False, "reduce to |gradient| over channels (false: signed, per channel)"),)),
    MethodEntry("occlusion", Occlusion, "Zeiler & Fergus 2014",
                "drop of the class score when a patch is replaced, averaged over the patches covering a pixel",
                (Option("window", int, 16, "patch side in pixels", minimum=1),
                 Option("stride", int, 8, "step between patches in pixels", minimum=1),
                 Option("baseline", str, "zero", "what replaces the patch", choices=OCCLUSION_BASELINES),
                 Option("score", str, "logit", "the score whose drop is measured", choices=SCORES),
                 _batch_option(64, "occluded images"),
                 Option("incremental", bool, True, "exact incremental evaluation of the patch's cone (false: "
                        "a full forward pass per window)"),
                 Option("approximate", float, None, "approximate occlusion by projective-field thresholding "
                        "(Krypton): the threshold tau; none: exact", minimum=0.01, maximum=1, optional=True),
                 Option("drill_down", float, None, "approximate occlusion by adaptive drill-down (Krypton): the "
                        "fraction of the windows left out by a coarse pass that are computed, the others "
                        "interpolated; none: exact", minimum=0, maximum=1, optional=True),
                 Option("coarse_factor", int, DEFAULT_COARSE_FACTOR, "with drill_down: the coarse pass computes "
                        "every n-th row and column of windows", minimum=2),
                 Option("check", int, 4, "approximate maps: windows on every n-th row and column are also computed "
                        "exactly to report the SSIM against the exact map (0: no check)", minimum=0)),
                cost="windows", settings=("progress",)),
    MethodEntry("smoothgrad", SmoothGrad, "Smilkov et al. 2017",
                "gradient saliency averaged over copies of the image with Gaussian noise",
                _noise_options(25, 25), cost="passes", build=_smoothgrad),
    MethodEntry("vargrad", VarGrad, "Adebayo et al. 2018",
                "variance of the gradient over copies of the image with Gaussian noise",
                _noise_options(25, 25), cost="passes", build=_vargrad),
    MethodEntry("ig", IntegratedGradients, "Sundararajan, Taly & Yan 2017",
                "gradients integrated along the path from a baseline to the image, times the difference",
                (Option("steps", int, 50, "points on the path (forward and backward passes per image)", minimum=2),
                 Option("method", str, "gausslegendre", "quadrature rule", choices=QUADRATURES),
                 Option("baseline", str, "zero", "the path's start: zero model input or the black image",
                        choices=("zero", "black")),
                 _batch_option(50, "path points")),
                cost="passes", settings=("preprocess",)),
    MethodEntry("lrp", LRP, "Bach et al. 2015; Montavon et al. 2019",
                "relevance of the class score handed back layer by layer (zennit's composites; LRP is patented, "
                "free for personal and scientific use)",
                (Option("composite", str, "epsilon-plus-flat", "which rule each layer gets", choices=tuple(COMPOSITES)),
                 Option("epsilon", float, 1e-6, "stabiliser of the epsilon rule (linear layers); 0 is LRP-0",
                        minimum=0),
                 Option("gamma", float, 0.25, "weight of positive contributions in the gamma rule", minimum=0),
                 Option("stabilizer", float, 1e-6, "stabiliser of every other rule", minimum=1e-12)),
                settings=("preprocess",)),
    MethodEntry("gradientshap", GradientSHAP, "Lundberg & Lee 2017; Erion et al. 2021 (Expected Gradients)",
                "gradients at random points between the image and reference photos, times the difference "
                "(Expected Gradients without noise)",
                (Option("baselines", str, "builtin", "reference photos the baselines are drawn from: builtin (five "
                        "sample photos that install with scikit-image and matplotlib) or a folder of photos"),
                 Option("n", int, 50, "samples: a baseline and a point on the path each", minimum=1),
                 Option("noise", float, 0.0, "noise on the image as a fraction of its range (GradientSHAP; 0: "
                        "Expected Gradients)", minimum=0),
                 _batch_option(50, "samples"), _seed_option("the baselines, path points and noise")),
                cost="passes", build=_gradientshap, settings=("preprocess",)),
    MethodEntry("rise", RISE, "Petsiuk, Das & Saenko 2018",
                "class probability on randomly masked copies of the image, averaged with the masks as weights",
                (Option("n", int, 4000, "random masks (forward passes per image)", minimum=1),
                 Option("grid", int, 7, "cells per side of the random binary grid", minimum=1),
                 Option("keep", float, 0.5, "probability that a grid cell is kept", minimum=0.01),
                 Option("score", str, "probability", "the score the masks are weighted by", choices=SCORES),
                 _batch_option(64, "masked images"), _seed_option("the masks")),
                cost="masks", settings=("progress",)),
    MethodEntry("cam", CAM, "Zhou et al. 2016", "final linear layer's class weights x last conv maps (GAP heads)",
                (_layer_option(), _relu_option(False))),
    MethodEntry("gradcam", GradCAM, "Selvaraju et al. 2017", "layer maps weighted by their mean gradient",
                (_layer_option(), _relu_option(True))),
    MethodEntry("gradcam++", GradCAMPlusPlus, "Chattopadhay et al. 2018",
                "layer maps weighted by positive gradients with higher-order alphas",
                (_layer_option(), _relu_option(True))),
    MethodEntry("scorecam", ScoreCAM, "Wang et al. 2020", "layer maps weighted by the score of the input masked "
                "with each map",
                (_layer_option(), _batch_option(None, "masked images (default 16 on the CPU, 64 elsewhere)"),
                 Option("max_channels", int, None, "score only this many channels of highest variance",
                        minimum=1, optional=True),
                 _relu_option(True)),
                cost="channels", settings=("progress",)),
    MethodEntry("layercam", LayerCAM, "Jiang et al. 2021", "layer maps weighted per position by positive gradients",
                (_layer_option(), _relu_option(True))),
    MethodEntry("hirescam", HiResCAM, "Draelos & Carin 2020", "layer maps times their gradient, position by position",
                (_layer_option(), _relu_option(True))),
    MethodEntry("xgradcam", XGradCAM, "Fu et al. 2020",
                "layer maps weighted by gradient x activation, normalised by the map's sum",
                (_layer_option(), _relu_option(True))),
    MethodEntry("eigencam", EigenCAM, "Muhammad & Yeasin 2020",
                "the layer maps' first principal component (class-agnostic)",
                (_layer_option(), _relu_option(True))),
    MethodEntry("ablationcam", AblationCAM, "Desai & Ramaswamy 2020",
                "layer maps weighted by the score's relative drop when each map is zeroed",
                (_layer_option(), _batch_option(64, "ablated copies"), _relu_option(True)),
                cost="channels", settings=("progress",)),
    MethodEntry("fullgrad", FullGrad, "Srinivas & Fleuret 2019",
                "input x gradient plus every convolutional bias x its gradient, each map normalised"),
    MethodEntry("guided-gradcam", GuidedGradCAM, "Selvaraju et al. 2017", "guided backprop x upsampled Grad-CAM",
                (_layer_option(),)),
    MethodEntry("random", RandomMap, "control", "uniform noise (seeded): the chance level of every metric",
                (_seed_option("the noise"),), cost="free", control=True),
    MethodEntry("center", CenterMap, "control", "a Gaussian at the image centre: the centre-bias baseline",
                (Option("sigma", float, 0.25, "standard deviation as a fraction of the image side", minimum=1e-6),),
                cost="free", control=True),
]}


def get_method(name: str) -> MethodEntry:
    """The entry called ``name``; a DeepscopeError listing the methods otherwise."""
    if name not in METHODS:
        raise DeepscopeError(f"unknown method {name!r}.{did_you_mean(str(name), METHODS)} "
                             f"Choose from: {', '.join(METHODS)}.")
    return METHODS[name]


def method_names(controls: bool = True) -> list[str]:
    """Every method's name in catalogue order (without the controls if ``controls=False``)."""
    return [name for name, entry in METHODS.items() if controls or not entry.control]


def build_method(name: str, model: nn.Module, *, preprocess=None, progress: bool = False, **options) -> Attribution:
    """Build method ``name`` for ``model`` with ``options`` (each checked; unknown ones raise).

    Parameters
    ----------
    preprocess : Preprocess, optional
        The model's normalisation, for methods that take it (Integrated Gradients' black baseline).
    progress : bool
        Progress bars, for methods that show them.
    """
    entry = get_method(name)
    checked = entry.check_options(options)
    settings = {"preprocess": preprocess, "progress": progress}
    checked.update({key: settings[key] for key in entry.settings})
    if not isinstance(model, nn.Module):
        raise DeepscopeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return (entry.build or entry.method_class)(model, **checked)


def parse_methods(text: str | Iterable[str], what: str = "--methods") -> list[str]:
    """Method names from ``"gradient,ig"`` (or a list; ``all`` is every method), each checked, in order."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if names == ["all"]:
        return list(METHODS)
    if not names:
        raise DeepscopeError(f"{what} is empty; name at least one method, e.g. {what} gradient.")
    for name in names:
        if name not in METHODS:
            raise DeepscopeError(f"{what}: unknown method {name!r}.{did_you_mean(name, METHODS)} "
                                 f"Choose from: {', '.join(METHODS)}, or all.")
    return list(dict.fromkeys(names))


def parse_method_options(assignments: Iterable[str], methods: Iterable[str] | None = None
                         ) -> dict[str, dict[str, Any]]:
    """``["ig.steps=16", "occlusion.window=32"]`` -> ``{"ig": {"steps": 16}, "occlusion": {"window": 32}}``.

    Each value is parsed by its option's type and checked; a method not in ``methods`` (when given) is an error,
    since the option would change nothing.
    """
    chosen = None if methods is None else list(methods)
    result: dict[str, dict[str, Any]] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        method, dot, option = key.strip().partition(".")
        if not sep or not dot or not option:
            raise DeepscopeError(f"--option {text!r}: write METHOD.OPTION=VALUE, e.g. --option ig.steps=16.")
        entry = get_method(method)
        if chosen is not None and method not in chosen:
            raise DeepscopeError(f"--option {text!r}: method {method} is not among the chosen methods "
                                 f"({', '.join(chosen)}).")
        result.setdefault(method, {})[option] = entry.option(option).parse(method, value)
    return result
