"""zennit 0.5.1 as the LRP reference, with the canonizers it lacks assembled from its public API.

zennit (test-only dependency; 0.5.1 is the newest release on PyPI, there is no zennit 1.0) ships canonizers
for torchvision's VGG and ResNet only. Here, from its ``AttributeCanonizer``, ``Sum`` and
``SequentialMergeBatchNorm``/``NamedMergeBatchNorm`` parts:

- torchvision MobileNet-V2: the inverted residual ``x + self.conv(x)`` through a ``Sum`` module, and the
  functional global average pooling of ``MobileNetV2.forward`` through an ``nn.AdaptiveAvgPool2d`` module;
- the TFLite import (:mod:`deepscope.models.tflite`): the residual ``Block`` through a ``Sum`` module;
- torchvision DenseNet: only the BatchNorms that follow a convolution merged (``norm0``, each ``norm2``), and
  the functional ReLU and pooling of ``DenseNet.forward`` through modules.

zennit 0.5.1's BatchNorm merge leaves the BatchNorm's ``eps`` in place, so each merged BatchNorm still
divides by ``sqrt(1 + eps)`` (fixed upstream later, zennit pull request 171); :func:`zennit_lrp` sets
``eps`` to 0 on merged BatchNorms while zennit runs, so that both sides compute the same network.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.densenet import DenseNet, _DenseLayer
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2
from zennit.attribution import Gradient
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from deepscope.models.tflite import Block, TFLiteNet


def _inverted_residual_forward(self, x):
    return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))


def _mobilenet_forward(self, x):
    return self.classifier(torch.flatten(self.canonizer_pool(self.features(x)), 1))


def _block_forward(self, x):
    y = x
    for layer in self.children():
        if layer is not self.canonizer_sum:
            y = layer(y)
    return self.canonizer_sum(torch.stack([x, y], dim=-1))


def _densenet_forward(self, x):
    return self.classifier(torch.flatten(self.canonizer_pool(self.canonizer_relu(self.features(x))), 1))


def _attributes(name, module):
    if isinstance(module, InvertedResidual) and module.use_res_connect:
        return {"forward": _inverted_residual_forward.__get__(module), "canonizer_sum": Sum()}
    if isinstance(module, MobileNetV2):
        return {"forward": _mobilenet_forward.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
    if isinstance(module, Block) and module.residual:
        return {"forward": _block_forward.__get__(module), "canonizer_sum": Sum()}
    if isinstance(module, DenseNet):
        return {"forward": _densenet_forward.__get__(module), "canonizer_relu": nn.ReLU(),
                "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
    return None


def canonizers(model: nn.Module) -> list:
    """zennit canonizers for ``model`` (VGG, ResNet, MobileNet-V2, the TFLite import, DenseNet)."""
    if isinstance(model, DenseNet):
        pairs = [(("features.conv0",), "features.norm0")]
        pairs += [((f"{name}.conv1",), f"{name}.norm2")
                  for name, module in model.named_modules() if isinstance(module, _DenseLayer)]
        return [NamedMergeBatchNorm(pairs), AttributeCanonizer(_attributes)]
    if isinstance(model, (MobileNetV2, TFLiteNet)):
        return [CompositeCanonizer([SequentialMergeBatchNorm(), AttributeCanonizer(_attributes)])]
    if hasattr(model, "layer1"):
        return [ResNetCanonizer()]
    return [VGGCanonizer()]


def composite(name: str, model: nn.Module, low=None, high=None, epsilon: float = 1e-6):
    """The zennit composite of the same name as deepscope's, with the canonizers for ``model``."""
    if name == "epsilon-plus-flat":
        return EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers(model))
    if name == "epsilon-gamma-box":
        return EpsilonGammaBox(low=low, high=high, epsilon=epsilon, canonizers=canonizers(model))
    return EpsilonAlpha2Beta1(epsilon=epsilon, canonizers=canonizers(model))


def zennit_lrp(model: nn.Module, inputs: torch.Tensor, target, composite) -> torch.Tensor:
    """zennit's relevance of ``inputs`` for class ``target`` (int or one per sample), starting from the logit."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.eps for m in norms]
    try:
        with Gradient(model=model, composite=composite) as attributor:
            for m in norms:  # merged ones compute the identity except for eps
                if bool((m.running_var == 1).all() and (m.running_mean == 0).all()
                        and (m.weight == 1).all() and (m.bias == 0).all()):
                    m.eps = 0.0
            _, relevance = attributor(inputs, lambda y: torch.eye(y.shape[1], dtype=y.dtype)[target] * y)
    finally:
        for m, eps in zip(norms, saved):
            m.eps = eps
    return relevance
