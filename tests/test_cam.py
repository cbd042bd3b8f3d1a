"""Class activation maps: hand-computed answers on tiny models, default layers, token maps, invariants."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution.cam import (CAM, AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM,
                                       LayerCAM, ScoreCAM, XGradCAM, default_cam_layer, token_grid)
from deepscope.attribution.guided import GuidedBackprop
from deepscope.catalogue import METHODS, build_method, get_method
from deepscope.errors import LayerNotFoundError, TargetError, UnsupportedModelError
from deepscope.maps import normalize, upsample
from deepscope.probe import Probe


@pytest.fixture
def gap_model():
    """conv -> ReLU (the CAM layer "1", 6x6) -> global average pooling -> one linear layer."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


def _layer_output(model, x):
    with torch.no_grad():
        return model[1](model[0](x))


def test_gradcam_before_relu_is_cam_over_hw_by_hand(gap_model):
    x = torch.randn(2, 3, 12, 12)
    target = torch.tensor([0, 2])
    a = _layer_output(gap_model, x)  # (2, 4, 6, 6)
    w = gap_model[4].weight[target].detach()  # (2, 4)
    by_hand = (w[:, :, None, None] * a).sum(1, keepdim=True)
    assert default_cam_layer(gap_model, x) == "1"
    cam = CAM(gap_model).attribute_raw(x, target)
    assert torch.allclose(cam, by_hand, atol=1e-6)
    assert (cam < 0).any()  # CAM has no ReLU, as in the paper
    pre_relu = GradCAM(gap_model, relu=False).attribute_raw(x, target)
    assert torch.allclose(pre_relu, cam / 36, atol=1e-6)
    assert torch.allclose(GradCAM(gap_model).attribute_raw(x, target), (cam / 36).clamp_min(0), atol=1e-6)
    # attribute(): the same map upsampled once, bilinearly, to the input size
    assert torch.allclose(GradCAM(gap_model).attribute(x, target), upsample((cam / 36).clamp_min(0), 12), atol=1e-6)


def test_gradcam_plusplus_and_layercam_by_hand(gap_model):
    # On a GAP + linear model, d score / dA_k = w_k / (h w) everywhere: the weights have closed forms.
    x = torch.randn(2, 3, 12, 12)
    a = _layer_output(gap_model, x)
    g = gap_model[4].weight[1].detach()[None, :, None, None].expand_as(a) / 36
    layercam = (g.clamp_min(0) * a).sum(1, keepdim=True)
    assert torch.allclose(LayerCAM(gap_model).attribute_raw(x, 1), layercam.clamp_min(0), atol=1e-6)
    sum_a = a.sum((2, 3), keepdim=True)
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + sum_a * g**3 + 1e-6), torch.zeros_like(g))
    weights = (g.clamp_min(0) * alpha).sum((2, 3))
    plusplus = (weights[:, :, None, None] * a).sum(1, keepdim=True).clamp_min(0)
    assert torch.allclose(GradCAMPlusPlus(gap_model).attribute_raw(x, 1), plusplus, atol=1e-6)


def test_hirescam_and_xgradcam_by_hand(gap_model):
    # d score / dA_k = w_k / (h w) everywhere on a GAP + linear model
    x = torch.randn(2, 3, 12, 12)
    a = _layer_output(gap_model, x)
    g = gap_model[4].weight[1].detach()[None, :, None, None].expand_as(a) / 36
    hires = (g * a).sum(1, keepdim=True)
    assert torch.allclose(HiResCAM(gap_model, relu=False).attribute_raw(x, 1), hires, atol=1e-6)
    assert torch.allclose(HiResCAM(gap_model).attribute_raw(x, 1), hires.clamp_min(0), atol=1e-6)
    # HiResCAM before its ReLU sums to the score minus the bias on such a model
    with torch.no_grad():
        logit = gap_model(x)[:, 1] - gap_model[4].bias[1]
    assert torch.allclose(hires.sum((1, 2, 3)), logit, atol=1e-5)
    weights = (g * a).sum((2, 3)) / (a.sum((2, 3)) + 1e-7)
    xgrad = (weights[:, :, None, None] * a).sum(1, keepdim=True).clamp_min(0)
    assert torch.allclose(XGradCAM(gap_model).attribute_raw(x, 1), xgrad, atol=1e-6)


def test_eigencam_by_hand_with_its_sign_rule(gap_model):
    x = torch.randn(3, 3, 12, 12)
    a = _layer_output(gap_model, x).double()
    maps = EigenCAM(gap_model, relu=False).attribute_raw(x, 0)
    assert torch.equal(maps, EigenCAM(gap_model, relu=False).attribute_raw(x, 2))  # class-agnostic
    for i in range(3):
        positions = a[i].flatten(1).T  # (h w, K)
        positions = positions - positions.mean(0)
        _, _, vt = np.linalg.svd(positions.numpy())
        projection = torch.from_numpy(positions.numpy() @ vt[0])
        if torch.dot(projection, positions.sum(1)) < 0:  # the documented sign: agree with the channels' sum
            projection = -projection
        assert torch.allclose(maps[i].flatten().double(), projection, atol=1e-5)


def _ablation_by_hand(model, layer, x, target):
    """Ablation-CAM weights, one channel and one image at a time, through a hook on the test's own model."""
    module = dict(model.named_modules())[layer]
    weights = []
    for i in range(len(x)):
        with torch.no_grad():
            clean = model(x[i:i + 1])[0, target[i]]
            row = []
            for k in range(_channels(model, module, x[i:i + 1])):
                def zero(mod, args, output, k=k):
                    output = output.clone()
                    output[:, k] = 0
                    return output
                handle = module.register_forward_hook(zero)
                try:
                    row.append((clean - model(x[i:i + 1])[0, target[i]]) / clean)
                finally:
                    handle.remove()
        weights.append(torch.stack(row))
    return torch.stack(weights)


def _channels(model, module, x):
    shapes = []
    handle = module.register_forward_hook(lambda mod, args, output: shapes.append(output.shape[1]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return shapes[0]


class _ConcatNet(nn.Module):
    """conv -> conv ("b"), then the head reads both concatenated, as DenseNet does."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(9, 3)

    def forward(self, x):
        a = self.a(x).relu()
        return self.fc(torch.cat([a, self.b(a)], dim=1).mean((2, 3)))


class _ResidualNet(nn.Module):
    """A residual block whose inner layer ("block.1") is ablated: the skip adds the block's input back."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.stem(x).relu()
        return self.fc((h + self.block(h)).relu().mean((2, 3)))


@pytest.mark.parametrize("net, layer, prefix", [("gap", "1", "none"), ("residual", "block.1", "once"),
                                                ("concat", "b", "per copy")])
def test_ablationcam_by_hand_however_often_the_layers_before_run(gap_model, net, layer, prefix):
    torch.manual_seed(2)
    model = {"gap": gap_model, "residual": _ResidualNet().eval(), "concat": _ConcatNet().eval()}[net]
    x = torch.randn(3, 3, 12, 12)
    target = torch.tensor([0, 2, 1])
    before = model_fingerprint(model)
    with Probe(model, [layer], detach=True) as probe, torch.no_grad():
        probe(x)
        a = probe.activations[layer]
    weights = _ablation_by_hand(model, layer, x, target)
    expected = (weights[:, :, None, None] * a).sum(1, keepdim=True).clamp_min(0)
    for batch_size in (2, 64):
        method = AblationCAM(model, layer=layer, batch_size=batch_size)
        assert torch.allclose(method.attribute_raw(x, target), expected, atol=1e-5)
        # a chain needs no layer before; the residual addition broadcasts one image; the concatenation needs copies
        assert method.prefix_runs_ == prefix
    assert_unchanged(model, before)
    if net == "gap":  # closed form: zeroing channel k lowers the logit by w_k mean(A_k)
        w = gap_model[4].weight.detach()[target]
        with torch.no_grad():
            logits = gap_model(x).gather(1, target[:, None])
        assert torch.allclose(weights, w * a.mean((2, 3)) / logits, atol=1e-5)


def test_ablationcam_runs_only_channels_that_are_not_zero(gap_model):
    with torch.no_grad():
        gap_model[0].bias[1:3] = -100.0  # two dead channels after the ReLU
    x = torch.randn(2, 3, 12, 12)
    rows, head_rows = [], []
    handles = [gap_model[0].register_forward_pre_hook(lambda module, args: rows.append(len(args[0]))),
               gap_model[2].register_forward_pre_hook(lambda module, args: head_rows.append(len(args[0])))]
    try:
        maps = AblationCAM(gap_model, batch_size=64).attribute_raw(x, 1)
    finally:
        for handle in handles:
            handle.remove()
    # one image to find the default layer, the clean batch, 2 copies for the check, then 2 live channels per
    # image; the layers before the ablated one run on empty batches
    assert head_rows == [1, 2, 2, 2, 2] and rows == [1, 2, 0, 0, 0]
    assert torch.allclose(maps, (_ablation_by_hand(gap_model, "1", x, torch.tensor([1, 1]))[:, :, None, None]
                                 * _layer_output(gap_model, x)).sum(1, keepdim=True).clamp_min(0), atol=1e-5)


def _scorecam_by_hand(model, x, target, channels=None):
    """Score-CAM written out one image and one channel at a time."""
    cams = []
    for i in range(len(x)):
        a = _layer_output(model, x[i:i + 1])[0]
        keep = channels[i] if channels is not None else range(len(a))
        scores = []
        for k in keep:
            mask = F.interpolate(a[k][None, None], size=x.shape[-2:], mode="bilinear", align_corners=True)[0, 0]
            mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-8) if a[k].max() > a[k].min() else 0 * mask
            with torch.no_grad():
                scores.append(model(x[i:i + 1] * mask)[0, target])
        weights = torch.stack(scores).softmax(0)
        cams.append(sum(w * a[k] for w, k in zip(weights, keep)).clamp_min(0))
    return torch.stack(cams)[:, None]


def test_scorecam_by_hand_and_batch_size_invariance(gap_model):
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        gap_model[0].bias[3] = -100.0  # a dead channel: its mask is all zero
    by_hand = _scorecam_by_hand(gap_model, x, 2)
    maps = [ScoreCAM(gap_model, batch_size=b, progress=False).attribute_raw(x, 2) for b in (1, 5, 100)]
    for m in maps:
        assert torch.allclose(m, by_hand, atol=1e-5)
    # max_channels keeps each image's highest-variance channels
    top = _layer_output(gap_model, x).flatten(2).var(2).topk(2, dim=1).indices.tolist()
    capped = ScoreCAM(gap_model, batch_size=3, max_channels=2, progress=False).attribute_raw(x, 2)
    assert torch.allclose(capped, _scorecam_by_hand(gap_model, x, 2, top), atol=1e-5)
    assert not torch.allclose(capped, by_hand, atol=1e-5)


def test_scorecam_runs_channels_with_the_same_mask_once(gap_model):
    with torch.no_grad():  # channel 2 = 2 x channel 0 and channel 3 = channel 1 / 2 after the ReLU: same masks
        conv = gap_model[0]
        conv.weight[2], conv.bias[2] = 2 * conv.weight[0], 2 * conv.bias[0]
        conv.weight[3], conv.bias[3] = conv.weight[1] / 2, conv.bias[1] / 2
    x = torch.randn(3, 3, 12, 12)
    rows = []
    handle = gap_model[0].register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        maps = ScoreCAM(gap_model, batch_size=4, progress=False).attribute_raw(x, 2)
    finally:
        handle.remove()
    # one image to find the default layer, the activations, one zero input, then 2 masks per image instead of 4
    assert sum(rows) == 1 + 3 + 1 + 3 * 2
    assert torch.allclose(maps, _scorecam_by_hand(gap_model, x, 2), atol=1e-5)


def test_cam_refuses_fully_connected_heads_and_callable_targets(gap_model):
    alexnet = torchvision.models.alexnet(weights=None)
    before = model_fingerprint(alexnet)
    with pytest.raises(UnsupportedModelError, match=r"'classifier.6' takes 4096.*AlexNet.*gradcam"):
        CAM(alexnet)(torch.randn(1, 3, 224, 224))
    assert_unchanged(alexnet, before)
    with pytest.raises(TargetError, match="class index"):
        CAM(gap_model)(torch.randn(1, 3, 12, 12), target=lambda out: out[:, 0])


def test_cam_checks_the_head_numerically():
    # the right shapes, but a ReLU6 clips after the pooling: not "GAP + one linear", so CAM must refuse
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Hardtanh(-0.01, 0.01),
                          nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match="checked on this batch"):
        CAM(model)(torch.randn(2, 3, 9, 9))


@pytest.mark.parametrize("name, expected", [("mobilenet_v2", "features"), ("resnet18", "layer4"),
                                            ("densenet121", "features")])
def test_default_layer_and_cam_on_torchvision(name, expected):
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    cam = CAM(model)
    maps = cam.attribute_raw(x, 3)  # the head check passes (DenseNet: functional ReLU before pooling)
    assert cam.layers_for(x) == [expected] and maps.shape == (1, 1, 2, 2)
    if name != "densenet121":
        assert torch.allclose(GradCAM(model, layer=expected, relu=False).attribute_raw(x, 3), maps / 4, atol=1e-5)


def test_default_layer_efficientnet_lite0():
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    assert default_cam_layer(model, x) == "bn2"
    assert torch.allclose(GradCAM(model, relu=False).attribute_raw(x, 7), CAM(model).attribute_raw(x, 7) / 4,
                          atol=1e-5)


def test_token_grid_drops_prefix_tokens():
    tokens = torch.arange(2 * 5 * 3.0).view(2, 5, 3)  # 1 class token + a 2x2 grid, 3 channels
    grid = token_grid(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[1, 2], tokens[1, 1:, 2].view(2, 2))  # row-major patches
    assert token_grid(torch.zeros(1, 20, 3)).shape == (1, 3, 4, 4)  # 4 register/class tokens
    with pytest.raises(UnsupportedModelError, match="'x'"):
        token_grid(torch.zeros(1, 3, 7), layer="x")


def test_vit_token_maps_become_grids():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    before = model_fingerprint(vit)
    x = torch.randn(1, 3, 224, 224)
    gradcam = GradCAM(vit)
    maps = gradcam.attribute_raw(x, 5)
    assert gradcam.layers_for(x) == ["blocks.11.norm1"]
    assert maps.shape == (1, 1, 14, 14) and maps.abs().sum() > 0
    # why not the last block's output: only the class token is read out after it, so patch gradients are zero
    assert GradCAM(vit, layer="blocks.11", relu=False).attribute_raw(x, 5).abs().max() == 0
    with pytest.raises(UnsupportedModelError, match="pooling"):  # a class-token head is not GAP + linear
        CAM(vit, layer="blocks.11.norm1")(x, 5)
    assert_unchanged(vit, before)


def test_several_layers_average_their_normalised_maps(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    single = [normalize(GradCAM(tiny_cnn, layer=name)(x, 1)) for name in ("1", "4")]
    both = GradCAM(tiny_cnn, layer=["1", "4"])
    assert torch.allclose(both(x, 1), (single[0] + single[1]) / 2, atol=1e-6)
    assert both.attribute_raw(x, 1).shape == (2, 1, 8, 8)  # the finer layer's resolution


def test_guided_gradcam_is_guided_backprop_times_gradcam(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    expected = GuidedBackprop(tiny_cnn)(x, 1) * GradCAM(tiny_cnn, layer="4")(x, 1)
    assert torch.allclose(GuidedGradCAM(tiny_cnn, layer="4")(x, 1), expected)


class _WithUnusedLayer(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.spare = net, nn.Conv2d(3, 3, 1)  # spare is registered but never called

    def forward(self, x):
        return self.net(x)


def test_every_method_leaves_the_model_unchanged(tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    x = torch.randn(2, 3, 8, 8)
    x_before = x.clone()
    for name in ("cam", "gradcam", "gradcam++", "scorecam", "layercam", "hirescam", "xgradcam", "eigencam",
                 "ablationcam", "guided-gradcam"):
        method = build_method(name, tiny_cnn, **get_method(name).offered(layer="4", batch_size=3))
        maps = method(x, target=1)
        assert maps.shape[-2:] == (8, 8) and torch.isfinite(maps).all()
        with pytest.raises(TargetError):
            method(x, target=99)
        assert_unchanged(tiny_cnn, before)
    assert torch.equal(x, x_before)
    with pytest.raises(LayerNotFoundError, match="'spare'"):
        GradCAM(_WithUnusedLayer(tiny_cnn), layer="spare")(x)
    with pytest.raises(LayerNotFoundError, match="Did you mean"):
        GradCAM(tiny_cnn, layer="44")(x)
    assert_unchanged(tiny_cnn, before)
    assert {"cam", "gradcam", "gradcam++", "scorecam", "layercam", "guided-gradcam"} <= set(METHODS)


def test_probe_start_graph_gives_the_same_layer_gradient(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    grads = []
    for start_graph in (False, True):
        with Probe(tiny_cnn, ["2"], start_graph=start_graph) as probe:
            out = probe(x.clone().requires_grad_(not start_graph))
            act = probe.activations["2"]
            assert act.is_leaf == start_graph
            grads.append(torch.autograd.grad(out[:, 1].sum(), act)[0])
    assert torch.allclose(grads[0], grads[1])


class _ViewHead(nn.Module):
    """An old-style model that flattens a spatial map with .view (impossible in channels-last layout)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        a = self.conv(x).relu()
        return self.fc(a.view(a.size(0), -1))


def test_models_that_view_spatial_maps_still_work():
    torch.manual_seed(0)
    model, x = _ViewHead().eval(), torch.randn(2, 3, 8, 8)
    conv = model.conv(x)
    (g,) = torch.autograd.grad(model.fc(conv.relu().flatten(1))[:, 1].sum(), [conv])  # Grad-CAM by hand
    expected = (g.mean((2, 3))[:, :, None, None] * conv).sum(1, keepdim=True).clamp_min(0).detach()
    assert torch.allclose(GradCAM(model, layer="conv").attribute_raw(x, 1), expected, atol=1e-6)
    assert ScoreCAM(model, layer="conv", progress=False)(x.detach(), 1).shape == (2, 1, 8, 8)
