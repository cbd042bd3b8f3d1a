"""LRP: each rule against a slow dense-matrix reference, conservation, zennit 0.5.1 on real architectures,
a hand-computed DenseNet-style concatenation, the LRP-0 = gradient x input identity, and the model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import assert_unchanged, model_fingerprint
from torch import nn
from torchvision.ops import SqueezeExcitation

from deepscope.attribution import Gradient
from deepscope.attribution.lrp import LRP
from deepscope.attribution.lrp.rules import RULES, Affine
from deepscope.errors import DeepscopeError, LayerNotFoundError, TargetError, UnsupportedModelError
from deepscope.models.tflite import Conv2dSame

COMPOSITES = ("epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1")
EPS = 1e-6


# -- slow, obviously correct references on dense matrices ----------------------------------------------

def dense(layer: nn.Module, sample_shape: tuple[int, ...], weight: torch.Tensor | None = None):
    """A conv/linear layer as a (outputs, inputs) matrix, the layer applied to each basis vector, and a bias per output."""
    if weight is not None:
        layer = copy.deepcopy(layer)
        layer.weight.data = weight
    n = torch.Size(sample_shape).numel()
    basis = torch.eye(n, dtype=torch.float64).view(n, *sample_shape)
    with torch.no_grad():
        bias = layer(torch.zeros_like(basis[:1]))
        return (layer(basis) - bias).reshape(n, -1).T, bias.reshape(-1)


def stab(z):
    return z + EPS * torch.where(z >= 0, 1.0, -1.0)


def reference_rule(rule: str, layer: nn.Module, x: torch.Tensor, relevance: torch.Tensor, *, gamma=0.25,
                   low=None, high=None) -> torch.Tensor:
    """Relevance of each input of one sample, R_i = sum_j c_ji / den_j R_j, with contributions c written out."""
    m, b = dense(layer, x.shape)                                     # (J, I), (J,)
    xi, rj = x.reshape(1, -1), relevance.reshape(-1, 1)              # (1, I), (J, 1)
    c = xi * m                                                       # c_ji = x_i w_ji
    if rule == "epsilon":
        shares = c / stab(c.sum(1, keepdim=True) + b[:, None])
    elif rule == "z-plus":
        shares = c.clamp(min=0) / stab(c.clamp(min=0).sum(1, keepdim=True) + b.clamp(min=0)[:, None])
    elif rule == "alpha-beta":
        pos, neg = c.clamp(min=0), c.clamp(max=0)
        shares = (2 * pos / stab(pos.sum(1, keepdim=True) + b.clamp(min=0)[:, None])
                  - neg / stab(neg.sum(1, keepdim=True) + b.clamp(max=0)[:, None]))
    elif rule == "gamma":
        z = (c.sum(1) + b)[:, None]
        up, down = c + gamma * c.clamp(min=0), c + gamma * c.clamp(max=0)
        shares = ((z > 0) * up / stab(up.sum(1, keepdim=True) + (b + gamma * b.clamp(min=0))[:, None])
                  + (z < 0) * down / stab(down.sum(1, keepdim=True) + (b + gamma * b.clamp(max=0))[:, None]))
    elif rule == "flat":
        connected, _ = dense(layer, x.shape, torch.ones_like(layer.weight))
        shares = connected / stab(connected.sum(1, keepdim=True))
    elif rule == "w-square":
        shares = m ** 2 / stab((m ** 2).sum(1, keepdim=True) + b[:, None] ** 2)
    elif rule == "z-box":
        lo, hi = (torch.as_tensor(v, dtype=torch.float64).expand(x.shape).reshape(1, -1) for v in (low, high))
        c = c - lo * m.clamp(min=0) - hi * m.clamp(max=0)
        shares = c / stab(c.sum(1, keepdim=True))
    return (shares * rj).sum(0).view(x.shape)


def layers():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2).double()
    same = Conv2dSame(2, 3, 3, stride=2).double()                 # TF 'SAME': 0 before, 1 after at even sizes
    linear = nn.Linear(6, 4).double()
    return {"conv": (conv, (2, 5, 5)), "grouped": (grouped, (4, 4, 4)), "same": (same, (2, 6, 6)),
            "linear": (linear, (6,))}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("kind", ["conv", "grouped", "same", "linear"])
@pytest.mark.parametrize("signs", ["signed", "nonnegative"])
def test_each_rule_matches_a_dense_reference(rule, kind, signs):
    layer, shape = layers()[kind]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, *shape, generator=generator, dtype=torch.float64)
    if signs == "nonnegative":
        x = x.clamp(min=0)  # the rules' faster path for inputs after a ReLU
    with torch.no_grad():
        z = Affine(layer).forward(x, layer.weight, layer.bias)
    relevance = torch.randn(z.shape, generator=generator, dtype=torch.float64)
    low, high = -torch.rand(shape[0], *(1,) * (len(shape) - 1), generator=generator, dtype=torch.float64) - 2, 2.5
    options = {"epsilon": {"epsilon": EPS}, "gamma": {"gamma": 0.25, "stabilizer": EPS},
               "z-box": {"low": low, "high": torch.tensor(high, dtype=torch.float64), "stabilizer": EPS}}
    known_sign = {"nonnegative": True} if signs == "nonnegative" else {}  # as after a ReLU module; else checked
    ours = RULES[rule](Affine(layer), x, relevance, **options.get(rule, {"stabilizer": EPS}), **known_sign)
    for n in range(2):
        expected = reference_rule(rule, layer, x[n], relevance[n], low=low, high=high)
        torch.testing.assert_close(ours[n], expected, rtol=1e-9, atol=1e-9)


def test_batch_norm_merge_reproduces_conv_then_batch_norm():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6)
    merged = Affine(conv, norm)
    with torch.no_grad():
        torch.testing.assert_close(merged.forward(x, merged.weight, merged.bias), norm(conv(x)))


# -- conservation and the LRP-0 identity -----------------------------------------------------------------

class ResidualConcatNet(nn.Module):
    """Bias-free: a residual sum, a concatenation that reuses a feature map, max and average pooling."""

    def __init__(self, act=nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.act = act()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(6, 4, 1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, 5, bias=False)

    def forward(self, x):
        a = self.act(self.conv1(x))
        a = self.act(a + self.conv2(a))
        features = torch.cat([a, self.act(self.conv3(a))], 1)
        return self.fc(torch.flatten(self.gap(self.pool(features)), 1))


def all_rules(model, rule):
    return {name: rule for name in LRP(model).layer_rules()}


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU])
def test_relevance_sums_to_the_logit_on_bias_free_networks(act):
    torch.manual_seed(0)
    model = ResidualConcatNet(act).eval()
    x = torch.randn(3, 3, 16, 16)
    logits = model(x).detach()
    target = logits.argmax(1)
    chosen = logits.gather(1, target[:, None])[:, 0]
    for method in (LRP(model, rules=all_rules(model, "epsilon"), epsilon=0.0, stabilizer=1e-12),  # the z-rule
                   LRP(model, "epsilon-plus-flat", epsilon=0.0, stabilizer=1e-12)):
        totals = method(x).sum((1, 2, 3))
        assert torch.allclose(totals, chosen, atol=1e-3, rtol=1e-3), (totals, chosen)


def test_squeeze_excitation_gate_is_a_constant_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), SqueezeExcitation(8, 4),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3, bias=False)).eval()
    x = torch.randn(2, 3, 8, 8)
    logits = model(x).detach()
    totals = LRP(model, rules=all_rules(model, "epsilon"), epsilon=0.0, stabilizer=1e-12)(x, 1).sum((1, 2, 3))
    assert torch.allclose(totals, logits[:, 1], atol=1e-4, rtol=1e-4)  # no relevance left in the gate's branch
    assert "2.fc1" not in LRP(model).layer_rules()                       # the gate's own convolutions get no rule


def calibrate(model: nn.Module, size: int = 64) -> nn.Module:
    """``model`` in eval mode with the BatchNorm statistics of a random batch (activations of a sane scale)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # running statistics = those of the calibration batch
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size))
    return model.eval()


def calibrated(name: str) -> nn.Module:
    """A torchvision architecture with seeded random weights, calibrated."""
    torch.manual_seed(0)
    return calibrate(getattr(torchvision.models, name)(weights=None))


def timm_mobilenet_v2_relu() -> nn.Module:
    """timm's MobileNet-V2 (BatchNormAct2d, timm's residual blocks) with ReLU, calibrated."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return calibrate(timm.create_model("mobilenetv2_050", pretrained=False, act_layer=nn.ReLU, num_classes=10))


@pytest.mark.parametrize("build", [lambda: calibrated("resnet18"), timm_mobilenet_v2_relu], ids=["resnet18", "timm"])
def test_lrp_zero_equals_gradient_times_input_on_relu_networks(build):
    """Ancona et al. 2018: LRP-0 on a ReLU network is gradient x input; holds through merged BatchNorm (also
    timm's BatchNormAct2d), residual sums (torchvision's in-place ``+=``, timm's blocks), max and average pooling."""
    model = build().double()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    lrp = LRP(model, rules=all_rules(model, "epsilon"), epsilon=0.0, stabilizer=1e-15)(x, [3, 4])
    expected = Gradient(model, absolute=False)(x, [3, 4]) * x
    assert float((lrp - expected).abs().max() / expected.abs().max()) < 1e-9


# -- zennit 0.5.1 on real architectures ------------------------------------------------------------------

@pytest.fixture(scope="module")
def zennit_reference():
    """zennit 0.5.1 with the canonizers it lacks (tests/zennit_reference.py)."""
    pytest.importorskip("zennit")
    import zennit_reference

    return zennit_reference


def relative_difference(ours, theirs) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.fixture(scope="module", params=["vgg16_bn", "resnet18", "mobilenet_v2"])
def torchvision_model(request):
    return calibrated(request.param)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_matches_zennit_on_torchvision_models(torchvision_model, composite, zennit_reference):
    size = 32 if isinstance(torchvision_model, torchvision.models.VGG) else 48  # VGG-16 is the slowest of the three
    low, high = torch.full((1, 3, 1, 1), -2.2), torch.full((1, 3, 1, 1), 2.7)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2)).clamp(-2.2, 2.7)  # within the box
    before = model_fingerprint(torchvision_model)
    ours = LRP(torchvision_model, composite, low=low, high=high)(x, [1, 2])
    assert_unchanged(torchvision_model, before)
    theirs = zennit_reference.zennit_lrp(torchvision_model, x, [1, 2],
                                         zennit_reference.composite(composite, torchvision_model, low, high))
    assert relative_difference(ours, theirs) <= 1e-4


@pytest.mark.parametrize("composite", COMPOSITES)
def test_matches_zennit_on_the_imported_mobilenet_v2(mobilenet_v2_import, composite, zennit_reference):
    model, preprocess = mobilenet_v2_import.model, mobilenet_v2_import.preprocess
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (preprocess.mean, preprocess.std))
    low, high = -mean / std, (1 - mean) / std  # what LRP takes from preprocess
    x = torch.max(torch.min(torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3)), high), low)
    ours = LRP(model, composite, preprocess=preprocess)(x, [1, 2])
    theirs = zennit_reference.zennit_lrp(model, x, [1, 2], zennit_reference.composite(composite, model, low, high))
    assert relative_difference(ours, theirs) <= 1e-4


# -- DenseNet: concatenations, BatchNorm of concatenated features ------------------------------------------

class TinyDense(nn.Module):
    """One dense layer: ``a`` is used twice (by ``conv1`` and in the concatenation), a BatchNorm follows the
    concatenation, and the head pools and activates with functions, as torchvision's DenseNet."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        a = F.relu(self.conv0(x))
        h = F.relu(self.norm(torch.cat([a, self.conv1(a)], 1)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def test_concatenation_and_unmerged_batch_norm_by_hand():
    torch.manual_seed(0)
    model = TinyDense().double().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.3, 0.3), model.norm.running_var.uniform_(0.5, 2)
        model.norm.weight.uniform_(0.5, 1.5), model.norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    ours = LRP(model)(x, 2)[0]  # epsilon-plus-flat: flat on conv0, z+ on conv1, epsilon on fc

    # the same composite by hand, one step at a time
    with torch.no_grad():
        a = F.relu(model.conv0(x))[0]
        h = F.relu(model.norm(torch.cat([a[None], model.conv1(a[None])], 1)))[0]
        pooled = h.mean((1, 2))
        logits = model.fc(pooled)
    r_logits = torch.zeros(3, dtype=torch.float64)
    r_logits[2] = logits[2]
    r_pooled = pooled * (model.fc.weight.T @ (r_logits / stab(logits)))            # epsilon on fc
    r_h = h / h[0].numel() * (r_pooled / stab(pooled))[:, None, None]             # average pooling: in proportion
    r_cat = r_h                                                                   # ReLU and BatchNorm: passed
    r_a = r_cat[:4] + reference_rule("z-plus", model.conv1, a, r_cat[4:])          # a's two uses add up
    expected = reference_rule("flat", model.conv0, x[0], r_a)                      # ReLU passed, flat on conv0
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_matches_zennit_assembled_for_densenet(composite, zennit_reference):
    """zennit has no DenseNet canonizer (zennit issue 165); assembled from its parts, it agrees (float64:
    a random DenseNet's unmerged BatchNorms make float32 rounding differences grow to ~1e-3)."""
    torch.manual_seed(0)
    model = calibrate(torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                                  bn_size=2, num_classes=5), size=32).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    low, high = torch.full((1, 3, 1, 1), -3.0, dtype=torch.float64), torch.full((1, 3, 1, 1), 3.0, dtype=torch.float64)
    ours = LRP(model, composite, low=low, high=high)(x, [1, 2])
    theirs = zennit_reference.zennit_lrp(model, x, [1, 2], zennit_reference.composite(composite, model, low, high))
    assert relative_difference(ours, theirs) <= 1e-8
    assert "features.denseblock1.denselayer1.conv1" in LRP(model).layer_rules()


# -- the protocol, refusals, and the model left unchanged --------------------------------------------------

def test_model_unchanged_after_success_and_after_errors(tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    x = torch.randn(2, 3, 8, 8)
    copy = x.clone()
    for composite in COMPOSITES:
        LRP(tiny_cnn, composite, low=-3.0, high=3.0)(x, 1)
        with pytest.raises(TargetError):
            LRP(tiny_cnn, composite, low=-3.0, high=3.0)(x, 99)  # raised after the forward pass, inside the probe
        assert_unchanged(tiny_cnn, before)
    assert torch.equal(x, copy) and not x.requires_grad
    assert not torch.overrides._get_current_function_mode_stack()  # the function routing ended too


class GatedNet(nn.Module):
    """A product of two activations in the forward code: LRP has no rule for it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        return self.fc((h * torch.sigmoid(h)).mean((2, 3)))


def test_unsupported_structures_are_refused_and_leave_the_model_unchanged():
    model = GatedNet().train()
    before = model_fingerprint(model)
    with pytest.raises(UnsupportedModelError, match="product"):
        LRP(model)(torch.randn(1, 3, 6, 6))  # found in the graph after the forward pass
    assert_unchanged(model, before)
    with pytest.raises(UnsupportedModelError, match="Sigmoid"):
        LRP(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Sigmoid(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)))
    residual = ResidualConcatNet().eval()
    before = model_fingerprint(residual)
    with pytest.raises(UnsupportedModelError, match="addition"):
        LRP(residual, canonizers=["merge-batchnorm"])(torch.randn(1, 3, 8, 8))  # a residual sum without its canonizer
    assert_unchanged(residual, before)


def test_bad_options_name_the_argument():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.raises(DeepscopeError, match="epsilon-plus-flat"):
        LRP(model, "epsilon-plus")
    with pytest.raises(DeepscopeError, match="Did you mean: z-plus"):
        LRP(model, rules={"0": "zplus"})
    with pytest.raises(LayerNotFoundError):
        LRP(model, rules={"7": "flat"})
    with pytest.raises(DeepscopeError, match="ReLU"):
        LRP(model, rules={"1": "flat"})
    with pytest.raises(DeepscopeError, match="input range"):
        LRP(model, "epsilon-gamma-box")
    with pytest.raises(DeepscopeError, match="epsilon"):
        LRP(model, epsilon=-1)
    with pytest.raises(DeepscopeError, match="canonizer"):
        LRP(model, canonizers=["resnet"])


def test_targets_and_batches_follow_the_protocol(tiny_cnn):
    model = tiny_cnn.eval()
    x = torch.randn(3, 3, 8, 8)
    lrp = LRP(model)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(lrp(x), lrp(x, predicted))                             # default: the predicted class
    torch.testing.assert_close(lrp(x, lambda out: out[:, 2]), lrp(x, 2))               # a callable target
    torch.testing.assert_close(lrp(x[1:2], 2)[0], lrp(x, 2)[1], rtol=1e-4, atol=1e-6)  # samples are independent
    assert lrp(x).shape == x.shape and LRP.per_channel
