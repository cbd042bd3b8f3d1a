"""Incremental evaluation: cone geometry by hand, and pasted activations equal to full forward passes."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from conftest import assert_unchanged, model_fingerprint
from torch import nn

from deepscope.attribution import Occlusion
from deepscope.attribution.incremental import ConePlan, ConeRunner, _box_length, local_stages
from deepscope.errors import LayerNotFoundError
from deepscope.geometry import window_geometry
from deepscope.models.tflite import Block, Conv2dSame
from deepscope.probe import Probe


def tf_like_net():
    """MobileNet-like stages with TensorFlow 'SAME' padding and a residual block, as the TFLite import builds."""
    torch.manual_seed(5)

    def block(residual, *layers):
        return Block(OrderedDict((str(i), layer) for i, layer in enumerate(layers)), residual=residual)

    return nn.Sequential(OrderedDict(
        features=nn.Sequential(
            block(False, Conv2dSame(3, 8, 3, stride=2), nn.ReLU6()),
            block(True, Conv2dSame(8, 8, 3, groups=8), nn.ReLU6(), Conv2dSame(8, 8, 1)),
            block(False, Conv2dSame(8, 16, 1), nn.ReLU6(), Conv2dSame(16, 16, 3, stride=2, groups=16), nn.ReLU6()),
            block(True, Conv2dSame(16, 16, 5, groups=16), nn.ReLU6()),
            block(False, Conv2dSame(16, 24, 3, stride=2), nn.ReLU6())),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(24, 6))).eval()


def test_box_length_by_hand():
    # a 16-pixel window through a stride-2 'SAME' conv (reads 2p .. 2p+2): positions (y-2)/2 .. (y+15)/2
    assert _box_length(16, 2, 0, 2) == 9
    assert _box_length(3, 1, 1, 1) == 5      # a 3x3 conv grows a box by one on each side
    assert _box_length(1, 1, 0, 0) == 1      # pointwise layers keep it
    assert _box_length(4, 2, 1, 1) == 3      # window 4 at any offset meets three stride-2 positions


def test_same_padding_reach_by_hand():
    assert window_geometry(Conv2dSame(3, 8, 3, stride=2)) == ((2, 2), ((0, 2), (0, 2)))
    assert window_geometry(Conv2dSame(3, 8, 3)) == ((1, 1), ((1, 1), (1, 1)))
    assert window_geometry(Conv2dSame(3, 8, 5, stride=2)) == ((2, 2), ((1, 3), (1, 3)))
    assert window_geometry(nn.Conv2d(3, 8, 3, padding=1)) == ((1, 1), ((1, 1), (1, 1)))
    assert window_geometry(nn.ReLU()) is None


def test_local_stages_stop_at_the_first_global_layer():
    stages = local_stages(tf_like_net())
    assert [s.name for s in stages] == [f"features.{i}" for i in range(5)]
    assert stages[-1].stride == (8, 8)
    with pytest.raises(LayerNotFoundError, match="cannot cut at 'fc'"):
        local_stages(tf_like_net(), "fc")


@pytest.mark.parametrize("window", [(1, 1), (5, 3), (8, 8)])
def test_pasted_activations_equal_full_forward_passes_at_every_cut(window):
    model = tf_like_net()
    before = model_fingerprint(model)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    stages = local_stages(model)
    starts = torch.tensor([[0, 0], [13, 7], [32 - window[0], 32 - window[1]], [5, 32 - window[1]]])
    with Probe(model, [s.name for s in stages], detach=True) as probe, torch.inference_mode():
        probe(x)
        references = dict(probe.activations)
        plan = ConePlan.build(stages, {k: tuple(v.shape[-2:]) for k, v in references.items()}, (32, 32), window)
        assert [s.name for s in plan.segments] == [s.name for s in stages]
        runner = ConeRunner(probe, stages)
        runner.set_reference(references)
        changed = x.expand(len(starts), -1, -1, -1).clone()
        for b, (y, x0) in enumerate(starts.tolist()):
            changed[b, :, y:y + window[0], x0:x0 + window[1]] = -3.0
        placement = plan.place(starts)
        crops = torch.stack([changed[b, :, oy:oy + plan.input_crop[0], ox:ox + plan.input_crop[1]]
                             for b, (oy, ox) in enumerate(placement.origins[0].tolist())])
        assert plan.input_crop[0] * plan.input_crop[1] < 32 * 32 or window == (8, 8)
        fast = runner.run(plan, crops, placement)
        last = runner.pasted[plan.last]
        full = probe(changed)
        torch.testing.assert_close(last, probe.activations[plan.last], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    assert_unchanged(model, before)


def test_occlusion_on_a_same_padded_chain_equals_full_passes():
    model = tf_like_net()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fast = Occlusion(model, window=8, stride=4, batch_size=50)
    maps = fast(x, target=[1, 4])
    assert fast.cut_layer_ is not None
    plain = Occlusion(model, window=8, stride=4, incremental=False)(x, target=[1, 4])
    torch.testing.assert_close(maps, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item())
