"""Receptive fields (hand-computed, and against the gradient's support), running top-k, neuron views, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, model_fingerprint
from torch import nn

from deepscope.cli import main
from deepscope.images import load_inputs
from deepscope.models.preprocess import Preprocess
from deepscope.neurons import (ReceptiveField, architecture_receptive_field, gradient_receptive_field, neuron_box,
                               neuron_view, receptive_field, top_activations)
from deepscope.sample_images import builtin_images


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),             # 0, 1
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),   # 2, 3
        nn.AvgPool2d(2),                                      # 4
        nn.Conv2d(4, 4, 3, dilation=2, padding=2),            # 5
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


class TFSameConv(nn.Conv2d):
    """A Conv2d whose TF-'SAME' padding is computed in forward (like the TFLite import's)."""

    def pad_amounts(self, h, w):
        k, s = self.kernel_size[0], self.stride[0]
        total = max((-(-h // s) - 1) * s + k - h, 0)
        return total // 2, total - total // 2, total // 2, total - total // 2

    def forward(self, x):
        return F.conv2d(F.pad(x, self.pad_amounts(*x.shape[-2:])), self.weight, self.bias, self.stride)


class ResBlock(nn.Module):
    """ResNet-style block with a strided shortcut branch (a parallel path, not part of the chain)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.downsample = nn.Conv2d(3, 4, 1, stride=2)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x))) + self.downsample(x)


class Blur(nn.Module):
    """A 3x3 smoothing the architecture walk cannot know (functional, no parameters)."""

    def forward(self, x):
        return F.avg_pool2d(x, 3, 1, 1)


@pytest.mark.parametrize("layer, expected", [
    ("0", (3, 1, -1)),      # 3x3, pad 1
    ("2", (5, 2, -2)),      # + 3x3 stride 2 pad 1: 3 + 2*1, offset -1 - 1
    ("4", (7, 4, -2)),      # + 2x2 pool stride 2: 5 + 1*2
    ("5", (23, 4, -10)),    # + 3x3 dilation 2 pad 2: extent 5, 7 + 4*4, offset -2 - 2*4
])
def test_receptive_field_hand_computed(layer, expected):
    model = chain()
    assert tuple(architecture_receptive_field(model, layer, 32))[:3] == expected
    assert tuple(gradient_receptive_field(model, layer, 32))[:3] == expected


def test_tf_same_padding_and_max_pool():
    model = nn.Sequential(TFSameConv(3, 4, 3, stride=2), nn.ReLU6(), TFSameConv(4, 4, 3), nn.ReLU6(),
                          nn.MaxPool2d(3, stride=2, padding=1)).eval()
    # 32 px, 3x3 stride 2 SAME: total pad 1 -> 0 before; then 16 px, 3x3 stride 1: 1 before.
    assert tuple(architecture_receptive_field(model, "0", 32))[:3] == (3, 2, 0)
    assert tuple(architecture_receptive_field(model, "2", 32))[:3] == (7, 2, -2)
    assert tuple(gradient_receptive_field(model, "2", 32))[:3] == (7, 2, -2)
    assert tuple(architecture_receptive_field(model, "4", 32))[:3] == (11, 4, -4)   # 7 + 2*2, offset -2 - 1*2


def test_residual_shortcut_is_a_parallel_branch():
    model = nn.Sequential(ResBlock(), nn.Conv2d(4, 2, 1)).eval()
    # main: 3x3/2 pad 1 (3, 2, -1), 3x3 pad 1 (7, 2, -3); shortcut 1x1/2 (1, 2, 0) lies inside it.
    assert tuple(architecture_receptive_field(model, "0", 32))[:3] == (7, 2, -3)
    assert tuple(architecture_receptive_field(model, "0.conv1", 32))[:3] == (3, 2, -1)
    assert tuple(gradient_receptive_field(model, "0", 32))[:3] == (7, 2, -3)


def test_fallback_to_the_gradient_support():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Blur(), nn.Conv2d(4, 4, 3, stride=2, padding=1)).eval()
    rf = receptive_field(model, "2", 32)
    assert rf == ReceptiveField(7, 2, -3, "gradient")  # 3, then 5 (blur), then 5 + 2
    assert receptive_field(model, "0", 32).method == "architecture"


def test_mobilenet_v2_middle_layer_matches_gradient_support():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    before = model_fingerprint(model)
    arch = architecture_receptive_field(model, "features.7", 128)
    assert tuple(arch)[:3] == (75, 16, -37)
    assert tuple(gradient_receptive_field(model, "features.7", 128, repeats=2))[:3] == tuple(arch)[:3]
    assert_unchanged(model, before)


def test_imported_mobilenet_v2_tf_same_matches_gradient(mobilenet_v2_import):
    model = mobilenet_v2_import.model
    arch = architecture_receptive_field(model, "features.7", 224)
    assert arch.stride == 16 and arch.size == 75
    assert tuple(gradient_receptive_field(model, "features.7", 224, repeats=2))[:3] == tuple(arch)[:3]


def test_neuron_box_is_clipped():
    rf = ReceptiveField(75, 16, -37)
    assert neuron_box(rf, 5, 5) == (43, 43, 118, 118)
    assert neuron_box(rf, 0, 13, image_size=224) == (0, 171, 38, 224)


def tiny() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 6, 5, stride=4, padding=2), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


def test_running_top_k_equals_brute_force():
    model, images, preprocess = tiny(), builtin_images(), Preprocess(64, 72)
    before = model_fingerprint(model)
    top = top_activations(model, images, preprocess, "2", [0, 3, 5], k=3, batch_size=2, progress=False)
    with torch.no_grad():
        activation = model[:3](load_inputs(images.paths, preprocess))[:, [0, 3, 5]]  # (N, 3, 8, 8)
    values, flat = activation.flatten(2).max(dim=2)
    expected_values, expected_images = values.T.topk(3, dim=1)
    assert torch.allclose(top.values, expected_values)
    assert torch.equal(top.image_indices, expected_images)
    expected_flat = flat.T.gather(1, expected_images)
    assert torch.equal(top.positions[..., 0] * 8 + top.positions[..., 1], expected_flat)
    # one spatial neuron
    top = top_activations(model, images, preprocess, "2", [3], k=2, neuron=(4, 2), batch_size=3, progress=False)
    assert torch.equal(top.image_indices[0], activation[:, 1, 4, 2].topk(2).indices)
    assert top.positions[0].tolist() == [[4, 2], [4, 2]]
    assert_unchanged(model, before)


def test_neuron_view_crops_and_guided_backprop():
    model, images, preprocess = tiny(), builtin_images(), Preprocess(64, 72)
    before = model_fingerprint(model)
    view = neuron_view(model, preprocess, images, "2", [1, 2], k=2, progress=False)
    assert view.gradient_method == "guided backprop" and view.field.size == 13  # 5x5/4 pad 2, then 3x3/2: 5 + 2*4
    for i in range(2):
        for crop, grad, (t, l, b, r) in zip(view.crops[i], view.guided[i], view.boxes[i]):
            assert crop.shape == grad.shape == (3, b - t, r - l)
            assert 0 <= crop.min() and crop.max() <= 1
        assert any(g.abs().sum() > 0 for g in view.guided[i])
    assert_unchanged(model, before)


def test_cli_neurons(tmp_path, capsys):
    out, photo = tmp_path / "n", str(builtin_images().paths[0])
    args = ["neurons", "default", photo, "--layer", "blocks.2", "--channels", "0,7", "--top", "1", "--neuron", "14,14",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert (out / "neurons_blocks_2.png").stat().st_size > 0
    assert "receptive field 67 px" in capsys.readouterr().out
    saved = json.loads((out / "neurons_blocks_2.json").read_text())
    assert saved["channels"][0]["top"][0]["position"] == [14, 14]
    assert main(args) == 2  # exists, no --force
    assert main(["neurons", "default", "--layer", "blocks.99", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "no layer 'blocks.99'" in capsys.readouterr().err
