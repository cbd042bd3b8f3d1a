"""Attribution methods: which input pixels drive a prediction. See :mod:`deepscope.attribution.base`."""

from deepscope.attribution.base import Attribution
from deepscope.attribution.gradient import Gradient
from deepscope.attribution.guided import GuidedBackprop
from deepscope.attribution.integrated_gradients import IntegratedGradients
from deepscope.attribution.occlusion import Occlusion
from deepscope.attribution.smoothgrad import SmoothGrad

__all__ = ["Attribution", "Gradient", "GuidedBackprop", "IntegratedGradients", "Occlusion", "SmoothGrad"]
