"""Attribution methods: which input pixels drive a prediction. See :mod:`deepscope.attribution.base`."""

from deepscope.attribution.base import Attribution
from deepscope.attribution.cam import (CAM, AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM,
                                       LayerCAM, ScoreCAM, XGradCAM)
from deepscope.attribution.controls import CenterMap, RandomMap
from deepscope.attribution.fullgrad import FullGrad
from deepscope.attribution.gradient import Gradient
from deepscope.attribution.gradient_shap import GradientSHAP, ReferencePhotos
from deepscope.attribution.guided import GuidedBackprop
from deepscope.attribution.integrated_gradients import IntegratedGradients
from deepscope.attribution.lrp import LRP
from deepscope.attribution.occlusion import Occlusion
from deepscope.attribution.rise import RISE
from deepscope.attribution.smoothgrad import SmoothGrad, VarGrad

__all__ = ["AblationCAM", "Attribution", "CAM", "CenterMap", "EigenCAM", "FullGrad", "GradCAM", "GradCAMPlusPlus",
           "Gradient", "GradientSHAP", "GuidedBackprop", "GuidedGradCAM", "HiResCAM", "IntegratedGradients",
           "LRP", "LayerCAM", "Occlusion", "RISE", "RandomMap", "ReferencePhotos", "ScoreCAM", "SmoothGrad", "VarGrad",
           "XGradCAM"]
