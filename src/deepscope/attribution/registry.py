"""Methods by their short names, for the CLI and the report.

Each entry says how to build the method from a model and which paper it implements.
``build_method(name, model, **options)`` passes only the options the method's constructor accepts,
so callers can offer one set of options (``layer``, ``batch_size``, ``seed``...) to every method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from deepscope.attribution.base import Attribution
from deepscope.attribution.cam import CAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, LayerCAM, ScoreCAM
from deepscope.attribution.gradient import Gradient
from deepscope.attribution.guided import GuidedBackprop
from deepscope.attribution.integrated_gradients import IntegratedGradients
from deepscope.attribution.occlusion import Occlusion
from deepscope.attribution.smoothgrad import SmoothGrad
from deepscope.errors import DeepscopeError, did_you_mean
from deepscope.evaluation.controls import CenterMap, RandomMap


@dataclass(frozen=True)
class MethodInfo:
    """A method's short name, its constructor, and where it comes from."""

    name: str
    build: Callable[..., Attribution]
    paper: str
    summary: str
    #: a control (random, centred map) that sets the chance level of the metrics, not an explanation
    control: bool = False


METHODS: dict[str, MethodInfo] = {
    info.name: info for info in [
        MethodInfo("gradient", Gradient, "Simonyan, Vedaldi & Zisserman 2014",
                   "max over colour channels of |d score / d pixel|"),
        MethodInfo("guided", GuidedBackprop, "Springenberg et al. 2015",
                   "gradient where ReLUs pass only positive gradients of positive inputs"),
        MethodInfo("occlusion", Occlusion, "Zeiler & Fergus 2014",
                   "drop of the class score when a 16 px patch is zeroed, averaged over the patches covering a pixel"),
        MethodInfo("smoothgrad", lambda model, n=25, noise=0.15, batch_size=25, seed=0:
                   SmoothGrad(Gradient(model), n=n, noise=noise, batch_size=batch_size, seed=seed),
                   "Smilkov et al. 2017", "gradient saliency averaged over 25 copies with 15% Gaussian noise"),
        MethodInfo("ig", IntegratedGradients, "Sundararajan, Taly & Yan 2017",
                   "gradients integrated along the path from a zero baseline to the image, times the difference"),
        MethodInfo("cam", CAM, "Zhou et al. 2016", "final linear layer's class weights x last conv maps (GAP heads)"),
        MethodInfo("gradcam", GradCAM, "Selvaraju et al. 2017", "layer maps weighted by their mean gradient"),
        MethodInfo("gradcam++", GradCAMPlusPlus, "Chattopadhay et al. 2018",
                   "layer maps weighted by positive gradients with higher-order alphas"),
        MethodInfo("scorecam", ScoreCAM, "Wang et al. 2020",
                   "layer maps weighted by the score of the input masked with each map"),
        MethodInfo("layercam", LayerCAM, "Jiang et al. 2021", "layer maps weighted per position by positive gradients"),
        MethodInfo("guided-gradcam", GuidedGradCAM, "Selvaraju et al. 2017", "guided backprop x upsampled Grad-CAM"),
        MethodInfo("random", RandomMap, "control", "uniform noise (seeded): the chance level of every metric",
                   control=True),
        MethodInfo("center", CenterMap, "control", "a Gaussian at the image centre: the centre-bias baseline",
                   control=True),
    ]
}


def build_method(name: str, model: nn.Module, **options) -> Attribution:
    """Build the method called ``name`` for ``model`` with the ``options`` its constructor accepts."""
    if name not in METHODS:
        raise DeepscopeError(f"unknown method {name!r}.{did_you_mean(name, METHODS)} "
                             f"Choose from: {', '.join(METHODS)}.")
    build = METHODS[name].build
    accepted = inspect.signature(build).parameters
    return build(model, **{k: v for k, v in options.items() if k in accepted and v is not None})
