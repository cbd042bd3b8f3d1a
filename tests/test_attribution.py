"""Pixel attribution: hand-computed answers on tiny models, invariants, and captum on real photos."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, model_fingerprint
from torch import nn

from deepscope.attribution import Gradient, GuidedBackprop, IntegratedGradients, Occlusion, SmoothGrad
from deepscope.attribution.integrated_gradients import path_points
from deepscope.catalogue import build_method, get_method
from deepscope.errors import DeepscopeError, TargetError, UnsupportedModelError
from deepscope.probe import fast_layout


@pytest.fixture
def linear():
    """Flatten + Linear on (3, 8, 8) inputs, in float64: every method has a closed form."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double()


def images(n=2, size=8, seed=0, dtype=torch.float64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class SmoothNet(nn.Module):
    """A smooth (SiLU) CNN, for Integrated Gradients' completeness."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def chain_cnn():
    """A plain conv chain with strides, padding and pooling, so incremental occlusion has cuts to use."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU()),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2)
    return model.eval()


class GlobalInside(nn.Module):
    """A conv whose forward also uses the image mean: not local, though its modules look local."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * y.mean(dim=(2, 3), keepdim=True).sigmoid()


# -- hand-computed answers --------------------------------------------------------------------------------
def test_gradient_of_linear_model_is_weight(linear):
    x, weight = images(), linear[1].weight
    signed = Gradient(linear, absolute=False)(x, target=[1, 3])
    torch.testing.assert_close(signed, weight[[1, 3]].view(2, 3, 8, 8))
    saliency = Gradient(linear)(x, target=2)
    torch.testing.assert_close(saliency, weight[2].abs().view(1, 3, 8, 8).amax(1, keepdim=True).expand(2, -1, -1, -1))


def test_integrated_gradients_of_linear_model(linear):
    x, baseline = images(), images(1, seed=5)
    maps = IntegratedGradients(linear, baseline=baseline, steps=3)(x, target=0)
    torch.testing.assert_close(maps, (x - baseline) * linear[1].weight[0].view(1, 3, 8, 8))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_completeness(method):
    torch.manual_seed(0)
    model = SmoothNet().double()
    x = images(3)
    ig = IntegratedGradients(model, steps=64, method=method, batch_size=50)
    maps = ig(x, target=[0, 1, 2])
    assert maps.shape == x.shape
    error = ig.completeness_error(x, maps, target=[0, 1, 2])
    assert error.abs().max() < 1e-4
    assert maps.flatten(1).sum(1).abs().min() > 1e-3  # not trivially zero
    # a crude integral must show a larger error: the check can fail
    crude = IntegratedGradients(model, steps=2, method="riemann_left")
    assert crude.completeness_error(x, crude(x, target=0), target=0).abs().max() > 10 * error.abs().max()


def test_path_points_match_the_rules():
    for method in ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
        alphas, weights = path_points(10, method)
        assert weights.sum().item() == pytest.approx(1.0)
        # exact for linear integrands on [0, 1] (trapezoid, middle, gauss) or off by h/2 (left/right)
        expected = {"riemann_left": 0.45, "riemann_right": 0.55}.get(method, 0.5)
        assert (alphas * weights).sum().item() == pytest.approx(expected)
    with pytest.raises(DeepscopeError, match="integration method"):
        path_points(5, "simpson")


def test_occlusion_window_equals_stride_on_linear_model(linear):
    x = images()
    maps = Occlusion(linear, window=4, stride=4, baseline="zero")(x, target=[0, 2])
    contribution = (linear[1].weight[[0, 2]].view(2, 3, 8, 8) * x).sum(1)          # (2, 8, 8)
    patch_sums = contribution.view(2, 2, 4, 2, 4).sum(dim=(2, 4))                  # (2, 2, 2)
    expected = patch_sums.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    torch.testing.assert_close(maps, expected)


def test_occlusion_overlapping_windows_average_the_drops(linear):
    x = images(1)
    maps = Occlusion(linear, window=4, stride=2)(x, target=1)
    contribution = (linear[1].weight[1].view(3, 8, 8) * x[0]).sum(0)
    drops = F.avg_pool2d(contribution[None, None], 4, stride=2)[0, 0] * 16          # (3, 3) windows
    total = F.conv_transpose2d(drops[None, None], torch.ones(1, 1, 4, 4, dtype=x.dtype), stride=2)
    count = F.conv_transpose2d(torch.ones_like(drops)[None, None], torch.ones(1, 1, 4, 4, dtype=x.dtype), stride=2)
    torch.testing.assert_close(maps, total / count)


def test_occlusion_baselines_and_probability(linear):
    x = images(1)
    mean = Occlusion(linear, window=8, stride=8, baseline="mean")(x, target=0)
    weight = linear[1].weight[0].view(3, 8, 8)
    expected = (weight * (x[0] - x[0].mean(dim=(1, 2), keepdim=True))).sum()
    torch.testing.assert_close(mean, expected.expand(1, 1, 8, 8))
    constant = Occlusion(linear, window=8, stride=8, baseline=0.5)(x, target=0)
    torch.testing.assert_close(constant, (weight * (x[0] - 0.5)).sum().expand(1, 1, 8, 8))
    blur = Occlusion(linear, window=8, stride=8, baseline="blur").baseline_images(x)
    assert blur.std() < x.std() and blur.mean().item() == pytest.approx(x.mean().item(), abs=0.2)
    probability = Occlusion(linear, window=8, stride=8, score="probability")(x, target=0)
    with torch.no_grad():
        p = linear(torch.cat([x, torch.zeros_like(x)])).softmax(1)[:, 0]
    torch.testing.assert_close(probability, (p[0] - p[1]).expand(1, 1, 8, 8))


def test_smoothgrad_without_noise_is_the_gradient():
    model = chain_cnn().double()
    x = images(2, size=16)
    gradient = Gradient(model)(x)
    torch.testing.assert_close(SmoothGrad(Gradient(model), n=4, noise=0.0, batch_size=3)(x), gradient)


def test_smoothgrad_is_seeded_and_independent_of_batch_size():
    model = chain_cnn()
    x = images(2, size=16, dtype=torch.float32)
    a = SmoothGrad(Gradient(model), n=5, batch_size=3, seed=7)(x, target=1)
    b = SmoothGrad(Gradient(model), n=5, batch_size=10, seed=7)(x, target=1)
    c = SmoothGrad(Gradient(model), n=5, batch_size=3, seed=8)(x, target=1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, Gradient(model)(x, target=1))


def test_guided_backprop_rule_for_models_without_relu(linear):
    # The documented rule: a model with no ReLU/ReLU6 module is refused (functional ReLUs would be missed).
    with pytest.raises(UnsupportedModelError, match="no nn.ReLU"):
        GuidedBackprop(linear)
    with pytest.raises(UnsupportedModelError, match="SiLU"):
        GuidedBackprop(SmoothNet())
    # Where no ReLU clips anything (positive inputs and weights), guided backprop is the plain gradient.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU6()).double()
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.uniform_(0.01, 0.1)
            layer.bias.zero_()
    x = images(2, size=2).abs() + 0.1
    torch.testing.assert_close(GuidedBackprop(model)(x, target=0), Gradient(model, absolute=False)(x, target=0))
    # ...and where a ReLU does clip a negative gradient, it is not.
    with torch.no_grad():
        model[3].weight[0, :3] *= -1
    assert not torch.allclose(GuidedBackprop(model)(x, target=0), Gradient(model, absolute=False)(x, target=0))


# -- chunking, incremental occlusion, the user's model ---------------------------------------------------
def test_chunked_and_unchunked_runs_are_identical():
    model = chain_cnn()
    x = images(2, size=16, dtype=torch.float32)
    one = Occlusion(model, window=4, stride=2, batch_size=1, incremental=False)(x)
    many = Occlusion(model, window=4, stride=2, batch_size=1000, incremental=False)(x)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)
    small = IntegratedGradients(model, steps=8, batch_size=3)(x)
    large = IntegratedGradients(model, steps=8, batch_size=100)(x)
    torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cut", [True, "2", "3", "6"])
def test_incremental_occlusion_equals_full_forward_passes(cut):
    model = chain_cnn()
    x = images(2, size=48 if cut is True else 24, dtype=torch.float32)  # the automatic choice needs room to pay
    for window, stride in [(4, 3), (6, 5)]:
        fast = Occlusion(model, window=window, stride=stride, baseline="blur", batch_size=7, incremental=cut)
        maps = fast(x, target=[0, 3])
        assert fast.cut_layer_ is not None
        plain = Occlusion(model, window=window, stride=stride, baseline="blur", batch_size=7, incremental=False)
        torch.testing.assert_close(maps, plain(x, target=[0, 3]), rtol=1e-4, atol=1e-6)
        assert plain.cut_layer_ is None


def test_incremental_occlusion_on_mobilenet_v2_layout():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()
    x = images(1, size=64, dtype=torch.float32)
    fast = Occlusion(model, window=16, stride=8, batch_size=64)
    maps = fast(x)
    assert fast.cut_layer_ and fast.cut_layer_.startswith("features.")
    plain = Occlusion(model, window=16, stride=8, incremental=False)(x)
    torch.testing.assert_close(maps, plain, rtol=1e-4, atol=1e-4 * plain.abs().max().item())


def test_incremental_occlusion_falls_back_when_the_cut_is_not_local():
    torch.manual_seed(0)
    model = nn.Sequential(GlobalInside(), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3)).eval()
    x = images(1, size=32, dtype=torch.float32)
    fast = Occlusion(model, window=4, stride=4, incremental="2")
    with pytest.warns(UserWarning, match="not exact"):
        maps = fast(x, target=1)
    assert fast.cut_layer_ is None
    torch.testing.assert_close(maps, Occlusion(model, window=4, stride=4, incremental=False)(x, target=1))


def test_callable_target_is_evaluated_on_occluded_outputs(linear):
    x = images(1)
    margin = lambda out: out[:, 0] - out[:, 1]  # noqa: E731
    maps = Occlusion(linear, window=8, stride=8)(x, target=margin)
    weight = linear[1].weight
    torch.testing.assert_close(maps, ((weight[0] - weight[1]).view(3, 8, 8) * x[0]).sum().expand(1, 1, 8, 8))


METHODS = {
    "gradient": lambda m: Gradient(m),
    "guided": lambda m: GuidedBackprop(m),
    "occlusion": lambda m: Occlusion(m, window=4, stride=4),
    "smoothgrad": lambda m: SmoothGrad(Gradient(m), n=3),
    "ig": lambda m: IntegratedGradients(m, steps=4),
}


@pytest.mark.parametrize("name", METHODS)
def test_model_unchanged_also_on_error(name, tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    x = images(2, size=16, dtype=torch.float32)
    original = x.clone()
    method = METHODS[name](tiny_cnn)
    maps = method(x)
    assert maps.shape[0] == 2 and maps.shape[-2:] == (16, 16) and torch.isfinite(maps).all()
    assert maps.shape[1] == (3 if method.per_channel else 1)
    assert_unchanged(tiny_cnn, before)
    assert torch.equal(x, original)
    with pytest.raises(TargetError):
        method(x, target=99)
    assert_unchanged(tiny_cnn, before)


def test_catalogue_builds_every_pixel_method(tiny_cnn):
    for name in ("occlusion", "smoothgrad", "ig", "gradient", "guided"):
        method = build_method(name, tiny_cnn, **get_method(name).offered(batch_size=8, seed=3, layer="2"))
        assert method.name == name and not hasattr(method, "layer")
    assert build_method("smoothgrad", tiny_cnn, seed=3).seed == 3
    with pytest.raises(DeepscopeError, match="baseline"):
        Occlusion(tiny_cnn, baseline="gray")


# -- captum on real photos ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["default", "mobilenet_v2_import"])
def real(request, in20):
    """(model, two in20 photos, their predicted classes) for the default model and the imported MobileNet-V2.

    The photos come in deepscope's CPU memory layout (channels-last, :func:`deepscope.probe.fast_layout`), so
    captum runs the same convolution kernels. In the default layout the sums inside convolutions run in
    another order (1e-6 relative), which flips the few ReLU6 gates that sit that close to 0 or 6 and moves
    gradients at some pixels by up to 0.3% of the map's maximum: a difference of float arithmetic, not of
    the methods.
    """
    from deepscope.images import load_inputs, scan_images
    from deepscope.models.zoo import load_model

    if request.param == "default":
        loaded = load_model("default")
    else:
        pytest.importorskip("deepscope.models.tflite", reason="the TFLite importer has not landed yet")
        loaded = request.getfixturevalue("mobilenet_v2_import")
    found = scan_images(in20, loaded.classes)
    paths = [found.paths[0], found.paths[len(found) // 2]]
    x = fast_layout(load_inputs(paths, loaded.preprocess))
    with torch.no_grad():
        target = loaded.model(x).argmax(1)
    return loaded.model, x, target


def assert_matches(ours, reference):
    scale = reference.abs().max().item()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * scale)


def test_occlusion_matches_captum(real):
    captum = pytest.importorskip("captum.attr")
    model, x, target = real
    x, target = x[:1], target[:1]
    before = model_fingerprint(model)
    occlusion = Occlusion(model, window=48, stride=44, batch_size=32)
    ours = occlusion(x, target=target)
    assert occlusion.cut_layer_ is not None  # the incremental path is what is compared
    reference = captum.Occlusion(model).attribute(x, sliding_window_shapes=(3, 48, 48), strides=(3, 44, 44),
                                                  baselines=0, target=target, perturbations_per_eval=32)
    assert_matches(ours, reference[:, :1])
    assert_unchanged(model, before)


def test_gradient_and_ig_match_captum(real):
    captum = pytest.importorskip("captum.attr")
    model, x, target = real
    before = model_fingerprint(model)
    assert_matches(Gradient(model, absolute=False)(x, target=target),
                   captum.Saliency(model).attribute(x, target=target, abs=False))
    ours = IntegratedGradients(model, steps=8, batch_size=16)(x[:1], target=target[:1])
    reference = captum.IntegratedGradients(model).attribute(x[:1], target=target[:1], n_steps=8, internal_batch_size=16)
    assert_matches(ours, reference)
    assert_unchanged(model, before)


def test_guided_backprop_matches_captum_with_relu6_hooked(real):
    """captum's GuidedBackprop hooks nn.ReLU only; both models use ReLU6, so its hook is extended to ReLU6."""
    attr = pytest.importorskip("captum.attr")

    class CaptumGuidedReLU6(attr.GuidedBackprop):
        def _register_hooks(self, module):
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                from captum._utils.common import _register_backward_hook
                self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))

    model, x, target = real
    before = model_fingerprint(model)
    ours = GuidedBackprop(model)(x, target=target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = CaptumGuidedReLU6(model).attribute(x, target=target)
    assert_matches(ours, reference)
    assert_unchanged(model, before)


# -- rendering and the CLI ----------------------------------------------------------------------------------
def test_display_maps_and_figures():
    from deepscope.maps import Display, display_maps
    from deepscope.render.attribution import attribution_grid, attribution_panel

    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 16, 16, generator=generator)
    maps = {"gradient": torch.rand(2, 1, 16, 16, generator=generator),
            "ig": torch.randn(2, 3, 16, 16, generator=generator)}
    displays = {"gradient": Gradient.display, "ig": IntegratedGradients.display}
    shown = display_maps(maps["ig"], displays["ig"])
    summed = maps["ig"].sum(1)
    scale = torch.quantile(summed.flatten(1).abs(), 0.995, dim=1).view(2, 1, 1)
    assert displays["ig"] == Display("sum", signed=True) and shown.shape == (2, 16, 16)
    torch.testing.assert_close(shown, (summed / scale).clamp(-1, 1))
    assert not displays["gradient"].signed and display_maps(maps["gradient"], displays["gradient"]).min() >= 0
    grid = attribution_grid(pixels, maps, displays, ["a.jpg", "b.jpg"], ["tench", "goldfish"])
    titles = [ax.get_title() for ax in grid.axes]
    assert "a.jpg\ntench" in titles and "gradient" in titles and "ig" in titles
    assert len(grid.axes) == 2 * 3 + 2 * 2  # images x (image + methods), plus a colour bar per map
    panel = attribution_panel(pixels[0], {name: m[:1] for name, m in maps.items()}, displays, "tench")
    assert "ig\ntench" in [ax.get_title() for ax in panel.axes]


def test_explain_command(tmp_path, capsys):
    from deepscope.cli import main

    out = tmp_path / "explain"
    args = ["explain", "default", "--random-weights", "--method", "gradient,guided", "--limit", "1",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    written = sorted(p.name for p in out.iterdir())
    assert "grid.png" in written and len(written) == 2 and written[0].startswith("000_")
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["explain", "default", "--method", "gradcam++x", "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert "unknown method" in error and len(error.strip().splitlines()) == 1
    assert main(["explain", "default", "--random-weights", "--target", "no such class", "--out", str(tmp_path / "c")]) == 2
    assert "unknown class" in capsys.readouterr().err


# -- what the protocol accepts, casts and refuses ------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_inputs_are_checked_at_the_protocol_entry(name, tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    method = METHODS[name](tiny_cnn)
    x = images(2, size=16, dtype=torch.float32)
    nan = x.clone()
    nan[1, 0, 3, 3] = float("nan")
    for bad, says in [(x[:0], "empty batch"), (x[:, :1], "1 channel(s) but the model takes 3"),
                      (x[0], "add a batch dimension"), ((x * 255).byte(), "floating point"),
                      (nan, "NaN or infinite values (sample(s) 1)"), (x.numpy(), "must be a torch.Tensor")]:
        with pytest.raises(DeepscopeError, match=re.escape(says)):
            method(bad)
    with pytest.raises(TargetError, match="classes.index"):
        method(x, target="tench")
    torch.testing.assert_close(method(x.double()), method(x))  # float64 is cast to the model's dtype
    with torch.inference_mode():  # a caller inside inference mode gets the same maps
        inside = method(x.clone())
    torch.testing.assert_close(inside, method(x))
    assert_unchanged(tiny_cnn, before)


def test_load_inputs_takes_one_path(tmp_path):
    from PIL import Image

    from deepscope.images import load_inputs
    from deepscope.models.preprocess import Preprocess

    path = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(path)
    assert load_inputs(str(path), Preprocess(32, 36)).shape == (1, 3, 32, 32)
    assert load_inputs(path, Preprocess(32, 36)).shape == (1, 3, 32, 32)
