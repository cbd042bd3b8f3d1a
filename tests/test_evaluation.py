"""Faithfulness metrics: known answers on hand-built models, invariants, and the user's model left as it was."""

import csv
import warnings

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.attribution import Gradient, GuidedBackprop
from deepscope.attribution.controls import CenterMap, RandomMap
from deepscope.catalogue import METHODS, build_method, get_method
from deepscope.errors import DeepscopeError, UnsupportedModelError
from deepscope.evaluation import (auc, cascading_randomization, deletion_curve,
                                  grid_pointing_game, insertion_curve, randomization_layers, spearman, ssim)
from deepscope.evaluation.pointing_game import tile_shares

SIZE = 32
REGION = (slice(None), slice(None), slice(8, 16), slice(8, 16))  # 8x8 pixels of the top-left quadrant: 1/16


class RegionModel(nn.Module):
    """Two classes; logit 0 = 40 * (mean of the region over channels - 0.75), logit 1 = 0."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(40.0))

    def forward(self, x):
        region = x[REGION].mean(dim=(1, 2, 3))
        return torch.stack([self.scale * (region - 0.75), torch.zeros_like(region)], dim=1)


def region_inputs(n=3):
    x = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x[REGION] = 1.0
    return x


def oracle_maps(n, anti=False):
    maps = torch.zeros(n, 1, SIZE, SIZE)
    maps[REGION] = 1.0
    return 1.0 - maps if anti else maps


def test_auc_of_hand_made_curves():
    assert auc(torch.tensor([1.0, 0.5, 0.0])).item() == pytest.approx(0.5)
    # steps of a quarter: 0.25 * (0 + 1) / 2 + 3 * 0.25 = 0.875
    assert auc(torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])).item() == pytest.approx(0.875)
    assert auc(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.2])).item() == pytest.approx(0.2)


def test_oracle_map_scores_deletion_near_0_and_insertion_near_1():
    model, x = RegionModel(), region_inputs()
    before = model_fingerprint(model)
    deletion = deletion_curve(model, x, oracle_maps(3), steps=64, batch_size=50)
    insertion = insertion_curve(model, x, oracle_maps(3), steps=64, batch_size=50)
    assert deletion.probabilities.shape == (3, 65) and deletion.fractions[-1] == 1
    assert deletion.targets.tolist() == [0, 0, 0]
    assert deletion.probabilities[:, 0].min() > 0.99 and deletion.probabilities[:, -1].max() < 0.01
    assert deletion.auc.max() < 0.05
    assert insertion.probabilities[:, 0].max() < 0.05  # the blurred region is not enough
    assert insertion.auc.min() > 0.95
    # the anti-oracle puts the region last: the opposite answer
    anti_deletion = deletion_curve(model, x, oracle_maps(3, anti=True), steps=64)
    anti_insertion = insertion_curve(model, x, oracle_maps(3, anti=True), steps=64, baseline="zero")
    assert anti_deletion.auc.min() > 0.95 and anti_insertion.auc.max() < 0.05
    assert_unchanged(model, before)


def test_per_channel_maps_are_ranked_by_their_largest_magnitude():
    model, x = RegionModel(), region_inputs(1)
    signed = torch.zeros(1, 3, SIZE, SIZE)
    signed[:, 1, 8:16, 8:16] = -5.0  # strongly negative in one channel: abs-max ranks it first
    assert deletion_curve(model, x, signed, steps=32).auc.item() < 0.05
    assert deletion_curve(model, x, signed, steps=32, reduction="sum").auc.item() > 0.9


def test_deletion_and_insertion_do_not_depend_on_the_batch_size(tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    maps = Gradient(tiny_cnn)(x)
    for curve in (deletion_curve, insertion_curve):
        big = curve(tiny_cnn, x, maps, steps=9, batch_size=64)
        small = curve(tiny_cnn, x, maps, steps=9, batch_size=7)
        one_by_one = torch.cat([curve(tiny_cnn, x[i:i + 1], maps[i:i + 1], steps=9, batch_size=4).probabilities
                                for i in range(3)])
        assert torch.allclose(big.probabilities, small.probabilities, atol=1e-6)
        assert torch.allclose(big.probabilities, one_by_one, atol=1e-6)
    assert_unchanged(tiny_cnn, before)


def test_deletion_rejects_bad_arguments(tiny_cnn):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(DeepscopeError, match="baseline"):
        deletion_curve(tiny_cnn, x, torch.rand(2, 1, 8, 8), baseline="noise")
    with pytest.raises(DeepscopeError, match="one map per input"):
        deletion_curve(tiny_cnn, x, torch.rand(3, 1, 8, 8))
    with pytest.raises(DeepscopeError, match="steps"):
        insertion_curve(tiny_cnn, x, torch.rand(2, 1, 8, 8), steps=0)


# -- grid pointing game ------------------------------------------------------------------------------
CLASSES, TILE = 6, 8


class BrightChannelModel(nn.Module):
    """logit k = mean over pixels of relu(x_k - 0.5): class k is seen where channel k is bright. Any size."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x - 0.5).mean(dim=(2, 3))


def toy_photos(per_class=4, mislabelled=2):
    """Tiles of class k: channel k near 1, the others below 0.5; the last ``mislabelled`` carry a wrong label."""
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    tiles = torch.rand(len(labels), CLASSES, TILE, TILE, generator=g) * 0.4
    tiles[torch.arange(len(labels)), labels] = 0.9 + 0.1 * torch.rand(len(labels), TILE, TILE, generator=g)
    labels[-mislabelled:] = (labels[-mislabelled:] + 1) % CLASSES
    return tiles, labels


def test_random_map_scores_the_chance_level_and_the_gradient_scores_full_marks():
    model = BrightChannelModel()
    before = model_fingerprint(model)
    tiles, labels = toy_photos()
    random = grid_pointing_game(RandomMap(model, seed=5), model, tiles, labels, mosaics=60, seed=1, batch_size=24)
    assert random.scores.shape == (60, 4) and random.pool_size == 24 and random.pool_correct == 22
    assert abs(random.mean - 0.25) < 3 * random.sem and random.sem < 0.01
    # every tile of every mosaic has four different, correctly classified photos
    assert all(len(set(row)) == 4 for row in random.classes.tolist())
    assert (labels[random.tiles] == random.classes).all() and not (random.tiles >= 22).any()
    center = grid_pointing_game(CenterMap(model), model, tiles, labels, mosaics=10)
    assert torch.allclose(center.scores, torch.full_like(center.scores, 0.25), atol=1e-5)
    # the gradient of this model is nonzero only where the explained class's channel is bright: its own tile
    gradient = grid_pointing_game(Gradient(model), model, tiles, labels, mosaics=10, batch_size=7)
    assert gradient.mean == pytest.approx(1.0)
    assert_unchanged(model, before)


def test_pointing_game_is_seeded_and_batch_size_invariant():
    model, (tiles, labels) = BrightChannelModel(), toy_photos()
    method = lambda inputs, target: Gradient(model)(inputs, target) + torch.rand(inputs.shape[0], 1, 16, 16,
                                                                                 generator=torch.Generator().manual_seed(0))
    a = grid_pointing_game(Gradient(model, absolute=False), model, tiles, labels, mosaics=8, seed=4, batch_size=32)
    b = grid_pointing_game(Gradient(model, absolute=False), model, tiles, labels, mosaics=8, seed=4, batch_size=3)
    assert torch.equal(a.tiles, b.tiles) and torch.allclose(a.scores, b.scores)
    c = grid_pointing_game(method, model, tiles, labels, mosaics=8, seed=5)
    assert not torch.equal(a.tiles, c.tiles)


def test_tile_shares_count_only_positive_attribution():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, 0], maps[0, 0, 0, 3], maps[0, 0, 3, 3] = 3.0, 1.0, -10.0
    assert tile_shares(maps).tolist() == [[0.75, 0.25, 0.0, 0.0]]


def test_pointing_game_explains_what_the_model_cannot_take():
    tiles, labels = toy_photos(mislabelled=1)
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(CLASSES * TILE * TILE, CLASSES))
    with torch.no_grad():
        fixed[1].weight.zero_()
        fixed[1].bias.zero_()
        for k in range(CLASSES):  # sums channel k: classifies the toy photos like BrightChannelModel
            fixed[1].weight[k, k * TILE * TILE:(k + 1) * TILE * TILE] = 1.0
    with pytest.raises(UnsupportedModelError, match="16x16 mosaic"):
        grid_pointing_game(RandomMap(fixed), fixed, tiles, labels, mosaics=2)
    with pytest.raises(DeepscopeError, match="at least 4 classes"):
        grid_pointing_game(RandomMap(fixed), fixed, tiles[:12], labels[:12], mosaics=2)


# -- cascading randomisation -------------------------------------------------------------------------
def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 1, 6, 6), generator=g).float()  # many ties
    b = a + torch.rand(3, 1, 6, 6, generator=g) * 3
    ours = spearman(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-6)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 3)


def test_cascading_randomization_leaves_the_model_unchanged(tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    result = cascading_randomization(Gradient, tiny_cnn, x)
    assert_unchanged(tiny_cnn, before)
    assert result.layers == ["7", "3", "2", "0"] == randomization_layers(tiny_cnn)
    assert result.maps.shape == (5, 2, 1, 16, 16)
    assert result.spearman[0].tolist() == pytest.approx([1.0, 1.0])  # the untouched copy: the same maps
    assert result.ssim[0].tolist() == pytest.approx([1.0, 1.0])
    assert (result.spearman[-1] < 0.9).all()  # every weight random: the gradient has changed
    # a map that ignores the model is the same at every step: it fails the sanity check
    control = cascading_randomization(RandomMap, tiny_cnn, x, max_steps=2)
    assert control.layers == ["7", "3"] and torch.allclose(control.spearman, torch.ones(3, 2))
    assert_unchanged(tiny_cnn, before)


def test_cascade_blocks_and_names():
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
                                               nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())))
    model.add_module("classifier", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)))
    assert randomization_layers(model) == ["classifier.2", "features.1.0", "features.0.1", "features.0.0"]
    assert randomization_layers(model, depth=2) == ["classifier.2", "features.1", "features.0"]
    x = torch.rand(2, 3, 12, 12)
    result = cascading_randomization(lambda m: build_method("guided", m), model, x, depth=2, target=[0, 1])
    assert result.layers == ["classifier.2", "features.1", "features.0"]
    with pytest.raises(DeepscopeError, match="build an explanation"):
        cascading_randomization("guided", model, x)  # metrics take builders, never method names


def test_controls_follow_the_protocol(tiny_cnn):
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    a, b = build_method("random", tiny_cnn, seed=1)(x), RandomMap(tiny_cnn, seed=1)(x)
    assert torch.equal(a, b) and a.shape == (2, 1, 10, 12) and a.dtype == torch.float32  # cast to the model's dtype
    assert not torch.equal(a, RandomMap(tiny_cnn, seed=2)(x))
    center = build_method("center", tiny_cnn)(x)
    assert center.shape == (2, 1, 10, 12)
    assert torch.allclose(center, center.flip(-1)) and torch.allclose(center, center.flip(-2))
    assert center[0, 0, 4:6, 5:7].min() == center.max()


# -- the table and the CLI ---------------------------------------------------------------------------
COLOUR_FOLDERS = {"n01440764": (1, 0, 0), "n01443537": (0, 1, 0), "n01484850": (0, 0, 1), "n01491361": (1, 1, 1)}


def colour_classifier() -> nn.Module:
    """ImageNet-shaped (1000 logits) model that tells red, green, blue and white photos apart (classes 0-3)."""
    linear = nn.Linear(3, 1000)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(-10.0)
        linear.weight[:3] = torch.eye(3) * 1.5 - 0.5  # own channel minus half of the two others
        linear.weight[3], linear.bias[:4] = 1 / 3, torch.tensor([0.0, 0.0, 0.0, -0.6])
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear).eval()


@pytest.fixture
def colour_photos(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for wnid, colour in COLOUR_FOLDERS.items():
        (tmp_path / "photos" / wnid).mkdir(parents=True)
        for k in range(2):
            pixels = (torch.tensor(colour).view(1, 1, 3) * 0.8 + 0.2 * torch.rand(40, 48, 3, generator=g)) * 255
            Image.fromarray(pixels.byte().numpy()).save(tmp_path / "photos" / wnid / f"{k}.png")
    model_path = tmp_path / "colours.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; TorchScript files still exist
        torch.jit.script(colour_classifier()).save(str(model_path))
    return tmp_path / "photos", model_path


def test_evaluate_command_writes_the_table_and_figures(colour_photos, tmp_path, capsys):
    from deepscope.cli import main

    photos, model_path = colour_photos
    out = tmp_path / "out"
    argv = ["evaluate", str(model_path), str(photos), "--methods", "gradient,random,center", "--steps", "4",
            "--mosaics", "5", "--cascade-steps", "2", "--images-per-class", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gradient" in printed and "center" in printed
    rows = (out / "evaluation.csv").read_text().splitlines()
    assert rows[0].startswith("method,deletion_auc") and [r.split(",")[0] for r in rows[1:]] == ["gradient", "random", "center"]
    # the gradient of a model of channel means is the same everywhere: the pointing game's chance level
    pointing = [float(row["pointing"]) for row in csv.DictReader(rows)]
    assert pointing == pytest.approx([0.25, 0.25, 0.25], abs=0.02)
    assert "| gradient |" in (out / "evaluation.md").read_text()
    for name in ("deletion_insertion.png", "randomization.png", "randomization_similarity.png"):
        assert (out / name).stat().st_size > 1000
    assert main(argv) == 2 and "--force" in capsys.readouterr().err
    assert main(argv[:4] + ["gradient,gradeint"] + argv[5:] + ["--force"]) == 2
    assert "unknown method 'gradeint'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_metrics_stay_on_the_input_device_and_agree_with_the_cpu(tiny_cnn):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = Gradient(tiny_cnn)(x)
    cpu = [deletion_curve(tiny_cnn, x, maps, steps=8), insertion_curve(tiny_cnn, x, maps, steps=8)]
    cpu_cascade = cascading_randomization(Gradient, tiny_cnn, x, max_steps=2)
    model, xg, maps_g = tiny_cnn.cuda(), x.cuda(), maps.cuda()
    gpu = [deletion_curve(model, xg, maps_g, steps=8), insertion_curve(model, xg, maps_g, steps=8)]
    for a, b in zip(cpu, gpu):
        assert b.probabilities.is_cuda and torch.allclose(a.probabilities, b.probabilities.cpu(), atol=1e-4)
    cascade = cascading_randomization(Gradient, model, xg, max_steps=2)
    assert cascade.maps.is_cuda and cascade.spearman.is_cuda
    assert torch.allclose(cascade.spearman.cpu(), cpu_cascade.spearman, atol=1e-3)
    bright, (tiles, labels) = BrightChannelModel(), toy_photos()
    pointing = grid_pointing_game(Gradient(bright), bright, tiles.cuda(), labels, mosaics=6)
    assert pointing.scores.is_cuda and pointing.mean == pytest.approx(1.0)
    assert RandomMap(model)(xg).is_cuda and CenterMap(model)(xg).is_cuda


# -- real data ---------------------------------------------------------------------------------------
def test_guided_backprop_ignores_a_random_top_layer_while_the_gradient_changes(mobilenet_v2_import, in20):
    """Adebayo et al.'s finding, on a real photo and the imported MobileNet-V2: randomising the output
    layer leaves guided backprop almost unchanged, while the gradient's map changes."""
    from deepscope.images import load_inputs
    from deepscope.probe import get_layer

    paths = sorted((in20 / "n01440764").glob("*.JPEG"))[:1]  # a tench
    real_model = mobilenet_v2_import
    x = load_inputs(paths, real_model.preprocess)
    before = model_fingerprint(real_model.model)
    gradient = cascading_randomization(Gradient, real_model.model, x, max_steps=1)
    guided = cascading_randomization(GuidedBackprop, real_model.model, x, max_steps=1)
    assert_unchanged(real_model.model, before)
    assert gradient.layers == guided.layers and isinstance(get_layer(real_model.model, gradient.layers[0]), nn.Linear)
    assert gradient.spearman[0].tolist() == pytest.approx([1.0], abs=1e-4)
    assert guided.spearman[1].min() > 0.9
    assert gradient.spearman[1].max() < guided.spearman[1].min() - 0.2


def test_every_catalogue_method_plugs_into_the_metrics(tiny_cnn):
    before = model_fingerprint(tiny_cnn)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for name in METHODS:
        options = get_method(name).offered(batch_size=16)
        method = build_method(name, tiny_cnn, **options)
        curve = deletion_curve(tiny_cnn, x, method(x), steps=4, reduction=method.display.reduction)
        assert curve.probabilities.shape == (2, 5) and torch.isfinite(curve.auc).all(), name
        cascade = cascading_randomization(lambda m: build_method(name, m, **options), tiny_cnn, x, max_steps=1)
        assert cascade.layers == ["7"] and cascade.maps.shape[:2] == (2, 2), name
    assert_unchanged(tiny_cnn, before)


def test_trust_table_cells_line_up_with_their_headers():
    from deepscope.evaluation.metrics import METRICS
    from deepscope.trust_table import MethodEvaluation, format_row, table_columns, table_text

    evaluation = MethodEvaluation("gradient", seconds=7.0)
    evaluation.metrics = {"road-gap": torch.tensor([0.25, 0.75]), "emprt": torch.tensor([0.5])}
    evaluation.deletion = type("Curve", (), {"auc": torch.tensor([0.1, 0.2, 0.3])})()
    rows = [evaluation.row()]
    headers = [header for _, header, _ in table_columns(rows)]
    cells = dict(zip(headers, format_row(rows[0], rows), strict=True))
    assert cells["photos"] == "3" and cells["seconds"] == "7"
    assert cells[METRICS["road-gap"].header].startswith("0.500") and cells[METRICS["emprt"].header] == "0.500"
    text_headers = table_text(rows).splitlines()[0].split()
    assert text_headers[-2:] == ["photos", "s"]
