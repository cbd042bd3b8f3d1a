"""Filter views: tiles equal the weights after the stated normalisation, for every kind of convolution."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope.cli import main
from deepscope.errors import LayerNotFoundError, UnsupportedModelError
from deepscope.filters import filter_view, first_conv, normalize_filters, resolve_conv
from deepscope.models.zoo import load_model
from deepscope.render.filters import filter_grid_figure, tile_mosaic


def conv_with(weight: torch.Tensor, groups: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], weight.shape[-1], groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


def test_rgb_tiles_hand_checked_per_filter_and_shared():
    weight = torch.stack([torch.arange(12.0).view(3, 2, 2),       # 0 .. 11
                          torch.full((3, 2, 2), 4.0),              # constant filter
                          -torch.arange(12.0).view(3, 2, 2) * 2])  # 0 .. -22
    model = nn.Sequential(conv_with(weight))
    before = model_fingerprint(model)
    per = filter_view(model, normalize="per-filter")
    assert per.kind == "rgb" and per.layer == "0"
    assert torch.allclose(per.tiles[0], torch.arange(12.0).view(3, 2, 2) / 11)
    assert torch.equal(per.tiles[1], torch.full((3, 2, 2), 0.5))
    assert torch.allclose(per.tiles[2], 1 - torch.arange(12.0).view(3, 2, 2) / 11)
    shared = filter_view(model, normalize="shared")            # one range for all: -22 .. 11
    assert torch.allclose(shared.tiles, (weight + 22) / 33)
    assert shared.tiles[1, 0, 0, 0].item() == pytest.approx(26 / 33)
    assert "per-filter" in per.description and "shared" in shared.description
    assert "1 constant (dead) filter shown flat" in per.description
    assert_unchanged(model, before)


def test_depthwise_gives_one_tile_per_channel():
    weight = torch.randn(6, 1, 3, 3)
    view = filter_view(nn.Sequential(conv_with(weight, groups=6)))
    assert view.kind == "depthwise" and view.tiles.shape == (6, 1, 3, 3)
    for c in range(6):
        w = weight[c]
        assert torch.allclose(view.tiles[c], (w - w.min()) / (w.max() - w.min()))


def test_pointwise_shows_raw_matrix_and_samples_large_layers():
    small = nn.Sequential(nn.Conv2d(5, 7, 1))
    view = filter_view(small)
    assert view.kind == "pointwise" and view.normalize == "none"
    assert torch.equal(view.tiles, small[0].weight.detach()[:, :, 0, 0])
    large = nn.Sequential(nn.Conv2d(300, 200, 1))
    view = filter_view(large, max_outputs=10, max_inputs=4)
    assert view.outputs.tolist() == [0, 22, 44, 66, 88, 111, 133, 155, 177, 199]
    assert view.inputs.tolist() == [0, 100, 199, 299]
    assert torch.equal(view.tiles, large[0].weight.detach()[view.outputs][:, view.inputs, 0, 0])
    assert "10 of 200 output channels" in view.description and "4 of 300 input channels" in view.description


def test_intermediate_layer_rows_are_output_channels_normalised_over_the_whole_filter():
    conv = nn.Conv2d(20, 32, 3)
    view = filter_view(nn.Sequential(nn.Conv2d(3, 20, 3), nn.ReLU(), conv), "2")
    assert view.kind == "channels" and view.tiles.shape == (16, 16, 3, 3)
    assert view.inputs.tolist() == torch.linspace(0, 19, 16).round().long().tolist()
    for row, out in enumerate(view.outputs.tolist()):
        w = conv.weight.detach()[out]                        # all 20 input channels set the range
        expected = ((w - w.min()) / (w.max() - w.min()))[view.inputs]
        assert torch.allclose(view.tiles[row], expected)
    assert "16 of 32 output channels" in view.description


def test_normalize_filters_rejects_unknown_mode():
    with pytest.raises(Exception, match="per-filter"):
        normalize_filters(torch.randn(2, 3, 3, 3), "global")


@pytest.mark.parametrize("name, layer, shape", [
    ("alexnet", "features.0", (64, 3, 11, 11)),
    ("resnet18", "conv1", (64, 3, 7, 7)),
    ("resnet101", "conv1", (64, 3, 7, 7)),
    ("densenet121", "features.conv0", (64, 3, 7, 7)),
    ("mobilenet_v2", "features.0.0", (32, 3, 3, 3)),
    ("default", "conv_stem", (32, 3, 3, 3)),
])
def test_first_conv_of_zoo_models(name, layer, shape):
    model = load_model(name, pretrained=name == "default").model
    assert first_conv(model) == layer
    view = filter_view(model)
    assert view.kind == "rgb" and view.weight_shape == shape and view.tiles.shape == shape
    assert float(view.tiles.amin()) == 0.0 and float(view.tiles.amax()) == 1.0


def test_conv_subclasses_and_blocks_are_found():
    class SameConv(nn.Conv2d):  # like the TFLite import's TF 'SAME' convolution
        pass

    model = nn.Sequential(nn.Identity(), nn.Sequential(SameConv(3, 4, 3), nn.ReLU6()), nn.Conv2d(4, 4, 1))
    assert first_conv(model) == "1.0"
    assert resolve_conv(model, "1")[0] == "1.0"  # a block stands for its first convolution
    with pytest.raises(UnsupportedModelError, match="not a convolution"):
        resolve_conv(model, "1.1")
    with pytest.raises(LayerNotFoundError, match="Did you mean"):
        resolve_conv(model, "1.O")
    with pytest.raises(UnsupportedModelError):
        first_conv(nn.Sequential(nn.Linear(2, 2)))


def test_imported_mobilenet_v2_first_conv(request):
    pytest.importorskip("deepscope.models.tflite")
    loaded = request.getfixturevalue("mobilenet_v2_import")
    view = filter_view(loaded.model)
    assert view.weight_shape == (32, 3, 3, 3) and view.kind == "rgb"
    depthwise = filter_view(loaded.model, "features.1")
    assert depthwise.kind == "depthwise"


def test_mosaic_upscales_with_nearest_neighbour():
    tiles = np.random.default_rng(0).random((5, 3, 3, 3)).astype(np.float32)
    mosaic = tile_mosaic(tiles, rows=2, cols=3, scale=4, gap=2)
    assert mosaic.shape == (2 * (12 + 2) + 2, 3 * (12 + 2) + 2, 3)
    tile4 = mosaic[2 + 14: 2 + 14 + 12, 2 + 14: 2 + 14 + 12]  # row 1, column 1 = tile 4
    assert np.array_equal(tile4[::4, ::4], tiles[4].transpose(1, 2, 0))
    assert np.array_equal(tile4[3, 3], tile4[0, 0])  # a 4x4 block per weight
    assert np.all(mosaic[:2] == 1.0) and np.all(mosaic[-2:, -16:] == 1.0)  # gaps and the empty cell are white


def test_figures_for_every_kind():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 4, 3))
    for layer in ("0", "1", "2", "3"):
        fig = filter_grid_figure(filter_view(model, layer))
        assert fig.axes and fig.axes[0].images
        fig.clf()


def test_cli_writes_grid_and_refuses_to_overwrite(tmp_path, capsys):
    args = ["filters", "resnet18", "--random-weights", "--out", str(tmp_path)]
    assert main(args) == 0
    assert (tmp_path / "filters-resnet18-conv1.png").stat().st_size > 1000
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--layer", "layer9"]) == 2
    assert "no layer 'layer9'" in capsys.readouterr().err
