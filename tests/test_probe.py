"""The probe owns every temporary change to a model and undoes it, also on errors."""

import pytest
import torch
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution import Gradient, GuidedBackprop
from deepscope.errors import LayerNotFoundError, TargetError, UnsupportedModelError
from deepscope.probe import Probe, get_layer, layer_names


def test_layer_lookup_suggests_close_names(tiny_cnn):
    assert layer_names(tiny_cnn)[:2] == ["0", "1"]
    assert get_layer(tiny_cnn, "2") is tiny_cnn[2]
    resnet_like = nn.Sequential()
    resnet_like.add_module("layer4", nn.Sequential(nn.Conv2d(1, 1, 1)))
    with pytest.raises(LayerNotFoundError, match="Did you mean: layer4"):
        get_layer(resnet_like, "layer_4")


def test_capture_gives_activations_and_their_gradient(tiny_cnn):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)  # parameters are frozen inside: the graph starts at x
    with Probe(tiny_cnn, ["0"]) as probe:
        out = probe(x)
        act = probe.activations["0"]
        # hand check: the captured activation is the first conv's output, before the in-place ReLU
        assert torch.allclose(act, tiny_cnn[0](x))
        assert (act < 0).any()
        (grad,) = torch.autograd.grad(out[:, 1].sum(), act)
        assert grad.shape == act.shape
        assert not tiny_cnn.training and all(not p.requires_grad for p in tiny_cnn.parameters())


def test_probe_restores_everything_even_when_the_body_raises(tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    with pytest.raises(ZeroDivisionError):
        with Probe(tiny_cnn, ["0", "4"]) as probe:
            probe.rewrite_output_gradients([tiny_cnn[1]], lambda g: g)
            probe(torch.randn(1, 3, 8, 8))
            assert probe.hook_count() == 3
            1 / 0
    assert_unchanged(tiny_cnn, before)


def test_methods_leave_the_model_unchanged_on_success_and_failure(tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    x = torch.randn(2, 3, 8, 8)
    for method in (Gradient(tiny_cnn), GuidedBackprop(tiny_cnn), Gradient(tiny_cnn, neuron_layer="2")):
        method.attribute(x, target=1)
        with pytest.raises(TargetError):
            method.attribute(x, target=99)
        assert_unchanged(tiny_cnn, before)
    # a training-mode model gives the same answer as its eval-mode self, since eval mode is used inside
    eval_twin = Gradient(tiny_cnn.eval())(x, target=1)
    tiny_cnn.train()
    assert torch.equal(Gradient(tiny_cnn)(x, target=1), eval_twin)


def test_input_tensor_is_not_modified(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    copy = x.clone()
    Gradient(tiny_cnn)(x)
    assert torch.equal(x, copy) and not x.requires_grad


def test_linear_model_gradient_is_abs_weight_row():
    torch.manual_seed(1)
    linear = nn.Linear(3 * 4 * 4, 6)
    model = nn.Sequential(nn.Flatten(), linear)
    x = torch.randn(3, 3, 4, 4)
    targets = [0, 5, 2]
    signed = Gradient(model, absolute=False)(x, target=targets)
    expected = linear.weight[targets].detach().view(3, 3, 4, 4)
    assert torch.allclose(signed, expected)
    assert torch.allclose(Gradient(model)(x, target=targets), expected.abs().amax(1, keepdim=True))


def test_guided_backprop_without_relus_is_refused_and_with_relus_is_positive_masked():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(UnsupportedModelError, match="no nn.ReLU"):
        GuidedBackprop(linear)
    with pytest.raises(UnsupportedModelError, match="SiLU"):
        GuidedBackprop(nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.SiLU(), nn.Linear(4, 2)))
    torch.manual_seed(2)
    first, second = nn.Linear(12, 4), nn.Linear(4, 2)
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second)
    x = torch.randn(1, 3, 2, 2)
    hidden = first(x.flatten(1))
    # hand rule: R_hidden = (hidden > 0) * relu(w2[target]); R_x = W1^T R_hidden
    r_hidden = (hidden > 0).float() * second.weight[1].clamp(min=0)
    expected = (r_hidden @ first.weight).view(1, 3, 2, 2)
    assert torch.allclose(GuidedBackprop(model)(x, target=1), expected.detach(), atol=1e-6)


def test_targets_are_checked(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    method = Gradient(tiny_cnn)
    with pytest.raises(TargetError, match="got 3 targets for a batch of 2"):
        method(x, target=[0, 1, 2])
    with pytest.raises(TargetError, match="out of range"):
        method(x, target=-1)
    by_callable = method(x, target=lambda out: out[:, 2])
    assert torch.equal(by_callable, method(x, target=2))


def test_replaced_backward_and_routed_functions_end_with_the_probe(tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    seen = []

    def route(func, args, kwargs):
        if func is torch.Tensor.mean:
            seen.append(func)
        return NotImplemented

    def doubled(saved, grad_output):  # a backward of our choosing for the first convolution
        (x,) = saved
        return (torch.full_like(x, 2.0),)

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with pytest.raises(ZeroDivisionError):
        with Probe(tiny_cnn) as probe:
            probe.replace_backward(tiny_cnn[0], lambda inp, out: ((inp,), doubled))
            probe.route_functions(route)
            out = probe(x)
            (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
            # the rest of the model's gradient reaches the first layer's output, which then gives 2 everywhere
            assert torch.equal(grad, torch.full_like(x, 2.0))
            probe(x).mean()  # outside the model call: not routed
            assert not seen and probe.hook_count() == 2
            1 / 0
    assert_unchanged(tiny_cnn, before)
    assert not torch.overrides._get_current_function_mode_stack()
    torch.randn(1).mean()
    assert not seen


def test_routed_functions_see_the_forward_code():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return x + self.conv(x)

    calls = []

    def route(func, args, kwargs):
        if func is torch.Tensor.add and all(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            calls.append(func)
            return args[0] * 0  # replaced result
        return NotImplemented

    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    with Probe(Residual()) as probe:
        probe.route_functions(route)
        assert torch.equal(probe(x), torch.zeros_like(x)) and len(calls) == 1
