"""Attribution methods: which input pixels drive a prediction. See :mod:`deepscope.attribution.base`."""

from deepscope.attribution.base import Attribution
from deepscope.attribution.gradient import Gradient
from deepscope.attribution.guided import GuidedBackprop

__all__ = ["Attribution", "Gradient", "GuidedBackprop"]
