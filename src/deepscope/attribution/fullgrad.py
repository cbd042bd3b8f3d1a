"""FullGrad (Srinivas and Fleuret, 2019): the input-gradient term plus every convolutional bias's gradient, as maps.

A ReLU network's output is exactly ``grad_x f . x + sum_b grad_b f . b`` over all its biases (the
full-gradient decomposition). FullGrad shows each term as a map and adds them:

- the input term ``|x * d score / d x|``, per colour channel;
- for every layer that adds a bias to a spatial map, ``|b_c * d score / d z_c|`` per channel ``c`` of the
  layer's pre-activation ``z`` (``z``'s gradient summed over space is the bias's gradient);

each channel of each term is min-max normalised on its own (``(m - min) / (max - min + 1e-7)``), the channels
are summed, and the layer maps are upsampled (bilinear) to the input size and added to the input term -- as
pytorch-grad-cam 1.5.7 computes it (it resizes every channel before summing; resizing is linear, so summing
first gives the same map in one resize per layer). The map is not normalised as a whole.

Bias layers: ``nn.Conv2d`` (and subclasses, such as the TFLite import's ``Conv2dSame``) with a bias, and
``nn.BatchNorm2d`` (and subclasses) with running statistics, whose bias in eval mode is
``beta - mean * gamma / sqrt(var + eps)``. timm's ``BatchNormAct2d`` normalises, then applies its ``drop`` and
``act`` children: its bias gradient is taken at ``drop``'s input, before the activation. (pytorch-grad-cam
checks exact types, so it leaves out subclasses, and with them every bias of the imported MobileNet-V2 and of
timm's EfficientNets.) Biases of linear layers have no spatial extent and are left out, as in
pytorch-grad-cam; other normalisation layers (GroupNorm, LayerNorm) are not bias layers here.

Differs from the protocol: returns an unsigned (N, 1, H, W) map; one forward and one backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from deepscope.attribution.base import Attribution
from deepscope.errors import UnsupportedModelError
from deepscope.maps import upsample
from deepscope.probe import Probe, fast_layout, input_gradient
from deepscope.targets import Target, resolve_target, target_scores

#: what the ``drop`` and ``act`` children of timm's BatchNormAct2d are called
_NORM_ACT_CHILDREN = ["drop", "act"]


def bias_sites(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Where every spatial bias is added: ``{capture key: (how, module)}``, ``how`` being ``"output"`` (the
    module's output, captured under its name) or ``"input"`` (the input of the named child, captured under
    ``"child:input"``: timm's fused BatchNormAct2d).

    Raises
    ------
    UnsupportedModelError
        For a batch norm without running statistics (its bias depends on the batch), or a batch-norm subclass
        with children other than timm's ``drop`` and ``act``.
    """
    sites = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            sites[name] = ("output", module)
        elif isinstance(module, nn.BatchNorm2d):
            if module.running_mean is None or module.running_var is None:
                raise UnsupportedModelError(f"FullGrad: batch norm {name!r} has no running statistics, so its bias "
                                            "in eval mode depends on the batch; FullGrad needs fixed biases.")
            children = [child for child, _ in module.named_children()]
            if not children:
                sites[name] = ("output", module)
            elif children == _NORM_ACT_CHILDREN:
                sites[f"{name}.drop:input"] = ("input", module)
            else:
                raise UnsupportedModelError(
                    f"FullGrad: {name!r} ({type(module).__name__}) is a batch norm with children "
                    f"{', '.join(children)}; it cannot tell where the bias is added (it knows timm's BatchNormAct2d).")
    return sites


def effective_bias(module: nn.Module) -> torch.Tensor:
    """The (C,) bias a conv adds, or the one an eval-mode batch norm adds after scaling its input."""
    if isinstance(module, nn.Conv2d):
        return module.bias.detach()
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach()
    bias = -module.running_mean * scale
    return bias + module.bias.detach() if module.bias is not None else bias


def _channel_normalised_sum(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, 1, h, w): each channel min-max normalised (eps 1e-7, as pytorch-grad-cam), then summed."""
    flat = maps.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    high = (flat - low).amax(dim=2, keepdim=True)
    return ((flat - low) / (high + 1e-7)).sum(dim=1).view(maps.shape[0], 1, *maps.shape[2:])


class FullGrad(Attribution):
    """FullGrad saliency, see the module docstring."""

    name = "fullgrad"

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        sites = bias_sites(self.model)
        outputs = [key for key, (how, _) in sites.items() if how == "output"]
        children = [key.removesuffix(":input") for key, (how, _) in sites.items() if how == "input"]
        with Probe(self.model, outputs) as probe, torch.enable_grad():
            probe.capture_inputs(children)
            x = fast_layout(inputs).clone().requires_grad_(True)
            output = probe(x)
            scores = target_scores(output, resolve_target(target, output))
            captured = [key for key in sites if key in probe.activations]  # a module the forward never calls adds nothing
            grads = input_gradient(scores, x, *[probe.activations[key] for key in captured])
        size = tuple(inputs.shape[-2:])
        total = _channel_normalised_sum((x.detach() * grads[0]).abs())
        for key, grad in zip(captured, grads[1:]):
            if grad.ndim != 4:
                continue
            bias = effective_bias(sites[key][1]).to(grad).view(1, -1, 1, 1)
            total = total + upsample(_channel_normalised_sum((grad * bias).abs()), size)
        return total.contiguous()
