"""Adaptive drill-down (approximate occlusion): which windows it computes and what it interpolates, by hand; the
exact map at drill_down=1; its SSIM check off the coarse grid; its options in the library and the catalogue."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, model_fingerprint
from test_incremental import tf_like_net
from torch import nn

import deepscope.attribution.occlusion as occlusion_module
from deepscope.attribution import Occlusion
from deepscope.attribution.occlusion import CoarseGrid, map_ssim, spread_windows
from deepscope.catalogue import build_method, parse_method_options
from deepscope.errors import DeepscopeError


class Recorder(nn.Module):
    """Passes its input on and keeps every batch it saw."""

    def __init__(self):
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def forward(self, x):
        self.batches.append(x.detach().clone())
        return x


def mean_model() -> nn.Sequential:
    """One score: the image's mean. A window's drop (zero baseline) is the sum of its pixels / the image's pixels."""
    return nn.Sequential(Recorder(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def squares(flipped: bool = False) -> torch.Tensor:
    """A 16 x 16 image ``i**2 + j**2`` (row i, column j; ``flipped``: ``(15 - i)**2 + (15 - j)**2``): its window drops
    grow towards the bottom right (top left) and are not bilinear, so interpolation misses them."""
    index = torch.arange(16.0)
    index = 15 - index if flipped else index
    return (index[:, None] ** 2 + index[None, :] ** 2)[None, None]


def exact_drops(image: torch.Tensor) -> np.ndarray:
    """(7, 7) drops of the 4 px windows at stride 2, summed by hand."""
    pixels = image[0, 0].double().numpy()
    return np.array([[pixels[2 * r:2 * r + 4, 2 * c:2 * c + 4].sum() / 256 for c in range(7)] for r in range(7)])


def occluded_windows(batches: list[torch.Tensor], image: torch.Tensor) -> list[int]:
    """Row-major indices (7 x 7 grid) of the window zeroed in each occluded copy of ``image``, in order."""
    found = []
    for batch in batches:
        for copy in batch:
            changed = (copy != image[0]).any(dim=0).nonzero()
            if len(changed):
                top, left = changed.min(dim=0).values.tolist()
                found.append(top // 2 * 7 + left // 2)
    return found


#: the coarse pass on the 7 x 7 grid with coarse_factor 3: rows and columns 0, 3, 6
COARSE = [0, 3, 6, 21, 24, 27, 42, 45, 48]
#: the 10 windows (a quarter of the 40 left out) whose cell's coarse drops differ most. With S(r) the sum of
#: squares under window row (column) r -- S(0) = 14, S(3) = 230, S(6) = 734 -- a window inside the cell between
#: rows a, b and columns c, d sees a spread S(b) - S(a) + S(d) - S(c): 1008 inside the bottom-right cell (4
#: windows), 720 inside the two off-diagonal cells (8 windows, the first 6 in row-major order are taken), at most
#: 504 on the coarse rows and columns
DRILLED = [11, 12, 18, 19, 29, 30, 32, 33, 39, 40]
DRILLED_FLIPPED = [8, 9, 11, 12, 15, 16, 18, 19, 29, 30]  # the top-left cell is the roughest
#: the check: the middles of the gaps between coarse rows (and columns), 1 and 4
CHECKED = [8, 11, 29, 32]


def test_drill_down_computes_the_expected_windows_and_interpolates_the_others():
    model = mean_model()
    before = model_fingerprint(model)
    images = torch.cat([squares(), squares(flipped=True)])
    method = Occlusion(model, window=4, stride=2, incremental=False, drill_down=0.25, coarse_factor=3, check=4,
                       batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the check's SSIM may be low: interpolation misses the squares
        maps = method(images, target=0)
    recorded = model[0].batches
    assert recorded[0].shape[0] == 2  # the clean pass; then per image: coarse pass, drilled windows, check
    for i, drilled in enumerate([DRILLED, DRILLED_FLIPPED]):
        image_batches = [recorded[1 + i], recorded[3 + i], recorded[5 + i]]
        assert occluded_windows(image_batches, images[i]) == COARSE + drilled + CHECKED
    assert len(recorded) == 7
    # by hand: bilinear interpolation of the coarse drops (numpy's, one axis after the other), exact where computed
    expected = []
    for image, drilled in zip(images, [DRILLED, DRILLED_FLIPPED]):
        exact = exact_drops(image[None])
        nodes = [0, 3, 6]
        along_rows = np.stack([np.interp(range(7), nodes, exact[nodes, c]) for c in nodes], axis=1)
        interpolated = np.stack([np.interp(range(7), nodes, row) for row in along_rows])
        assert not np.allclose(interpolated, exact)
        values = interpolated.reshape(-1)
        values[COARSE + drilled] = exact.reshape(-1)[COARSE + drilled]
        expected.append(values)
    # window (1, 1) lies a third of the way from the coarse windows (0, 0) to (3, 3) on both axes
    corners = exact_drops(squares())[np.ix_([0, 3], [0, 3])]
    weights = np.array([2 / 3, 1 / 3])
    assert expected[0][8] == pytest.approx(weights @ corners @ weights)
    truth = spread_windows(torch.tensor(np.stack(expected), dtype=torch.float32), (16, 16), (4, 4), (2, 2))
    torch.testing.assert_close(maps, truth)
    assert method.cut_layer_ is None and method.windows_ == (len(COARSE) + len(DRILLED), len(CHECKED))
    assert_unchanged(model, before)


def test_the_progress_bar_counts_every_window_computed(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total, **_):
            self.total, self.done = total, 0
            bars.append(self)

        def update(self, count):
            self.done += count

        def close(self):
            pass

    monkeypatch.setattr(occlusion_module, "tqdm", Bar)
    images = torch.cat([squares(), squares(flipped=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Occlusion(mean_model(), window=4, stride=2, incremental=False, drill_down=0.25, coarse_factor=3)(images, 0)
    assert bars[-1].total == bars[-1].done == 2 * (len(COARSE) + len(DRILLED) + len(CHECKED))
    Occlusion(mean_model(), window=4, stride=2, incremental=False)(images, 0)
    assert bars[-1].total == bars[-1].done == 2 * 49


def test_the_coarse_grid_by_hand():
    grid = CoarseGrid.build((7, 5), 3)
    assert grid.lines == ((0, 3, 6), (0, 3, 4)) and grid.indices == [0, 3, 4, 15, 18, 19, 30, 33, 34]
    assert grid.middles() == [[1, 4], [1]]  # columns 3 and 4 leave no window out
    assert grid.drilled_count(0.5) == 13 and grid.drilled_count(0) == 0 and grid.drilled_count(1) == 26
    values = torch.arange(9.0)[None]
    interpolated = grid.interpolate(values).view(7, 5)
    torch.testing.assert_close(interpolated[:, 0], torch.tensor([0, 1, 2, 3, 4, 5, 6.0]))
    torch.testing.assert_close(interpolated[1], torch.tensor([1, 4 / 3, 5 / 3, 2, 3]))
    # a bump of 5 at node (3, 3) and 9 at node (6, 4): the cells' corners differ by 9 for the windows between rows
    # 3 and 6 on column 4 (24 and 29), by 5 for the 14 windows around node (3, 3), by 0 elsewhere
    bumps = torch.zeros(1, 9)
    bumps[0, 4], bumps[0, 8] = 5, 9
    assert grid.roughest(bumps, 2).tolist() == [[24, 29]]
    assert grid.roughest(-bumps, 2).tolist() == [[24, 29]]  # the sign does not matter
    around = [6, 7, 8, 11, 12, 13, 16, 17, 21, 22, 23, 26, 27, 28]
    assert grid.roughest(bumps, 16).tolist() == [sorted(around + [24, 29])]
    assert grid.roughest(bumps, 5).tolist() == [[6, 7, 8, 24, 29]]  # ties in row-major order


def test_drill_down_1_is_the_exact_map_and_none_the_default():
    model = tf_like_net()
    before = model_fingerprint(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    exact = Occlusion(model, window=8, stride=4, batch_size=50)
    maps = exact(x, target=[1, 4])
    assert exact.drill_down is None and exact.ssim_ is None
    method = Occlusion(model, window=8, stride=4, batch_size=50, drill_down=1)
    assert torch.equal(method(x, target=[1, 4]), maps)
    torch.testing.assert_close(method.ssim_, torch.ones(2))
    assert method.cut_layer_ == exact.cut_layer_ == "features.4"
    assert_unchanged(model, before)


def test_the_check_is_off_the_coarse_grid_and_sees_bad_interpolation():
    model = tf_like_net()
    before = model_fingerprint(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    exact = Occlusion(model, window=8, stride=4, batch_size=50)(x, target=[1, 4])
    # a random network on noise: the drops vary from window to window, interpolating them is wrong
    rough = Occlusion(model, window=8, stride=4, batch_size=50, drill_down=0.0, coarse_factor=2)
    with pytest.warns(UserWarning, match=r"approximate occlusion \(drill_down=0.0, coarse_factor=2\): SSIM .* "
                                         r"below 0.9 .* use a larger drill_down"):
        maps = rough(x, target=[1, 4])
    assert float(rough.ssim_.max()) < 0.9 and float(map_ssim(maps, exact).max()) < 0.9
    assert rough.cut_layer_ == "features.4"
    # more windows drilled: closer to the exact map, and the check says so
    finer = Occlusion(model, window=8, stride=4, batch_size=50, drill_down=0.6, coarse_factor=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finer_maps = finer(x, target=[1, 4])
    assert (map_ssim(finer_maps, exact) > map_ssim(maps, exact)).all() and (finer.ssim_ > rough.ssim_).all()
    assert (finer.ssim_ < 1).all()
    unchecked = Occlusion(model, window=8, stride=4, drill_down=0.0, coarse_factor=2, check=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(unchecked(x, target=[1, 4]), maps)
    assert unchecked.ssim_ is None
    assert_unchanged(model, before)


@pytest.mark.parametrize("factor, check, lines", [(4, 4, list(range(2, 53, 4))), (3, 4, list(range(1, 50, 6))),
                                                  (2, 4, list(range(1, 53, 4))), (2, 1, list(range(1, 53, 2)))])
def test_checked_windows_are_never_on_the_coarse_grid(factor, check, lines):
    method = Occlusion(tf_like_net(), window=16, stride=4, drill_down=0.1, coarse_factor=factor, check=check)
    coarse = CoarseGrid.build((53, 53), factor)
    (rows, cols), spacing = method._checked_lines((53, 53), coarse)
    assert rows == cols == lines and spacing == lines[1] - lines[0]
    assert not set(rows) & set(coarse.lines[0])


def test_a_grid_without_gaps_along_one_axis_is_checked_on_the_coarse_rows():
    # two rows of windows are both coarse rows: the interpolated windows lie between the coarse columns
    method = Occlusion(tf_like_net(), window=8, stride=4, drill_down=0.0, coarse_factor=2)
    (rows, cols), spacing = method._checked_lines((2, 9), CoarseGrid.build((2, 9), 2))
    assert rows == [0, 1] and cols == [1, 3, 5, 7] and spacing == 2


def test_drill_down_combines_with_thresholding():
    model = tf_like_net()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    options = dict(window=8, stride=4, batch_size=50, coarse_factor=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = Occlusion(model, approximate=0.6, drill_down=0.5, **options)
        maps = both(x, target=1)
        thresholded = Occlusion(model, approximate=0.6, **options)(x, target=1)
        drilled = Occlusion(model, drill_down=0.5, **options)(x, target=1)
    assert not torch.equal(maps, thresholded) and not torch.equal(maps, drilled)
    assert both.cut_layer_ == "features.4" and both.ssim_.shape == (1,)
    # on the coarse grid, both take the thresholded path's values
    full = Occlusion(model, approximate=0.6, drill_down=1, **options)
    torch.testing.assert_close(full(x, target=1), thresholded)


@pytest.mark.parametrize("options, match", [
    ({"drill_down": -0.1}, "drill_down .* must be in \\[0, 1\\]"), ({"drill_down": 1.5}, "drill_down"),
    ({"drill_down": "half"}, "drill_down"), ({"coarse_factor": 1}, "coarse_factor .* >= 2"),
    ({"coarse_factor": 2.0}, "coarse_factor"), ({"coarse_factor": True}, "coarse_factor")])
def test_drill_down_options_are_checked(options, match):
    with pytest.raises(DeepscopeError, match=match) as error:
        Occlusion(tf_like_net(), **options)
    assert "\n" not in str(error.value)


def test_drill_down_true_is_the_default_fraction():
    method = Occlusion(tf_like_net(), drill_down=True)
    assert method.drill_down == occlusion_module.DEFAULT_DRILL_DOWN
    assert method.coarse_factor == occlusion_module.DEFAULT_COARSE_FACTOR
    assert Occlusion(tf_like_net(), drill_down=False).drill_down is None


def test_the_catalogue_options_round_trip():
    parsed = parse_method_options(["occlusion.drill_down=0.25", "occlusion.coarse_factor=3",
                                   "occlusion.approximate=none", "occlusion.check=2"])
    assert parsed == {"occlusion": {"drill_down": 0.25, "coarse_factor": 3, "approximate": None, "check": 2}}
    method = build_method("occlusion", tf_like_net(), **parsed["occlusion"])
    assert (method.drill_down, method.coarse_factor, method.approximate, method.check) == (0.25, 3, None, 2)
    assert build_method("occlusion", tf_like_net(), approximate=0.5).approximate == 0.5
    exact = build_method("occlusion", tf_like_net())
    assert exact.drill_down is None and exact.approximate is None
    for bad, expected in [("occlusion.drill_down=1.5", "at most 1"), ("occlusion.approximate=0", "at least 0.01"),
                          ("occlusion.coarse_factor=1", "at least 2"), ("occlusion.drill_down=lots", "a number")]:
        with pytest.raises(DeepscopeError, match=expected):
            parse_method_options([bad])


def test_explain_takes_the_drill_down_option(tmp_path, capsys):
    from deepscope.cli import main

    argv = ["explain", "default", "--random-weights", "--method", "occlusion", "--limit", "1", "--quiet", "--option",
            "occlusion.window=64", "--option", "occlusion.stride=32", "--option", "occlusion.coarse_factor=2"]
    assert main([*argv, "--option", "occlusion.drill_down=0.25", "--out", str(tmp_path / "a")]) == 0, \
        capsys.readouterr().err
    assert main([*argv, "--option", "occlusion.drill_down=2", "--out", str(tmp_path / "b")]) == 2
    assert "option drill_down must be at most 1" in capsys.readouterr().err
