"""GradientSHAP / Expected Gradients and VarGrad: closed forms on a linear model, SmoothGrad's draws, and captum's
GradientShap fed the same draws on real photos."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution import Gradient, GradientSHAP, ReferencePhotos, SmoothGrad, VarGrad
from deepscope.catalogue import build_method
from deepscope.errors import DeepscopeError
from deepscope.probe import fast_layout


def _images(n, size=8, seed=0, dtype=torch.float64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture
def linear():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double()


@pytest.fixture
def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).double().eval()


def test_expected_gradients_on_a_linear_model_is_input_minus_mean_baseline_times_weight(linear):
    x, references = _images(2), _images(5, seed=1)
    method = GradientSHAP(linear, references, n=7, batch_size=3, seed=4)
    drawn = references[method.draws(x)["index"]].view(2, 7, 3, 8, 8).mean(1)
    maps = method(x, target=2)
    weight = linear[1].weight[2].detach().view(3, 8, 8)
    torch.testing.assert_close(maps, (x - drawn) * weight)
    # so the attributions add up to score(x) minus the mean score of the drawn baselines
    with torch.no_grad():
        gap = linear(x)[:, 2] - linear(drawn)[:, 2]
    torch.testing.assert_close(maps.sum((1, 2, 3)), gap)


def test_gradientshap_is_seeded_and_independent_of_batch_size(small_cnn):
    x, references = _images(2, size=12), _images(4, size=12, seed=1)
    before = model_fingerprint(small_cnn)
    a = GradientSHAP(small_cnn, references, n=5, noise=0.1, batch_size=3, seed=7)(x, target=1)
    b = GradientSHAP(small_cnn, references, n=5, noise=0.1, batch_size=10, seed=7)(x, target=1)
    c = GradientSHAP(small_cnn, references, n=5, noise=0.1, batch_size=3, seed=8)(x, target=1)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert_unchanged(small_cnn, before)
    draws = GradientSHAP(small_cnn, references, n=5, noise=0.0, seed=7).draws(x)
    assert draws["index"].shape == (10,) and 0 <= draws["alpha"].min() and draws["alpha"].max() < 1
    assert not draws["noise"].any()  # Expected Gradients draws no noise


def test_baselines_are_checked_before_any_pass(small_cnn):
    with pytest.raises(DeepscopeError, match=r"shaped like the inputs \(M, 3, 12, 12\)"):
        GradientSHAP(small_cnn, _images(4, size=8))(_images(1, size=12))
    with pytest.raises(DeepscopeError, match="needs baselines"):
        GradientSHAP(small_cnn, "builtin")
    with pytest.raises(DeepscopeError, match="no such folder"):
        build_method("gradientshap", small_cnn, baselines="/no/such/folder")


def test_reference_photos_are_preprocessed_like_the_inputs(in20):
    folder = in20 / "n01440764"
    photos = ReferencePhotos(str(folder), limit=4)
    assert len(photos.paths) == 4 and all(p.parent == folder for p in photos.paths)
    x = torch.zeros(1, 3, 224, 224)
    references = photos(x)
    assert references.shape == (4, 3, 224, 224) and references.min() < -1 and references.max() > 1  # normalised
    assert photos(torch.zeros(2, 3, 32, 32, dtype=torch.float64)).shape == (4, 3, 32, 32)
    assert len(ReferencePhotos("builtin").paths) >= 1


def test_vargrad_is_the_variance_of_smoothgrads_copies(small_cnn):
    x = _images(2, size=12)
    method = VarGrad(Gradient(small_cnn, absolute=False), n=6, noise=0.2, batch_size=4, seed=3)
    ours = method(x, target=1)
    # by hand: the same noisy copies (SmoothGrad's draws), one gradient each, then the population variance
    generator = torch.Generator().manual_seed(3)
    copies = torch.cat([noisy for _, _, noisy in method.noisy_copies(x, generator)])
    gradients = Gradient(small_cnn, absolute=False)(copies, target=1).view(2, 6, 3, 12, 12)
    torch.testing.assert_close(ours, gradients.var(dim=1, unbiased=False))
    smooth = SmoothGrad(Gradient(small_cnn, absolute=False), n=6, noise=0.2, batch_size=4, seed=3)(x, target=1)
    torch.testing.assert_close(smooth, gradients.mean(dim=1))
    assert not VarGrad.display.signed and ours.min() >= 0


def test_vargrad_of_a_linear_model_is_zero(linear):
    maps = VarGrad(Gradient(linear, absolute=False), n=5, noise=0.3)(_images(2), target=0)
    assert maps.abs().max() < 1e-12
    assert VarGrad(Gradient(linear, absolute=False), n=5, noise=0.0)(_images(2), target=0).abs().max() == 0


# -- captum on real photos, fed the same draws ----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["default", "mobilenet_v2_import"])
def real(request, in20):
    """(model, two in20 photos in deepscope's CPU layout, their predicted classes, four other photos as baselines)."""
    from deepscope.images import load_inputs, scan_images
    from deepscope.models.zoo import load_model

    loaded = load_model("default") if request.param == "default" else request.getfixturevalue("mobilenet_v2_import")
    found = scan_images(in20, loaded.classes)
    step = len(found) // 6
    x = fast_layout(load_inputs([found.paths[i * step] for i in range(6)], loaded.preprocess))
    with torch.no_grad():
        target = loaded.model(x[:2]).argmax(1)
    return loaded.model, x[:2], target, x[2:]


def test_gradientshap_matches_captum_for_the_same_draws(real, monkeypatch):
    captum = pytest.importorskip("captum.attr")
    model, x, target, references = real
    before = model_fingerprint(model)
    method = GradientSHAP(model, references, n=4, noise=0.05, batch_size=8, seed=2)
    ours = method(x, target=target)
    draws = method.draws(x)
    assert draws["noise"].abs().max() > 0
    monkeypatch.setattr(np.random, "choice", lambda count, size: draws["index"].numpy())
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: draws["alpha"].double().numpy())
    monkeypatch.setattr(torch, "normal", lambda mean, std: draws["noise"])
    # captum's copies lose the channels-last layout; its forward restores it, so both run the same kernels
    # (in another layout the sums inside convolutions run in another order and flip a few ReLU6 gates)
    reference = captum.GradientShap(lambda inputs: model(fast_layout(inputs))).attribute(
        x, references, n_samples=4, stdevs=1.0, target=target)
    for parameter in model.parameters():
        parameter.grad = None
    scale = reference.abs().max().item()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * scale)
    assert_unchanged(model, before)
