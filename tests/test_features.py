"""Feature banks (cache, row order), kNN in feature vs pixel space, and projections."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import assert_unchanged, model_fingerprint
from deepscope import features as features_module
from deepscope.cli import main
from deepscope.errors import DeepscopeError
from deepscope.features import (FeatureBank, default_feature_layer, extract_features, knn_accuracy, knn_predictions,
                                nearest_neighbours, pixel_bank, pool_features, project)
from deepscope.images import load_image, scan_images
from deepscope.models.classes import ClassList
from deepscope.models.preprocess import Preprocess
from deepscope.models.zoo import LoadedModel, load_model
from deepscope.probe import Probe


@pytest.fixture
def folder(tmp_path):
    """Two class folders of three small photos each, plus one broken file."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("apple", "zebra")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            pixels = (rng.random((40, 48, 3)) * 120 + 120 * c).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    (tmp_path / "images" / "apple" / "1b_broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path / "images"


@pytest.fixture
def tiny(tiny_cnn):
    return LoadedModel(tiny_cnn, Preprocess(32, 36), ClassList.generic(5), "tiny", "test")


def reference_rows(loaded, paths, layer_index):
    """The obviously-correct version: one image at a time, run the Sequential up to the layer by hand."""
    model = loaded.model.eval()
    rows = []
    with torch.no_grad():
        for path in paths:
            x = loaded.preprocess(load_image(path))[None]
            for module in list(model)[:layer_index]:
                x = module(x)
            rows.append(pool_features(x)[0])
    return torch.stack(rows)


def synthetic_bank(values, folders):
    points = torch.tensor(values, dtype=torch.float32).reshape(len(values), -1)
    return FeatureBank(points, [f"{i}.png" for i in range(len(values))], [None] * len(values), list(folders),
                       "x", "synthetic")


def test_rows_line_up_with_files_and_broken_files_are_skipped(folder, tiny, tmp_path):
    images = scan_images(folder)
    training = tiny.model.training
    before = model_fingerprint(tiny.model)
    bank = extract_features(tiny, images, cache=tmp_path / "cache")
    assert_unchanged(tiny.model, before)
    assert tiny.model.training == training
    assert bank.layer == "7:input"                                # the last Linear's input = Flatten's output
    readable = [p for p in images.paths if "broken" not in p.name]
    assert bank.paths == readable and bank.folders == ["apple"] * 3 + ["zebra"] * 3
    assert [p.name for p, _ in bank.skipped] == ["1b_broken.jpg"] and images.skipped == ()
    assert torch.allclose(bank.features, reference_rows(tiny, readable, 7), atol=1e-5)
    conv = extract_features(tiny, scan_images(folder), "2", cache=False)  # a conv map is average-pooled
    assert torch.allclose(conv.features, reference_rows(tiny, readable, 3), atol=1e-5)


def test_cache_hit_and_invalidation(folder, tiny, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = extract_features(tiny, scan_images(folder), cache=cache)
    real_iter = features_module.iter_batches
    calls = []
    monkeypatch.setattr(features_module, "iter_batches", lambda *a, **k: calls.append(1) or real_iter(*a, **k))

    images = scan_images(folder)
    again = extract_features(tiny, images, cache=cache)
    assert not calls and torch.equal(again.features, first.features) and again.paths == first.paths
    assert again.skipped == first.skipped and [p.name for p, _ in again.skipped] == ["1b_broken.jpg"]  # cached too

    extract_features(tiny, scan_images(folder), "2", cache=cache)     # another layer
    assert len(calls) == 1
    target = folder / "zebra" / "2.png"
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(target)      # same name, new content
    tampered = extract_features(tiny, scan_images(folder), cache=cache)
    assert len(calls) == 2
    row = tampered.paths.index(target)
    assert not torch.allclose(tampered.features[row], first.features[row])
    assert torch.equal(tampered.features[:row], first.features[:row])
    with torch.no_grad():
        tiny.model[0].bias.add_(1.0)                                   # new weights
    extract_features(tiny, scan_images(folder), cache=cache)
    assert len(calls) == 3
    assert len(list((cache / "features").glob("*.npz"))) == 4


def test_cache_location_from_environment_and_npz_format(folder, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSCOPE_CACHE", str(tmp_path / "env-cache"))
    bank = extract_features(tiny, scan_images(folder))
    files = list((tmp_path / "env-cache" / "features").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as data:                # readable without deepscope
        assert data["features"].shape == (6, 8) and data["features"].dtype == np.float32
        assert list(data["paths"]) == [str(p) for p in bank.paths]
        assert list(data["labels"]) == [-1] * 6 and list(data["folders"]) == bank.folders
        assert str(data["layer"]) == "7:input" and str(data["model"]) == "tiny"
    loaded = FeatureBank.load(files[0])
    assert torch.equal(loaded.features, bank.features) and loaded.skipped == bank.skipped


def test_pixel_bank_is_the_preprocessed_pixels(folder, tmp_path):
    preprocess = Preprocess(16, 20, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = scan_images(folder)
    bank = pixel_bank(images, preprocess, cache=tmp_path)
    expected = torch.stack([preprocess(load_image(p)).flatten() for p in bank.paths])
    assert bank.features.shape == (6, 3 * 16 * 16) and bank.space == "pixels"
    assert torch.allclose(bank.features, expected, atol=2e-3)          # float16 storage
    assert torch.equal(pixel_bank(scan_images(folder), preprocess, cache=tmp_path).features, bank.features)
    small = pixel_bank(images, preprocess, size=4, cache=False)
    assert small.features.shape == (6, 48) and small.layer == "pixels@4"
    assert [p.name for p, _ in small.skipped] == ["1b_broken.jpg"]     # each bank lists the broken file once
    assert bank.skipped == small.skipped and images.skipped == ()


def test_leave_one_out_knn_hand_checked():
    # 1-D points; with k=2 every vote is 1:1 and the nearest neighbour's class wins the tie
    bank = synthetic_bank([0, 1, 3, 10, 11, 11.5], "aabbba")
    assert knn_predictions(bank, k=2, metric="l2").tolist() == [0, 0, 0, 1, 0, 1]
    assert knn_accuracy(bank, k=2, metric="l2") == pytest.approx(3 / 6)
    assert knn_predictions(bank, k=3, metric="l2").tolist()[4] == 1   # 0.5 a, 1 b, 8 b -> b
    found = nearest_neighbours(bank, [0, 4], k=2, metric="l2")
    assert found.indices.tolist() == [[1, 2], [5, 3]]
    assert torch.allclose(found.distances, torch.tensor([[1.0, 3.0], [0.5, 1.0]]))


def test_cosine_neighbours_and_duplicates_never_return_the_query():
    bank = synthetic_bank([[1, 0], [2, 0.1], [0, 1], [1, 0]], "abcd")
    found = nearest_neighbours(bank, torch.tensor([0, 3]), k=2)         # rows 0 and 3 are identical
    assert found.indices.tolist() == [[3, 1], [0, 1]]
    assert found.distances[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert found.distances[0, 1].item() == pytest.approx(1 - 2 / np.hypot(2, 0.1), abs=1e-6)
    with pytest.raises(DeepscopeError, match="k=4"):
        nearest_neighbours(bank, [0], k=4)
    with pytest.raises(DeepscopeError, match="not an image"):
        nearest_neighbours(bank, ["elsewhere.png"], k=1)


def test_projections():
    rng = np.random.default_rng(0)
    line = np.outer(np.linspace(-1, 1, 40), [3.0, 4.0, 0, 0]) + rng.normal(0, 0.01, (40, 4))
    bank = synthetic_bank(line.tolist(), "ab" * 20)
    pca = project(bank, "pca")
    assert pca.points.shape == (40, 2) and pca.explained_variance[0] > 0.99
    assert abs(np.corrcoef(pca.points[:, 0].numpy(), np.linspace(-1, 1, 40))[0, 1]) > 0.999
    tsne = project(synthetic_bank(line[::2].tolist(), "ab" * 10), "tsne")   # t-SNE keeps the line's two ends apart
    ends = (tsne.points[0] - tsne.points[-1]).norm()
    assert tsne.points.shape == (20, 2) and ends > (tsne.points[0] - tsne.points[1]).norm()
    with pytest.raises(DeepscopeError, match="pca, tsne, umap"):
        project(bank, "mds")


def test_default_feature_layers_of_zoo_models():
    x = torch.rand(1, 3, 224, 224)
    for name, layer, size in [("mobilenet_v2", "classifier.1:input", 1280), ("alexnet", "classifier.6:input", 4096),
                              ("default", "classifier:input", 1280)]:
        model = load_model(name, pretrained=name == "default").model
        assert default_feature_layer(model) == layer
        with Probe(model, detach=True) as probe, torch.inference_mode():
            probe.capture_inputs([layer.removesuffix(":input")])
            probe(x)
            assert probe.activations[layer].shape == (1, size)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def real_data_check(loaded, in20, tmp_path):
    images = scan_images(in20, loaded.classes)
    bank = extract_features(loaded, images, cache=tmp_path, batch_size=50)
    pixels = pixel_bank(images, loaded.preprocess, cache=tmp_path)
    assert len(bank) == len(pixels) == 500 and bank.paths == pixels.paths
    feature_acc, pixel_acc = knn_accuracy(bank, 5), knn_accuracy(pixels, 5)
    assert feature_acc >= 0.85
    assert pixel_acc < 0.4 and pixel_acc < feature_acc - 0.4
    return feature_acc, pixel_acc


@pytest.mark.slow
def test_in20_knn_imported_mobilenet_v2(request, in20, tmp_path):
    pytest.importorskip("deepscope.models.tflite")
    loaded = request.getfixturevalue("mobilenet_v2_import")
    before = model_fingerprint(loaded.model)
    feature_acc, pixel_acc = real_data_check(loaded, in20, tmp_path)  # measured: 0.910 and 0.166
    assert_unchanged(loaded.model, before)


def test_cli_prints_both_accuracies_and_writes_figures(folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["features", "mobilenet_v2", str(folder), "--random-weights", "--knn", "2", "--queries", "2",
            "--cache", str(tmp_path / "cache"), "--quiet", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "classifier.1:input, 1280 features" in printed.out
    assert "2-NN accuracy (cosine): feature space" in printed.out and "pixel space" in printed.out
    assert "1b_broken.jpg" in printed.err
    assert sorted(p.name for p in out.iterdir()) == ["features.npz", "knn.png", "projection-pca.png"]
    assert FeatureBank.load(out / "features.npz").features.shape == (6, 1280)
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert main(args + ["--force", "--project", "pca,mds"]) == 2
    assert "--project: 'mds'" in capsys.readouterr().err
