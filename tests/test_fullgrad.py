"""FullGrad: the full-gradient decomposition it rests on, a by-hand map, and timm's fused batch norm."""

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution.fullgrad import FullGrad, bias_sites, effective_bias
from deepscope.errors import UnsupportedModelError
from deepscope.probe import Probe


def _random_stats(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _plain_net():
    torch.manual_seed(0)
    return _random_stats(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))


def _fused_net():
    """The plain net's layout with timm's BatchNormAct2d (batch norm + ReLU in one module)."""
    torch.manual_seed(0)
    return _random_stats(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), BatchNormAct2d(6, act_layer=nn.ReLU),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))


@pytest.mark.parametrize("make", [_plain_net, _fused_net])
def test_bias_gradients_complete_the_score(make):
    """A ReLU network's score is x . grad_x + sum over biases of b . grad_b: the sites must be where the biases act."""
    model = make()
    x = torch.randn(2, 3, 10, 10)
    sites = bias_sites(model)
    outputs = [key for key, (how, _) in sites.items() if how == "output"]
    children = [key.removesuffix(":input") for key, (how, _) in sites.items() if how == "input"]
    with Probe(model, outputs) as probe, torch.enable_grad():
        probe.capture_inputs(children)
        xg = x.clone().requires_grad_(True)
        score = probe(xg)[:, 2]
        grads = torch.autograd.grad(score.sum(), [xg] + [probe.activations[key] for key in sites])
    total = (xg * grads[0]).sum((1, 2, 3)) + model[-1].bias[2].detach()
    for (key, (_, module)), grad in zip(sites.items(), grads[1:]):
        total = total + (effective_bias(module).view(1, -1, 1, 1) * grad).sum((1, 2, 3))
    torch.testing.assert_close(total, score.detach(), rtol=1e-4, atol=1e-5)
    assert len(sites) == 3


def _fullgrad_by_hand(model, x, target):
    """Every layer's gradient by retain_grad, every channel normalised and resized on its own."""
    model = copy.deepcopy(model)
    outputs = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) or type(module) is nn.BatchNorm2d:
            def keep(m, args, out, name=name):  # the net continues on a copy: an in-place ReLU must not alter it
                outputs[name] = out
                return out.clone()
            module.register_forward_hook(keep)
    x = x.clone().requires_grad_(True)
    for output in (model(x),):
        for value in outputs.values():
            value.retain_grad()
        output[torch.arange(len(x)), target].sum().backward()

    def normalised(m):  # one (h, w) channel, as pytorch-grad-cam scales it
        m = m - m.min()
        return m / (1e-7 + m.max())

    result = torch.zeros(len(x), 1, *x.shape[-2:])
    for i in range(len(x)):
        for c in range(3):
            result[i, 0] += normalised((x.grad[i, c] * x[i, c]).abs().detach())
        for name, value in outputs.items():
            module = dict(model.named_modules())[name]
            bias = effective_bias(module)
            for c in range(value.shape[1]):
                channel = normalised((bias[c] * value.grad[i, c]).abs())
                result[i, 0] += F.interpolate(channel[None, None], size=x.shape[-2:], mode="bilinear")[0, 0]
    return result


def test_fullgrad_by_hand():
    model = _plain_net()
    x = torch.randn(2, 3, 10, 10)
    target = torch.tensor([1, 3])
    before = model_fingerprint(model)
    ours = FullGrad(model)(x, target)
    assert ours.shape == (2, 1, 10, 10) and ours.min() >= 0
    torch.testing.assert_close(ours, _fullgrad_by_hand(model, x, target), rtol=1e-4, atol=1e-4)
    assert_unchanged(model, before)


def test_fused_batch_norm_is_read_before_its_activation():
    """timm's BatchNormAct2d gives the map of the same net written as BatchNorm2d + ReLU."""
    fused = _fused_net()
    norm = nn.BatchNorm2d(6)
    norm.load_state_dict(fused[1].state_dict())
    plain = nn.Sequential(copy.deepcopy(fused[0]), norm, nn.ReLU(), *copy.deepcopy(fused[2:])).eval()
    x = torch.randn(2, 3, 10, 10)
    before = model_fingerprint(fused)
    torch.testing.assert_close(FullGrad(fused)(x, 0), FullGrad(plain)(x, 0), rtol=1e-5, atol=1e-5)
    assert_unchanged(fused, before)


def test_batch_norm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match="running statistics"):
        FullGrad(model)(torch.randn(1, 3, 8, 8))
