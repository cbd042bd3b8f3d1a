"""Objectives, parameterisations, regularisers, class models and Deep Dream on tiny models."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_unchanged, model_fingerprint
from torch import nn

from deepscope.cli import main
from deepscope.errors import TargetError
from deepscope.models.preprocess import Preprocess
from deepscope.optimize import (PRESETS, Seen, YosinskiRegularizer, channel, class_model, class_logit, deep_dream,
                                deepdream, fourier_image, l2, neuron, optimize_image, pixel_image)
from deepscope.optimize.parameterizations import COLOR_CORRELATION
from deepscope.optimize.transforms import standard_transforms

PRE = Preprocess(32, 36)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.BatchNorm2d(8), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():   # class k = 10 x pooled feature k: each class's logit can be raised on its own
        model[-1].weight.copy_(10 * torch.eye(5, 8))
        model[-1].bias.zero_()
    model.train()
    model[0].weight.requires_grad_(False)
    return model


def seen() -> Seen:
    output = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    activation = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).view(2, 2, 3, 3)
    return Seen(output, {"a": activation}, torch.full((2, 3, 4, 4), 0.7))


def test_objective_arithmetic():
    s = seen()
    assert class_logit(2)(s).tolist() == [3.0, 6.0]
    assert class_logit([0, 1])(s).tolist() == [1.0, 5.0]
    assert torch.allclose(l2()(s), torch.full((2,), 0.04))
    combined = class_logit(2) - 10 * l2()
    assert torch.allclose(combined(s), torch.tensor([2.6, 5.6]))
    assert torch.allclose((1 - class_logit(0) / 2)(s), torch.tensor([0.5, -1.0]))
    # channel 1 of sample 0 holds 9..17 (mean 13); centre neuron = 13; deepdream = mean of squares
    both = channel("a", 1) + 0.5 * neuron("a", 1) + neuron("a", 0, 0, 2)
    assert both.layers == ("a",)
    assert both(s)[0].item() == pytest.approx(13 + 6.5 + 2)
    assert deepdream("a")(s)[0].item() == pytest.approx(sum(v * v for v in range(18)) / 18)
    with pytest.raises(TargetError, match="channel 5"):
        channel("a", 5)(s)
    with pytest.raises(TypeError):
        channel("a", 0) * channel("a", 1)


def test_fourier_image_and_colour_decorrelation():
    generator = torch.Generator().manual_seed(0)
    param = fourier_image((2, 3, 16, 20), generator)
    pixels = param.pixels()
    assert pixels.shape == (2, 3, 16, 20) and 0 < pixels.min() and pixels.max() < 1
    assert COLOR_CORRELATION.norm(dim=0).max() == pytest.approx(1.0)
    pixels.sum().backward()
    assert param.params[0].grad is not None and param.params[0].grad.abs().sum() > 0


def test_yosinski_regularizer_by_hand():
    pixels = torch.full((1, 3, 2, 2), 0.5)
    pixels[0, :, 0, 0] = 0.9   # large norm
    pixels[0, :, 1, 1] = 0.6   # small norm
    YosinskiRegularizer(decay=0.5)(pixels, None, 1)
    assert pixels[0, 0, 0, 0].item() == pytest.approx(0.7)
    YosinskiRegularizer(norm_percentile=80)(pixels, None, 1)
    assert pixels[0, 0, 1, 1].item() == 0.5 and pixels[0, 0, 0, 0].item() == pytest.approx(0.7)
    pixels[0, :, 1, 1] = 0.9
    grad = torch.zeros_like(pixels)
    grad[..., 1, 1] = 1.0   # only (1, 1) contributes: (0, 0) is clipped to grey
    YosinskiRegularizer(contribution_percentile=90)(pixels, grad, 1)
    assert pixels[0, 0, 0, 0].item() == 0.5 and pixels[0, 0, 1, 1].item() == pytest.approx(0.9)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_class_model_increases_the_target_logit(preset):
    model = tiny()
    before = model_fingerprint(model)
    images = class_model(model, [1, 3], PRE, preset=preset, steps=30, progress=False)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    with torch.no_grad():
        model.eval()
        grey = model(PRE.normalize(torch.full((2, 3, 32, 32), 0.5)))
        logits = model(PRE.normalize(images))
        model.train()
    for row, target in enumerate([1, 3]):
        gain = logits[row] - grey[row]
        assert gain[target] > 0.05, gain
        assert gain[target] > gain.mean() + 0.02, gain   # more than the classes on average
    assert_unchanged(model, before)


def test_seeded_runs_repeat_exactly():
    model = tiny()
    first = class_model(model, [2], PRE, preset="lucid", steps=5, seed=3, progress=False)
    again = class_model(model, [2], PRE, preset="lucid", steps=5, seed=3, progress=False)
    other = class_model(model, [2], PRE, preset="lucid", steps=5, seed=4, progress=False)
    assert torch.equal(first, again) and not torch.equal(first, other)
    photo = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))
    dreams = [deep_dream(model, photo, "2", PRE, octaves=2, steps=3, jitter=4, seed=s, progress=False) for s in (0, 0, 1)]
    assert torch.equal(dreams[0], dreams[1]) and not torch.equal(dreams[0], dreams[2])


def test_deep_dream_raises_the_layer_energy():
    model = tiny()
    before = model_fingerprint(model)
    photo = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1))
    dream = deep_dream(model, photo, "4", PRE, octaves=3, octave_scale=1.3, steps=5, lr=0.02, jitter=4, progress=False)
    assert dream.shape == (1, 3, 48, 48)
    energy = []
    for image in (photo[None], dream):
        with torch.no_grad():
            model.eval()
            energy.append(model[:5](PRE.normalize(image)).pow(2).mean().item())
            model.train()
    assert energy[1] > energy[0]
    assert_unchanged(model, before)


def test_model_unchanged_on_error():
    model = tiny()
    before = model_fingerprint(model)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(TargetError):
        optimize_image(model, channel("2", 99), PRE, pixel_image((1, 3, 32, 32), generator), steps=2, progress=False)
    assert_unchanged(model, before)
    with pytest.raises(TargetError):
        class_model(model, [7], PRE, steps=2, progress=False)
    assert_unchanged(model, before)


def test_standard_transforms_keep_the_input_size():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = standard_transforms(32)(x, generator)
    assert y.shape == (2, 3, 32, 32)
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_cli_classviz_errors(tmp_path, capsys):
    assert main(["classviz", "--classes", "flamingoo", "--out", str(tmp_path), "--quiet"]) == 2
    assert "flamingo" in capsys.readouterr().err


def test_cli_classviz_and_dream_write_figures(tmp_path, capsys):
    from deepscope.sample_images import builtin_images

    out = tmp_path / "cv"
    assert main(["classviz", "default", "--classes", "flamingo,130", "--steps", "1", "--out", str(out), "--quiet"]) == 0
    assert (out / "classviz_lucid.png").stat().st_size > 0 and "130 flamingo" in capsys.readouterr().out
    photo = builtin_images().paths[0]
    args = ["dream", "default", str(photo), "--layer", "blocks.3", "--octaves", "2", "--steps", "1", "--out",
            str(tmp_path / "d"), "--quiet"]
    assert main(args) == 0
    assert (tmp_path / "d" / f"dream_{photo.stem}_blocks_3.png").stat().st_size > 0
    assert main(args) == 2 and "--force" in capsys.readouterr().err
