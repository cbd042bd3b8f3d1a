"""Real photos: deepscope's CAMs and FullGrad agree with pytorch-grad-cam 1.5.7 (same layer, same target) map by map.

Runs on the imported MobileNet-V2 (fixture ``mobilenet_v2_import``); test_cam_reference_default.py runs the
same check on the built-in default model (EfficientNet-Lite0, real weights). Score-CAM costs one forward
per channel, so it is compared on one photo at an early layer with 24 channels.
"""

import pytest
import torch
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution.cam import (CAM, AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM,
                                       ScoreCAM, XGradCAM)
from deepscope.attribution.fullgrad import FullGrad
from deepscope.images import load_inputs, scan_images
from deepscope.maps import normalize, upsample
from deepscope.probe import get_layer

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


@pytest.fixture(scope="module")
def photos(in20):
    images = scan_images(in20)
    return [images.paths[i] for i in (0, 360)]  # two classes


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def _agreement(ours, theirs, model, layer, x, classes):
    maps = normalize(ours(x, classes))
    with theirs(model, [get_layer(model, layer)]) as peer:
        if isinstance(peer, pgc.ScoreCAM):
            peer.batch_size = 64
        reference = torch.from_numpy(peer(x, [ClassifierOutputTarget(int(c)) for c in classes]))
    for parameter in model.parameters():  # pytorch-grad-cam's backward leaves .grad on the shared model
        parameter.grad = None
    assert maps.shape == (len(x), 1) + reference.shape[1:]
    return [_pearson(m, r) for m, r in zip(maps, reference)]


def check_agreement(loaded, photos, default_layer: str, few_channels: str, ablation_layer: str) -> None:
    """Grad-CAM, Grad-CAM++, Layer-CAM, HiResCAM, XGrad-CAM, Eigen-CAM at the default layer, Score-CAM at
    ``few_channels`` and Ablation-CAM at ``ablation_layer``: r >= 0.999; CAM.

    pytorch-grad-cam's Ablation-CAM runs the whole model before the layer for every batch of ablations, so it is
    checked where that is cheap, at a layer that ends in a ReLU6 (pytorch-grad-cam ablates with 0 only where the
    layer's smallest value is 0, as the paper and deepscope always do)."""
    model = loaded.model
    x = load_inputs(photos, loaded.preprocess)
    with torch.no_grad():
        classes = model(x).argmax(1)
    before = model_fingerprint(model)
    assert GradCAM(model).layers_for(x) == [default_layer]
    for ours, theirs in [(GradCAM, pgc.GradCAM), (GradCAMPlusPlus, pgc.GradCAMPlusPlus), (LayerCAM, pgc.LayerCAM),
                         (HiResCAM, pgc.HiResCAM), (XGradCAM, pgc.XGradCAM)]:
        r = _agreement(ours(model), theirs, model, default_layer, x, classes)
        assert min(r) >= 0.999, (ours.name, r)
    # Eigen-CAM: pytorch-grad-cam keeps LAPACK's arbitrary sign of the principal component, deepscope orients it
    # along the channels' sum (tests/test_cam.py); the map must equal pytorch-grad-cam's for one of the two signs
    signed = EigenCAM(model, relu=False)
    r = [_agreement(lambda *a: upsample((sign * signed.attribute_raw(*a)).clamp_min(0), x.shape[-2:]),
                    pgc.EigenCAM, model, default_layer, x, classes) for sign in (1, -1)]
    assert min(max(pair) for pair in zip(*r)) >= 0.999, ("eigencam", r)
    # CAM finds the pooling + linear head and is Grad-CAM before its ReLU times h*w
    cam = CAM(model).attribute_raw(x, classes)
    pre_relu = GradCAM(model, relu=False).attribute_raw(x, classes)
    assert torch.allclose(pre_relu * cam[0, 0].numel(), cam, atol=1e-4 * float(cam.abs().max()))
    ablationcam = AblationCAM(model, layer=ablation_layer)
    r = _agreement(ablationcam, pgc.AblationCAM, model, ablation_layer, x, classes)
    assert min(r) >= 0.999 and ablationcam.prefix_runs_ == "none", ("ablationcam", r)
    scorecam = ScoreCAM(model, layer=few_channels, batch_size=64, progress=False)
    r = _agreement(scorecam, pgc.ScoreCAM, model, few_channels, x[:1], classes[:1])
    assert min(r) >= 0.999, ("scorecam", r)
    assert_unchanged(model, before)


def test_cams_agree_with_pytorch_grad_cam_on_imported_mobilenet_v2(mobilenet_v2_import, photos):
    check_agreement(mobilenet_v2_import, photos, "features", "features.3", "features")


def check_fullgrad(loaded, photos, peer_model: nn.Module) -> None:
    """FullGrad of ``loaded.model`` against pytorch-grad-cam's on ``peer_model`` (the same function), first photo."""
    model = loaded.model
    x = load_inputs(photos[:1], loaded.preprocess)
    with torch.no_grad():
        classes = model(x).argmax(1)
        torch.testing.assert_close(peer_model(x), model(x), rtol=0, atol=0)
    before = model_fingerprint(model)
    maps = normalize(FullGrad(model)(x, classes))
    with pgc.FullGrad(peer_model, []) as peer:
        reference = torch.from_numpy(peer(x, [ClassifierOutputTarget(int(c)) for c in classes]))
    for parameter in peer_model.parameters():
        parameter.grad = None
    assert len(peer.bias_data) > 40  # every bias layer is in the peer's sum
    r = [_pearson(m, ref) for m, ref in zip(maps, reference)]
    assert min(r) >= 0.999, ("fullgrad", r)
    assert_unchanged(model, before)


def test_fullgrad_agrees_with_pytorch_grad_cam_on_imported_mobilenet_v2(mobilenet_v2_import, photos, monkeypatch):
    """The import's convolutions are ``Conv2dSame``, a Conv2d subclass (TensorFlow padding, batch norm folded into
    the bias); pytorch-grad-cam tests ``type(layer) in [Conv2d, BatchNorm2d]`` and would skip every one, so its
    layer search is widened to subclasses here."""
    import pytorch_grad_cam.fullgrad_cam as fullgrad_cam

    search = fullgrad_cam.find_layer_predicate_recursive
    monkeypatch.setattr(fullgrad_cam, "find_layer_predicate_recursive", lambda model, predicate: search(
        model, lambda layer: isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)) and layer.bias is not None))
    check_fullgrad(mobilenet_v2_import, photos, mobilenet_v2_import.model)
