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
from deepscope.attribution.gradient import Gradient
from deepscope.attribution.guided import GuidedBackprop
from deepscope.errors import DeepscopeError, did_you_mean
from deepscope.evaluation.controls import CenterMap, RandomMap


@dataclass(frozen=True)
class MethodInfo:
    """A method's short name, its constructor, and where it comes from."""

    name: str
    build: Callable[..., Attribution]
    paper: str
    summary: str


METHODS: dict[str, MethodInfo] = {
    info.name: info for info in [
        MethodInfo("gradient", Gradient, "Simonyan, Vedaldi & Zisserman 2014",
                   "max over colour channels of |d score / d pixel|"),
        MethodInfo("guided", GuidedBackprop, "Springenberg et al. 2015",
                   "gradient where ReLUs pass only positive gradients of positive inputs"),
        MethodInfo("random", RandomMap, "control", "uniform noise (seeded): the chance level of every metric"),
        MethodInfo("center", CenterMap, "control", "a Gaussian at the image centre: the centre-bias baseline"),
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
