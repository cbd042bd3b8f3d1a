"""Real photos: deepscope's CAMs agree with pytorch-grad-cam 1.5.7 (same layer, same target) map by map.

Runs on the imported MobileNet-V2 (fixture ``mobilenet_v2_import``); test_cam_reference_default.py runs the
same check on the built-in default model (EfficientNet-Lite0, real weights). Score-CAM costs one forward
per channel, so it is compared on one photo at an early layer with 24 channels.
"""

import pytest
import torch

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution.cam import CAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from deepscope.images import load_inputs, scan_images
from deepscope.maps import normalize
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


def check_agreement(loaded, photos, default_layer: str, few_channels: str) -> None:
    """Grad-CAM, Grad-CAM++, Layer-CAM at the default layer and Score-CAM at ``few_channels``: r >= 0.999; CAM."""
    model = loaded.model
    x = load_inputs(photos, loaded.preprocess)
    with torch.no_grad():
        classes = model(x).argmax(1)
    before = model_fingerprint(model)
    assert GradCAM(model).layers_for(x) == [default_layer]
    for ours, theirs in [(GradCAM, pgc.GradCAM), (GradCAMPlusPlus, pgc.GradCAMPlusPlus), (LayerCAM, pgc.LayerCAM)]:
        r = _agreement(ours(model), theirs, model, default_layer, x, classes)
        assert min(r) >= 0.999, (ours.name, r)
    # CAM finds the pooling + linear head and is Grad-CAM before its ReLU times h*w
    cam = CAM(model).attribute_raw(x, classes)
    pre_relu = GradCAM(model, relu=False).attribute_raw(x, classes)
    assert torch.allclose(pre_relu * cam[0, 0].numel(), cam, atol=1e-4 * float(cam.abs().max()))
    scorecam = ScoreCAM(model, layer=few_channels, batch_size=64, progress=False)
    r = _agreement(scorecam, pgc.ScoreCAM, model, few_channels, x[:1], classes[:1])
    assert min(r) >= 0.999, ("scorecam", r)
    assert_unchanged(model, before)


def test_cams_agree_with_pytorch_grad_cam_on_imported_mobilenet_v2(mobilenet_v2_import, photos):
    check_agreement(mobilenet_v2_import, photos, "features", "features.3")
