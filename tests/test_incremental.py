"""Incremental evaluation: cone geometry by hand, pasted activations equal to full forward passes, and its
approximate variant (projective-field thresholding) against the exact maps."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
from conftest import assert_unchanged, model_fingerprint
from torch import nn

from deepscope.attribution import Occlusion
from deepscope.attribution.incremental import ConePlan, ConeRunner, _box_length, local_stages
from deepscope.attribution.occlusion import DEFAULT_TAU, map_ssim
from deepscope.errors import DeepscopeError, LayerNotFoundError
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


# -- approximate occlusion (projective-field thresholding) -----------------------------------------------------
def three_convs():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


def test_thresholded_boxes_by_hand():
    stages = local_stages(three_convs())
    sizes = {stage.name: (16, 16) for stage in stages}
    exact = ConePlan.build(stages, sizes, (16, 16), (2, 2))
    assert [s.box for s in exact.segments] == [(4, 4), (6, 6), (8, 8)]  # a 3x3 conv grows a box by one per side
    assert ConePlan.build(stages, sizes, (16, 16), (2, 2), tau=1.0) == exact
    # tau 0.25 caps boxes at ceil(0.25 * 16) = 4 positions: cut 0 is not capped, cuts 1 and 2 are
    plan = ConePlan.build(stages, sizes, (16, 16), (2, 2), tau=0.25)
    assert [(s.box, s.thresholded, s.crop) for s in plan.segments] == [
        ((4, 4), (False, False), (6, 6)), ((4, 4), (True, True), (6, 6)), ((4, 4), (True, True), (6, 6))]
    # a window on pixels 7..8 changes positions 6..9 at cut 0, which reach 5..10 at cut 1: the capped box
    # 6..9 is centred on them; at the border (pixels 0..1, 12..13) the box stays inside the map
    placement = plan.place(torch.tensor([[7, 7], [0, 12]]))
    assert [box.tolist() for box in placement.boxes] == [[[6, 6], [0, 11]]] * 3
    assert placement.origins[1].tolist() == [[5, 5], [0, 10]]  # the crop reaches one position before the box


def test_approximate_occlusion_with_tau_1_is_the_exact_map():
    model = tf_like_net()
    before = model_fingerprint(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    exact = Occlusion(model, window=8, stride=4, batch_size=50)(x, target=[1, 4])
    method = Occlusion(model, window=8, stride=4, batch_size=50, approximate=1.0)
    assert torch.equal(method(x, target=[1, 4]), exact)
    torch.testing.assert_close(method.ssim_, torch.ones(2))
    assert_unchanged(model, before)


def test_the_check_reports_the_ssim_and_warns_when_it_is_low():
    model = tf_like_net()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    exact = Occlusion(model, window=8, stride=4, batch_size=50)(x, target=[1, 4])
    method = Occlusion(model, window=8, stride=4, batch_size=50, approximate=0.6, check=1)
    maps = method(x, target=[1, 4])
    assert not torch.equal(maps, exact) and method.cut_layer_ == "features.4"
    torch.testing.assert_close(method.ssim_, map_ssim(maps, exact))  # check=1: every window is checked
    assert float(method.ssim_.min()) > 0.99
    sparse = Occlusion(model, window=8, stride=4, batch_size=50, approximate=0.6)
    torch.testing.assert_close(sparse(x, target=[1, 4]), maps)
    assert sparse.ssim_.shape == (2,) and float(sparse.ssim_.min()) > 0.9
    # every 4th row and column of the 15x15 window grid would leave 4 of each: every 2nd is checked
    (rows, cols), step = sparse._checked_lines((15, 15), None)
    assert step == 2 and rows == cols == [0, 2, 4, 6, 8, 10, 12, 14]
    rough = Occlusion(model, window=8, stride=4, batch_size=50, approximate=0.2)
    with pytest.warns(UserWarning, match=r"approximate occlusion \(tau=0.2\): SSIM .* below 0.9"):
        rough(x, target=[1, 4])
    unchecked = Occlusion(model, window=8, stride=4, approximate=0.2, check=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unchecked(x, target=1)
    assert unchecked.ssim_ is None


@pytest.mark.parametrize("options, match", [
    ({"approximate": 0}, "approximate"), ({"approximate": 1.5}, "approximate"),
    ({"approximate": 0.5, "incremental": False}, "incremental"), ({"check": -1}, "check")])
def test_approximate_options_are_checked(options, match):
    with pytest.raises(DeepscopeError, match=match):
        Occlusion(tf_like_net(), **options)


def test_approximate_occlusion_of_the_imported_mobilenet_v2(mobilenet_v2_import, in20):
    from deepscope.images import load_inputs, scan_images

    loaded = mobilenet_v2_import
    found = scan_images(in20, loaded.classes)
    x = load_inputs([found.paths[len(found) // 2]], loaded.preprocess)
    before = model_fingerprint(loaded.model)
    exact = Occlusion(loaded.model, window=16, stride=8)(x)
    default = Occlusion(loaded.model, window=16, stride=8, approximate=True)
    maps = default(x)
    assert default.approximate == DEFAULT_TAU
    assert float(map_ssim(maps, exact).min()) >= 0.9 and float(default.ssim_.min()) >= 0.9
    # a threshold that caps the 7x7 maps (tau 0.5: 4 of 7 positions) drops changes the global average pooling
    # sums: the check sees it and warns
    rough = Occlusion(loaded.model, window=16, stride=8, approximate=0.5)
    with pytest.warns(UserWarning, match="below 0.9"):
        rough_maps = rough(x)
    assert rough.cut_layer_ == "features.18"
    ssim = map_ssim(rough_maps, exact)
    assert float(ssim.max()) < 0.9 and float(rough.ssim_.max()) < 0.9
    assert_unchanged(loaded.model, before)
