"""Geometry: 'SAME' padding, windows and receptive fields worked out by hand, and the table of element-wise modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, model_fingerprint
from torch import nn

from deepscope.attribution import GuidedBackprop, Occlusion
from deepscope.attribution.guided import GUIDED_TYPES, UNGUIDABLE_TYPES
from deepscope.attribution.incremental import local_stages
from deepscope.errors import UnsupportedModelError
from deepscope.geometry import (ELEMENTWISE, GLOBAL, LOCAL, STATISTICS, Field, Window, elementwise, is_local,
                                is_same_padded, same_padding, walk_fields, window_geometry, windows)
from deepscope.models import tflite
from deepscope.models.tflite import Conv2dSame


# -- 'SAME' padding -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, kernel, stride, dilation, expected", [
    (7, 3, 1, 1, (1, 1)),   # stride 1: total = kernel - 1 = 2, whatever the size
    (8, 3, 1, 1, (1, 1)),
    (8, 4, 1, 1, (1, 2)),   # even kernel: total 3, the odd pixel after
    (8, 3, 2, 1, (0, 1)),   # stride 2, even size: 4 outputs read 0..8 -> total = 3*2 + 3 - 8 = 1
    (7, 3, 2, 1, (1, 1)),   # stride 2, odd size: 4 outputs -> total = 3*2 + 3 - 7 = 2
    (224, 3, 2, 1, (0, 1)),
    (9, 5, 2, 1, (2, 2)),   # 5 outputs: 4*2 + 5 - 9 = 4
    (8, 1, 2, 1, (0, 0)),   # 1x1 stride 2: 3*2 + 1 - 8 < 0
    (8, 3, 1, 2, (2, 2)),   # dilation 2: extent 5, total 4
    (10, 3, 2, 2, (1, 2)),  # extent 5, 5 outputs: 4*2 + 5 - 10 = 3
])
def test_same_padding_by_hand(size, kernel, stride, dilation, expected):
    assert same_padding(size, kernel, stride, dilation) == expected


def test_same_padding_gives_tensorflow_output_sizes():
    for size in range(1, 20):
        for kernel in (1, 2, 3, 5):
            for stride in (1, 2, 3):
                for dilation in (1, 2):
                    before, after = same_padding(size, kernel, stride, dilation)
                    extent = (kernel - 1) * dilation + 1
                    assert (size + before + after - extent) // stride + 1 == -(-size // stride)
                    assert before <= after <= before + 1


def test_the_importer_uses_the_one_formula():
    assert tflite.same_padding is same_padding
    conv = Conv2dSame(3, 4, 5, stride=2)
    assert conv.padding == (1, 1) and conv.pad_amounts(8, 9) == (2, 2, 1, 2)  # (left, right, top, bottom)


# -- windowed layers --------------------------------------------------------------------------------------------
def test_same_padded_layers_are_recognised():
    timm_layers = pytest.importorskip("timm.layers")
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    class PadsInForward(nn.Conv2d):
        def pad_amounts(self, height, width):
            return 0, 0, 0, 0

    for module in (Conv2dSame(3, 4, 3), PadsInForward(3, 4, 3), timm_layers.Conv2dSame(3, 4, 3),
                   AvgPool2dSame(3, 2), MaxPool2dSame(3, 2)):
        assert is_same_padded(module), type(module).__name__
    assert not is_same_padded(nn.Conv2d(3, 4, 3, padding="same")) and not is_same_padded(nn.MaxPool2d(3))


def test_windows_by_hand():
    rows, cols = windows(Conv2dSame(3, 8, 3, stride=2), (8, 7))
    assert (rows.padding, cols.padding) == ((0, 1), (1, 1))
    assert rows.reach() == (0, 2) and cols.reach() == (1, 1)
    assert (rows.out_length(8), cols.out_length(7)) == (4, 4)
    rows, cols = windows(nn.Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 0), dilation=(2, 1)))
    assert rows == Window(3, 1, 2, (1, 1)) and rows.span == 4 and rows.reach() == (1, 3)
    assert cols == Window(5, 2, 1, (0, 0)) and cols.reach() == (0, 4)
    assert windows(nn.ReLU()) is None
    assert window_geometry(nn.MaxPool2d(2)) == ((2, 2), ((0, 1), (0, 1)))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_pytorch_same_padding_puts_the_odd_pixel_after():
    conv = nn.Conv2d(2, 3, 4, padding="same", bias=False)
    rows, _ = windows(conv)
    assert rows.padding == (1, 2)
    x = torch.randn(1, 2, 9, 9)
    torch.testing.assert_close(conv(x), F.conv2d(F.pad(x, (1, 2, 1, 2)), conv.weight))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), nn.AvgPool2d(2, ceil_mode=True),
                                  nn.MaxPool2d(3, 2), nn.Conv2d(1, 1, 5, stride=3, padding=2)])
def test_output_lengths_agree_with_torch(pool):
    for size in range(5, 14):
        rows, _ = windows(pool)
        assert rows.out_length(size) == pool(torch.zeros(1, 1, size, size)).shape[-1], size


def test_a_padding_decided_in_an_unknown_forward_reaches_the_whole_span_in_the_cone():
    class Unknown(nn.Conv2d):
        pass

    rows, _ = windows(Unknown(3, 4, 3, padding=1))
    assert not rows.known and rows.reach() == (1, 1) and rows.reach(local=True) == (2, 2)
    assert not windows(nn.MaxPool2d(3, 2, padding=1, ceil_mode=True))[0].known
    assert not windows(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))[0].known


# -- receptive fields ----------------------------------------------------------------------------------------------
class Residual(nn.Module):
    """conv1 (3x3, stride 2) -> ReLU -> conv2 (1x1), plus a strided 1x1 shortcut."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.downsample = nn.Conv2d(4, 4, 1, stride=2)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x))) + self.downsample(x)


def hand_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.ReLU(),   # 0, 1
        nn.AvgPool2d(3, stride=2, padding=1),                 # 2
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),            # 3
        nn.BatchNorm2d(4),                                    # 4
        Residual(),                                           # 5
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_receptive_field_of_a_hand_built_net():
    # Worked out on paper for a 32-px input, as (stride, before, after, map length):
    #   0: 5x5 stride 2 pad 2      -> (2, 2, 2, 16)           field 5, offset -2
    #   2: 3x3 stride 2 pad 1      -> (4, 2+1*2, 2+1*2, 8)    field 9
    #   3: 3x3 dilation 2 pad 2    -> (4, 4+2*4, 4+2*4, 8)    field 25, offset -12
    #   5.conv1: 3x3 stride 2 pad 1 -> (8, 12+1*4, 12+1*4, 4) field 33
    #   5.downsample: 1x1 stride 2 from 5's input -> (8, 12, 12, 4), inside the main path's field
    walk = walk_fields(hand_net(), (32, 32))
    expected = {"0": Field(2, 2, 2, 16), "1": Field(2, 2, 2, 16), "2": Field(4, 4, 4, 8), "3": Field(4, 12, 12, 8),
                "4": Field(4, 12, 12, 8), "5.conv1": Field(8, 16, 16, 4), "5.conv2": Field(8, 16, 16, 4),
                "5.downsample": Field(8, 12, 12, 4), "5": Field(8, 16, 16, 4)}
    for name, field in expected.items():
        assert walk.fields[name] == (field, field), name
    assert walk.fields["3"][0].size == 25 and walk.fields["3"][0].offset == -12
    assert "6" not in walk.fields and walk.stopped.startswith("6 (AdaptiveAvgPool2d)")
    assert walk.leaves[:5] == ["0", "1", "2", "3", "4"]


def test_receptive_field_matches_the_model_and_the_gradient():
    from deepscope.neurons import architecture_receptive_field, gradient_receptive_field

    model = hand_net()
    before = model_fingerprint(model)
    for layer in ("3", "5"):
        assert tuple(architecture_receptive_field(model, layer, 64))[:3] \
            == tuple(gradient_receptive_field(model, layer, 64))[:3]
    assert_unchanged(model, before)


def test_non_square_layers_make_a_square_field():
    model = nn.Sequential(nn.Conv2d(3, 4, (1, 3), padding=(0, 1)), nn.Conv2d(4, 4, (3, 1), padding=(1, 0)))
    rows, cols = walk_fields(model, (16, 16)).fields["1"]
    assert rows == cols == Field(1, 1, 1, 16)


def test_the_cone_is_stricter_than_the_receptive_field():
    gn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 3, padding=1))
    assert "2" in walk_fields(gn, (16, 16)).fields
    cone = walk_fields(gn, local=True)
    assert "2" not in cone.fields and "1 (GroupNorm) is not local" in cone.stopped
    trained = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    assert "1" not in walk_fields(trained, local=True).fields and "1" in walk_fields(trained).fields
    assert "1" in walk_fields(trained.eval(), local=True).fields


def test_squeeze_excitation_passes_the_receptive_field_but_stops_the_cone():
    torchvision = pytest.importorskip("torchvision")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), torchvision.ops.SqueezeExcitation(8, 2),
                          nn.Conv2d(8, 8, 3, padding=1)).eval()
    assert walk_fields(model, (16, 16)).fields["2"][0] == Field(1, 2, 2, 16)
    cone = walk_fields(model, local=True)
    assert "2" not in cone.fields and cone.stopped.startswith("1 (SqueezeExcitation) is not local") \
        and "gate" in cone.stopped


def test_timm_batchnorm_with_activation_is_walked_through():
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), timm_layers.BatchNormAct2d(4, act_layer=nn.SiLU)).eval()
    walk = walk_fields(model, (8, 8), local=True)
    assert walk.fields["1.act"] == walk.fields["1"] == walk.fields["0"]


def test_cone_through_a_resnet_shortcut_equals_full_forward_passes():
    model = hand_net()
    before = model_fingerprint(model)
    assert [s.name for s in local_stages(model)] == ["0", "1", "2", "3", "4", "5"]
    assert local_stages(model)[-1].reach == ((16, 16), (16, 16))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    fast = Occlusion(model, window=8, stride=8, incremental="5")
    maps = fast(x, target=[0, 2])
    assert fast.cut_layer_ == "5"
    plain = Occlusion(model, window=8, stride=8, incremental=False)(x, target=[0, 2])
    torch.testing.assert_close(maps, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item())
    assert_unchanged(model, before)


# -- the table of element-wise modules ----------------------------------------------------------------------------
def test_every_row_says_why():
    for row in ELEMENTWISE:
        assert row.types and row.local in (LOCAL, STATISTICS, GLOBAL) and len(row.why) > 20, row.what
        assert row.guided in (None, "guided", "refused", "plain") and row.lrp in (None, "pass", "refused")


def test_the_table_covers_every_activation_guided_backprop_refuses():
    assert set(GUIDED_TYPES) == {nn.ReLU, nn.ReLU6}
    assert {nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.LeakyReLU, nn.ELU, nn.PReLU, nn.SELU,
            nn.CELU, nn.Softplus, nn.Tanh, nn.RReLU, nn.Softsign} == set(UNGUIDABLE_TYPES)
    for activation in UNGUIDABLE_TYPES:
        module = activation()
        row = elementwise(module)
        assert row.guided == "refused" and row.local == LOCAL and is_local(module)
        with pytest.raises(UnsupportedModelError, match=activation.__name__):
            GuidedBackprop(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), module))
    for plain in (nn.Sigmoid(), nn.Hardtanh()):  # gates and clips pass their plain gradient
        assert elementwise(plain).guided == "plain"
        GuidedBackprop(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), plain))
    assert elementwise(nn.ReLU6()).guided == "guided"  # a Hardtanh, but its own row comes first


def test_locality_by_hand():
    assert is_local(nn.BatchNorm2d(3).eval()) and not is_local(nn.BatchNorm2d(3).train())
    assert is_local(nn.Dropout().eval()) and not is_local(nn.Dropout2d().train())
    assert is_local(nn.Identity()) and is_local(nn.LocalResponseNorm(2))
    assert not is_local(nn.GroupNorm(1, 4)) and not is_local(nn.LayerNorm(4)) and not is_local(nn.Conv2d(3, 3, 1))
    assert elementwise(nn.LayerNorm(4)).local == GLOBAL and elementwise(nn.Conv2d(3, 3, 1)) is None


def test_lrp_reads_its_activation_rules_from_the_table():
    from deepscope.attribution.lrp.canonizers import PASS_ACTIVATIONS, REFUSED_ACTIVATIONS

    assert {nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.GELU, nn.LeakyReLU} <= set(PASS_ACTIVATIONS)
    assert {nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Softmax} <= set(REFUSED_ACTIVATIONS)
    assert not set(PASS_ACTIVATIONS) & set(REFUSED_ACTIVATIONS)
    for activation in PASS_ACTIVATIONS:  # every activation LRP passes through is local: a function of each element
        assert elementwise(activation()).local == LOCAL
