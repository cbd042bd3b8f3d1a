"""Attribution methods: which input pixels drive a prediction. See :mod:`deepscope.attribution.base`."""

from deepscope.attribution.base import Attribution
from deepscope.attribution.cam import CAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, LayerCAM, ScoreCAM
from deepscope.attribution.controls import CenterMap, RandomMap
from deepscope.attribution.gradient import Gradient
from deepscope.attribution.guided import GuidedBackprop
from deepscope.attribution.integrated_gradients import IntegratedGradients
from deepscope.attribution.lrp import LRP
from deepscope.attribution.occlusion import Occlusion
from deepscope.attribution.smoothgrad import SmoothGrad

__all__ = ["Attribution", "CAM", "CenterMap", "GradCAM", "GradCAMPlusPlus", "Gradient", "GuidedBackprop",
           "GuidedGradCAM", "IntegratedGradients", "LRP", "LayerCAM", "Occlusion", "RandomMap", "ScoreCAM",
           "SmoothGrad"]
