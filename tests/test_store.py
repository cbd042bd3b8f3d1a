"""The results store: layout that pyarrow and numpy read alone, reuse of finished shards, damage detected,
nothing half-written read, one writer at a time, and bad settings refused before any work."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import assert_unchanged, model_fingerprint
from deepscope.classify import classify
from deepscope.errors import DeepscopeError, LayerNotFoundError, TargetError
from deepscope.features import extract_features
from deepscope.images import scan_images
from deepscope.jobs import (ClassifyJob, EvaluateJob, ExplainJob, FeaturesJob, NeuronsJob, open_store, run_job,
                            stored_classification, stored_feature_bank, stored_top_activations)
from deepscope.jobs.store import JobFolder, check_shard
from deepscope.neurons import neuron_view, top_activations


@pytest.fixture
def photos(tmp_path):
    """Three class folders of four small photos each, and one broken file (13 files)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("class 0", "class 1", "class 2")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((40, 44, 3)) * 100 + 70 * c).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.jpg", quality=90)
    (tmp_path / "photos" / "class 1" / "2b_broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return tmp_path / "photos"


@pytest.fixture
def tiny(tiny_loaded):
    return tiny_loaded


def test_features_job_equals_extract_features_and_reads_without_deepscope(photos, tiny, tmp_path):
    images = scan_images(photos, tiny.classes)
    before = model_fingerprint(tiny.model)
    run = run_job(FeaturesJob(), tiny, images, tmp_path / "store", shard_size=5, batch_size=3)
    assert_unchanged(tiny.model, before)
    assert (run.shards, run.computed, run.reused, run.files, run.skipped) == (3, 3, 0, 13, 1)
    bank = extract_features(tiny, scan_images(photos, tiny.classes), cache=False)
    stored = stored_feature_bank(open_store(tmp_path / "store").find("features")[0])
    assert stored.paths == bank.paths and stored.labels == bank.labels and stored.layer == bank.layer == "7:input"
    assert torch.allclose(stored.features, bank.features, atol=1e-6)
    assert [p.name for p, _ in stored.skipped] == ["2b_broken.jpg"]

    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"] == {"layer": "7:input"}
    assert manifest["model"]["preprocess"]["input_size"] == 32 and len(manifest["model"]["digest"]) == 64
    assert {"deepscope", "torch", "pyarrow", "numpy"} <= set(manifest["versions"])
    # read back by pyarrow and numpy alone, deepscope made unimportable
    script = f"""
import sys; sys.modules["deepscope"] = None
import glob, json, numpy as np, pyarrow.parquet as pq
files = pq.read_table({str(run.path / "files.parquet")!r}).to_pydict()
rows = [np.load(f) for f in sorted(glob.glob({str(run.path / "shards" / "*" / "features.npy")!r}))]
ok = [p for p, s in zip(files["path"], files["status"]) if s == "ok"]
print(json.dumps({{"ok": ok, "features": np.concatenate(rows).tolist(), "reasons": [r for r in files["reason"] if r]}}))
"""
    read = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert read["ok"] == [str(p) for p in bank.paths]
    assert np.allclose(read["features"], bank.features.numpy(), atol=1e-6)
    assert read["reasons"] == ["not an image file Pillow can read."]


def test_classify_and_neurons_jobs_equal_the_library(photos, tiny, tmp_path):
    images = scan_images(photos, tiny.classes)
    classes = stored_classification(run_job(ClassifyJob(3), tiny, images, tmp_path, shard_size=4).open())
    reference = classify(tiny, scan_images(photos, tiny.classes), topk=3)
    assert classes.paths == reference.paths and classes.labels == reference.labels
    assert torch.equal(classes.topk_indices, reference.topk_indices)
    assert torch.allclose(classes.topk_probs, reference.topk_probs, atol=1e-6)

    top = stored_top_activations(run_job(NeuronsJob("2", k=4), tiny, images, tmp_path, shard_size=4).open())
    expected = top_activations(tiny.model, scan_images(photos, tiny.classes), tiny.preprocess, "2", k=4, progress=False)
    assert top.channels == expected.channels and top.map_size == expected.map_size
    assert torch.allclose(top.values, expected.values, atol=1e-6)
    assert torch.equal(top.image_indices, expected.image_indices) and torch.equal(top.positions, expected.positions)
    # a figure of a few channels from the stored top-k, without scanning the photos again
    scanned = neuron_view(tiny.model, tiny.preprocess, scan_images(photos, tiny.classes), "2", [5, 1], 3,
                          progress=False)
    stored = neuron_view(tiny.model, tiny.preprocess, scan_images(photos, tiny.classes), "2", [5, 1], 3,
                         progress=False, top=top)
    assert stored.paths == scanned.paths and stored.boxes == scanned.boxes
    assert all(torch.equal(a, b) for row_a, row_b in zip(stored.guided, scanned.guided) for a, b in zip(row_a, row_b))
    with pytest.raises(DeepscopeError, match="do not hold"):
        top.select([1], 5)


def test_rerun_reuses_shards_and_recomputes_only_changed_or_damaged_ones(photos, tiny, tmp_path):
    images = scan_images(photos, tiny.classes)
    first = run_job(FeaturesJob(), tiny, images, tmp_path / "store", shard_size=5)
    reference = open_store(tmp_path / "store").jobs[0].array("features").copy()
    again = run_job(FeaturesJob(), tiny, images, tmp_path / "store", shard_size=5)
    assert (again.computed, again.reused, again.path) == (0, 3, first.path)

    # a truncated array: reading refuses it, a re-run recomputes that shard alone
    target = first.path / "shards" / "000001" / "features.npy"
    target.write_bytes(target.read_bytes()[:-7])
    assert "features.npy has" in check_shard(target.parent)
    with pytest.raises(DeepscopeError, match="damaged shard"):
        open_store(tmp_path / "store").jobs[0].array("features")
    repaired = run_job(FeaturesJob(), tiny, images, tmp_path / "store", shard_size=5)
    assert (repaired.computed, repaired.reused) == (1, 2)
    assert np.array_equal(open_store(tmp_path / "store").jobs[0].array("features"), reference)

    # a photo whose content changed: only its shard is computed again (the key holds each file's digest)
    photo = images.paths[-1]
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo, quality=90)
    changed = run_job(FeaturesJob(), tiny, scan_images(photos, tiny.classes), tmp_path / "store", shard_size=5)
    assert (changed.computed, changed.reused, changed.path) == (1, 2, first.path)
    # other settings are another job, in another folder
    other = run_job(FeaturesJob("2"), tiny, images, tmp_path / "store", shard_size=5)
    assert other.path != first.path and other.computed == 3
    assert len(open_store(tmp_path / "store").find("features")) == 2


def test_half_written_shards_are_never_read_and_one_run_writes_at_a_time(photos, tiny, tmp_path):
    images = scan_images(photos, tiny.classes)
    run = run_job(ClassifyJob(), tiny, images, tmp_path, shard_size=5)
    staging = run.path / "shards" / ".000003.abc"
    staging.mkdir()
    pq.write_table(pq.read_table(run.path / "shards" / "000000" / "predictions.parquet"), staging / "predictions.parquet")
    assert len(open_store(tmp_path).jobs[0].table("predictions")) == 12   # the staging folder is not a shard
    with JobFolder(run.path).lock():
        with pytest.raises(DeepscopeError, match="another deepscope run is writing this job"):
            run_job(ClassifyJob(), tiny, images, tmp_path, shard_size=5)
    again = run_job(ClassifyJob(), tiny, images, tmp_path, shard_size=5)
    assert again.computed == 0 and not staging.exists()  # leftovers of an interrupted run are tidied away

    # a shard folder without its index (never produced by a run: shards are renamed in whole) is computed again
    os.remove(run.path / "shards" / "000002" / "index.json")
    assert run_job(ClassifyJob(), tiny, images, tmp_path, shard_size=5).computed == 1


def test_a_shard_of_unreadable_files_and_explain_maps(photos, tiny, tmp_path):
    for name in ("zz1.jpg", "zz2.jpg"):
        (photos / "class 2" / name).write_bytes(b"broken")
    images = scan_images(photos, tiny.classes)  # 15 files, the last two broken: the last shard of 2 has none readable
    features = run_job(FeaturesJob(), tiny, images, tmp_path, shard_size=13).open()
    assert features.array("features").shape == (12, 8) and len(features.skipped_files()) == 3
    maps = run_job(ExplainJob("gradcam", size=16, dtype="float32"), tiny, images, tmp_path, shard_size=13).open()
    assert maps.array("maps").shape == (12, 1, 16, 16) and maps.array("maps").dtype == np.float32
    assert maps.summary == {"signed": False, "reduction": "abs-max"}


@pytest.mark.parametrize("job", [ClassifyJob(2), FeaturesJob("4"), NeuronsJob("2", k=2), ExplainJob("guided"),
                                 EvaluateJob("gradcam", steps=2)], ids=lambda job: job.kind)
def test_every_job_leaves_the_model_as_it_was(photos, tiny, tmp_path, job):
    before = model_fingerprint(tiny.model)
    run = run_job(job, tiny, scan_images(photos, tiny.classes), tmp_path, shard_size=7, batch_size=4)
    assert_unchanged(tiny.model, before)
    assert run.computed == 2 and run.skipped == 1 and run.open().complete


@pytest.mark.parametrize("job, options, message", [
    (FeaturesJob("nowhere"), {}, LayerNotFoundError),
    (NeuronsJob("2", channels=(99,)), {}, TargetError),
    (ExplainJob("gradient", dtype="int8"), {}, "map dtype"),
    (ExplainJob("occlusion", options=(("window", 0),)), {}, "window must be at least"),
    (FeaturesJob(), {"engine": "spark"}, "use local or ray"),
    (FeaturesJob(), {"workers": 2}, "need --engine ray"),
    (FeaturesJob(), {"shard_size": 0}, "shard_size must be a positive integer"),
])
def test_bad_settings_are_refused_before_any_work(photos, tiny, tmp_path, job, options, message):
    with pytest.raises(message if isinstance(message, type) else DeepscopeError,
                       match=None if isinstance(message, type) else message):
        run_job(job, tiny, scan_images(photos, tiny.classes), tmp_path / "store", **options)
    assert not (tmp_path / "store").exists()


def test_command_line_mistakes_about_jobs_are_one_line_errors(capsys, photos):
    from deepscope.cli import main

    for argv, message in ((["features", "default", str(photos), "--engine", "ray"], "need --store DIR"),
                          (["classify", "default", str(photos), "--workers", "2"], "need --store DIR"),
                          (["neurons", "default", str(photos), "--layer", "x", "--channels", "all"], "needs --store"),
                          (["explain", "default", str(photos), "--map-size", "64"], "need --store DIR")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
