"""RISE: the batched method equals a slow per-mask loop written from the paper, for the same seed."""

import math

import pytest
import torch
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution.rise import RISE, rise_masks
from deepscope.errors import DeepscopeError


def _bilinear_weights(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) matrix of bilinear upsampling with half-pixel centres and edge values repeated, by hand."""
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    for u in range(out_size):
        source = min(max((u + 0.5) * in_size / out_size - 0.5, 0.0), in_size - 1)
        low = math.floor(source)
        high = min(low + 1, in_size - 1)
        matrix[u, low] += 1 - (source - low)
        matrix[u, high] += source - low
    return matrix


def _rise_by_hand(model, x, target, n, grid, keep, seed, score="probability"):
    """One mask and one forward pass at a time, the draws made in the documented order."""
    _, _, height, width = x.shape
    generator = torch.Generator().manual_seed(seed)
    grids = torch.rand(n, grid, grid, generator=generator) < keep
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    dy = torch.randint(0, cell_h, (n,), generator=generator)
    dx = torch.randint(0, cell_w, (n,), generator=generator)
    rows = _bilinear_weights((grid + 1) * cell_h, grid)
    cols = _bilinear_weights((grid + 1) * cell_w, grid)
    maps = torch.zeros(len(x), height, width, dtype=torch.float64)
    for j in range(n):
        big = rows @ grids[j].double() @ cols.T
        mask = big[dy[j]:dy[j] + height, dx[j]:dx[j] + width]
        for i in range(len(x)):
            with torch.no_grad():
                output = model(x[i:i + 1] * mask.to(x.dtype))
            value = output.softmax(1)[0, target[i]] if score == "probability" else output[0, target[i]]
            maps[i] += float(value) * mask
    return (maps / (n * keep))[:, None]


@pytest.fixture
def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()


@pytest.mark.parametrize("size, grid, keep", [((16, 16), 4, 0.5), ((15, 20), 3, 0.3)])
def test_rise_equals_the_slow_per_mask_loop(small_cnn, size, grid, keep):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 3])
    before = model_fingerprint(small_cnn)
    by_hand = _rise_by_hand(small_cnn, x, target, n=23, grid=grid, keep=keep, seed=5)
    for batch_size in (4, 64):  # the masks do not depend on the batch size
        ours = RISE(small_cnn, n=23, grid=grid, keep=keep, batch_size=batch_size, seed=5)(x, target)
        assert ours.shape == (2, 1, *size)
        torch.testing.assert_close(ours.double(), by_hand, rtol=1e-5, atol=1e-6)
    logits = RISE(small_cnn, n=23, grid=grid, keep=keep, score="logit", seed=5)(x, target)
    torch.testing.assert_close(logits.double(), _rise_by_hand(small_cnn, x, target, 23, grid, keep, 5, "logit"),
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(RISE(small_cnn, n=23, grid=grid, keep=keep, seed=6)(x, target), ours)
    assert_unchanged(small_cnn, before)


def test_masks_follow_the_paper():
    generator = torch.Generator().manual_seed(0)
    grids = torch.rand(200, 7, 7, generator=generator) < 0.5
    shifts = torch.randint(0, 32, (200, 2), generator=generator)
    masks = rise_masks(grids, shifts, (224, 224))
    assert masks.shape == (200, 1, 224, 224) and masks.min() >= 0 and masks.max() <= 1
    assert abs(float(masks.mean()) - 0.5) < 0.03  # the expected mask value is the keep probability
    # a grid cell kept everywhere gives an all-one mask, whatever the shift
    assert torch.equal(rise_masks(torch.ones(2, 7, 7, dtype=torch.bool), shifts[:2], (224, 224)),
                       torch.ones(2, 1, 224, 224))


def test_keeping_every_cell_gives_the_score_everywhere(small_cnn):
    x = torch.randn(2, 3, 16, 16)
    maps = RISE(small_cnn, n=5, keep=1.0)(x, 2)
    with torch.no_grad():
        probability = small_cnn(x).softmax(1)[:, 2]
    torch.testing.assert_close(maps, probability.view(2, 1, 1, 1).expand(2, 1, 16, 16))


def test_bad_options_are_refused(small_cnn):
    for options, message in [({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"n": 0}, "at least 1"),
                             ({"score": "prob"}, "unknown RISE score")]:
        with pytest.raises(DeepscopeError, match=message):
            RISE(small_cnn, **options)
