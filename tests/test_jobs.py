"""Dataset jobs on real photos: both engines give the library's own results, a Ray node lost mid-job loses no
shard, a killed job resumes with only its missing shards, and memory does not grow with the dataset.

Subsets of in20 keep the suite's time down: classify, features and neurons on 100 photos (every fifth), maps
on 16 photos, the node-loss and resume tests on 40 and 60 photos; the memory test compares 500 and 20,000
generated photos.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepscope.catalogue import build_method, get_method
from deepscope.classify import classify
from deepscope.cli import main
from deepscope.features import extract_features
from deepscope.images import load_inputs, scan_images
from deepscope.jobs import (ClassifyJob, EvaluateJob, ExplainJob, FeaturesJob, NeuronsJob, RayEngine, open_store,
                            run_job, stored_classification, stored_feature_bank, stored_top_activations)
from deepscope.maps import saliency
from deepscope.neurons import top_activations
from deepscope.probe import batched_forward

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"),
                                                     os.environ.get("PYTHONPATH", "")])}


def linked_subset(in20: Path, folder: Path, every: int, count: int | None = None) -> Path:
    """Every ``every``-th photo of in20 (at most ``count``), linked into ``folder`` under its class folder."""
    photos = sorted(in20.glob("*/*.JPEG"))[::every][:count]
    for photo in photos:
        (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / photo.parent.name / photo.name).symlink_to(photo)
    return folder


@pytest.fixture(scope="module")
def in20_100(in20, tmp_path_factory):
    return linked_subset(in20, tmp_path_factory.mktemp("in20_100"), 5)


@pytest.fixture(scope="module")
def ray_engine():
    """One local Ray instance (2 CPUs) and actor pool for the module's tests."""
    with RayEngine(init_options={"num_cpus": 2}) as engine:
        yield engine


def test_engines_give_the_library_results_for_classify_features_and_neurons(in20_100, mobilenet_v2_import,
                                                                            ray_engine, tmp_path):
    loaded = mobilenet_v2_import
    photos = lambda: scan_images(in20_100, loaded.classes)  # noqa: E731
    predictions = classify(loaded, photos(), topk=5)
    bank = extract_features(loaded, photos(), cache=False)
    top = top_activations(loaded.model, photos(), loaded.preprocess, "features.14", k=6, progress=False)
    stores = {}
    for name, engine in (("local", "local"), ("ray", ray_engine)):
        store = stores[name] = tmp_path / name
        result = stored_classification(run_job(ClassifyJob(5), loaded, photos(), store, engine=engine,
                                               shard_size=32).open())
        assert result.paths == predictions.paths and len(result.paths) == 100
        assert torch.equal(result.topk_indices, predictions.topk_indices)
        assert torch.allclose(result.topk_probs, predictions.topk_probs, atol=1e-5)
        features = stored_feature_bank(run_job(FeaturesJob(), loaded, photos(), store, engine=engine,
                                               shard_size=32).open())
        assert features.paths == bank.paths and features.layer == bank.layer == "classifier.fc:input"
        assert (features.features - bank.features).abs().max() <= 1e-5
        neurons = stored_top_activations(run_job(NeuronsJob("features.14", k=6), loaded, photos(), store,
                                                 engine=engine, shard_size=24).open())
        assert neurons.channels == top.channels == list(range(160))
        assert torch.allclose(neurons.values, top.values, atol=1e-5)
        same = [set(a) == set(b) for a, b in zip(neurons.image_indices.tolist(), top.image_indices.tolist())]
        assert all(same), f"top-k sets differ for channels {[c for c, s in enumerate(same) if not s]}"
    local, ray = open_store(stores["local"]), open_store(stores["ray"])
    assert [job.path.name for job in local.jobs] == [job.path.name for job in ray.jobs]
    for a, b in zip(local.jobs, ray.jobs):
        assert a.table("files").equals(b.table("files"))
        assert all(info["run"]["engine"] == "ray" for info in map(_index, b.shard_paths()))


def _index(path: Path) -> dict:
    return json.loads((path / "index.json").read_text())


def test_engines_give_a_catalogue_methods_maps(in20, reference_tflite, mobilenet_v2_import, ray_engine, tmp_path):
    loaded = mobilenet_v2_import
    folder = linked_subset(in20, tmp_path / "photos", 31, 16)
    paths = scan_images(folder, loaded.classes).paths
    inputs = load_inputs(paths, loaded.preprocess)
    targets = batched_forward(loaded.model, inputs).argmax(1)
    for name in ("gradient", "gradcam"):
        method = build_method(name, loaded.model, preprocess=loaded.preprocess)
        expected = torch.cat([saliency(method.attribute(x, target=t), 224, method.display.reduction)
                              for x, t in zip(inputs.split(8), targets.split(8))])
        job = ExplainJob(name, dtype="float32")
        local = run_job(job, loaded, scan_images(folder, loaded.classes), tmp_path / "local", batch_size=8,
                        shard_size=8).open()
        # the command line with --engine ray joins the Ray instance this process runs
        argv = ["explain", str(reference_tflite), str(folder), "--method", name, "--store", str(tmp_path / "ray"),
                "--engine", "ray", "--map-dtype", "float32", "--batch-size", "8", "--shard-size", "8", "--quiet"]
        assert main(argv) == 0
        ray = open_store(tmp_path / "ray").find("explain", method=name)[0]
        assert ray.path.name == local.path.name  # the same job: model, settings and files
        for stored in (local, ray):
            assert stored.table("targets").column("target").to_pylist() == targets.tolist()
            maps = torch.from_numpy(stored.array("maps"))
            assert maps.shape == (16, 1, 224, 224) and get_method(name).display.reduction == stored.summary["reduction"]
            assert torch.allclose(maps, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


NODE_LOSS = r"""
import json, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from deepscope.images import scan_images
from deepscope.jobs import FeaturesJob, RayEngine, run_job
from deepscope.models.zoo import load_model

model, folder, store = sys.argv[1:4]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
loaded = load_model(model)
images = scan_images(folder, loaded.classes)
with RayEngine(address=cluster.address) as engine:  # joins the cluster, as --address does
    engine.warm_up(loaded)
    _, actors, _, _ = engine.pool(loaded)
    nodes = sorted(ray.get([actor.ready.remote() for actor in actors]), key=lambda info: info["node"])
    result = {}
    thread = threading.Thread(target=lambda: result.update(run=run_job(FeaturesJob(), loaded, images, store,
                                                                       engine=engine, shard_size=2)))
    thread.start()
    shards = Path(store)
    while thread.is_alive() and sum(1 for p in shards.glob("*/shards/[0-9]*")) < 1:
        time.sleep(0.05)
    removed_at = sum(1 for p in shards.glob("*/shards/[0-9]*"))
    cluster.remove_node(worker, allow_graceful=False)
    thread.join()
    run = result["run"]
    print(json.dumps({"computed": run.computed, "shards": run.shards, "log": engine.log, "removed_at": removed_at,
                      "actor_nodes": [info["node"] for info in nodes], "worker_node": worker.node_id}))
ray.shutdown()
cluster.shutdown()
"""


def test_a_ray_node_lost_mid_job_loses_and_duplicates_no_shard(in20, reference_tflite, mobilenet_v2_import, tmp_path):
    folder = linked_subset(in20, tmp_path / "photos", 12, 40)
    for attempt in range(3):  # the node is removed at a moment of the job's; it must go while holding a shard
        store = tmp_path / f"ray{attempt}"
        done = subprocess.run([sys.executable, "-c", NODE_LOSS, str(reference_tflite), str(folder), str(store)],
                              capture_output=True, text=True, env=ENV, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"computed"')))
        if any("worker lost" in line for line in report["log"]):
            break
    assert report["worker_node"] in report["actor_nodes"] and len(set(report["actor_nodes"])) == 2  # one actor a node
    assert report["removed_at"] < report["shards"] == 20
    assert any("worker lost" in line for line in report["log"]), report["log"]  # the node held a shard when it went
    assert report["computed"] == report["shards"]       # every shard written exactly once
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor on the two one-CPU nodes: the same sums in the same order
    try:
        local = run_job(FeaturesJob(), mobilenet_v2_import, scan_images(folder, mobilenet_v2_import.classes),
                        tmp_path / "local", shard_size=2).open()
    finally:
        torch.set_num_threads(threads)
    ray = open_store(store).jobs[0]
    assert ray.table("files").column("index").to_pylist() == list(range(40))
    assert ray.table("files").equals(local.table("files"))
    assert np.array_equal(ray.array("features"), local.array("features"))
    ran_on = {_index(path)["run"]["node"] for path in ray.shard_paths()}
    assert len(ran_on) == 2  # shards were computed on both nodes


def test_a_killed_job_resumes_with_only_the_missing_shards(in20, reference_tflite, mobilenet_v2_import, tmp_path):
    folder = linked_subset(in20, tmp_path / "photos", 8, 60)
    store = tmp_path / "store"
    argv = [sys.executable, "-m", "deepscope.cli", "features", str(reference_tflite), str(folder), "--store",
            str(store), "--shard-size", "5", "--quiet"]
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = lambda: sorted(p.name for p in store.glob("*/shards/[0-9]*"))  # noqa: E731
    while process.poll() is None and len(committed()) < 3:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = committed()
    assert 3 <= len(finished) < 12, "the job must be killed half-way"
    loaded = mobilenet_v2_import
    resumed = run_job(FeaturesJob(), loaded, scan_images(folder, loaded.classes), store, shard_size=5)
    assert (resumed.computed, resumed.reused) == (12 - len(finished), len(finished))
    whole = run_job(FeaturesJob(), loaded, scan_images(folder, loaded.classes), tmp_path / "whole", shard_size=5).open()
    assert resumed.open().table("files").equals(whole.table("files"))
    assert np.abs(resumed.open().array("features") - whole.array("features")).max() <= 1e-5
    # a truncated shard file is found and computed again
    target = resumed.path / "shards" / "000004" / "features.npy"
    with open(target, "r+b") as handle:
        handle.truncate(target.stat().st_size // 2)
    repaired = run_job(FeaturesJob(), loaded, scan_images(folder, loaded.classes), store, shard_size=5)
    assert (repaired.computed, repaired.reused) == (1, 11)
    assert np.abs(repaired.open().array("features") - whole.array("features")).max() <= 1e-5


# -- memory ----------------------------------------------------------------------------------------------
MEMORY = r"""
import sys
import torch
from torch import nn
from deepscope.cli import keep_freed_memory
from deepscope.images import scan_images
from deepscope.jobs import FeaturesJob, NeuronsJob, run_job
from deepscope.models.classes import ClassList
from deepscope.models.preprocess import Preprocess
from deepscope.models.zoo import LoadedModel

kind, folder, store = sys.argv[1:4]
keep_freed_memory()  # as the command line does
torch.set_num_threads(1)  # the network is tiny: more threads would only spin
torch.manual_seed(0)
# a small network with a wide last layer: 8,192 features per photo, so a job that kept every row (or every
# activation of the layer) in memory would grow by 655 MB from 500 to 20,000 photos, about 65 % of this
# process's 1 GB after importing torch
model = nn.Sequential(*[m for i, o in ((3, 16), (16, 32), (32, 32), (32, 32), (32, 32))
                        for m in (nn.Conv2d(i, o, 3, stride=2, padding=1), nn.ReLU())],
                      nn.Conv2d(32, 8192, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8192, 10))
loaded = LoadedModel(model, Preprocess(32, 36), ClassList.generic(10), "wide", "test")
images = scan_images(folder)
job = FeaturesJob() if kind == "features" else NeuronsJob("10", k=9)
run = run_job(job, loaded, images, store, batch_size=64)
assert run.computed == run.shards and run.files == len(images)
# this process's own peak: VmHWM. (getrusage's ru_maxrss also counts the parent's resident memory at the
# fork before exec, so under a large test process it reports the parent's peak instead.)
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


@pytest.fixture(scope="module")
def generated_20000(in20, tmp_path_factory):
    """20,000 photos made from in20's 500: each photo cropped 40 ways (seeded boxes), resized to 40-64 px and
    re-encoded as JPEG. Small files keep the test affordable; the job still decodes each one and resizes and
    crops it with the model's preprocessing."""
    root = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(0)
    for photo in sorted(in20.glob("*/*.JPEG")):
        folder = root / photo.parent.name
        folder.mkdir(exist_ok=True)
        with Image.open(photo) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        for copy in range(40):
            side = int(rng.integers(min(width, height) // 2, min(width, height) + 1))
            left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            size = int(rng.integers(40, 65))
            crop = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
            crop.save(folder / f"{photo.stem}_{copy:02d}.jpg", quality=int(rng.integers(60, 95)))
    return root


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_memory_does_not_grow_with_the_dataset(generated_20000, tmp_path):
    small = tmp_path / "500"
    for photo in sorted(generated_20000.glob("*/*.jpg"))[::40]:
        (small / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (small / photo.parent.name / photo.name).symlink_to(photo)
    assert sum(1 for _ in small.glob("*/*.jpg")) == 500 and sum(1 for _ in generated_20000.glob("*/*.jpg")) == 20_000
    peaks = {}
    for kind in ("features", "neurons"):
        for name, folder in (("500", small), ("20000", generated_20000)):
            done = subprocess.run([sys.executable, "-c", MEMORY, kind, str(folder), str(tmp_path / f"{kind}{name}")],
                                  capture_output=True, text=True, env=ENV, timeout=900)
            assert done.returncode == 0, done.stderr[-3000:]
            peaks[kind, name] = int(done.stdout.split()[-1])
    mib = {f"{kind} {size}": round(peak / 2**20) for (kind, size), peak in peaks.items()}
    for kind in ("features", "neurons"):
        small_peak, large_peak = peaks[kind, "500"], peaks[kind, "20000"]
        assert large_peak < 2.5 * 2**30 and small_peak < 2.5 * 2**30, mib
        assert abs(large_peak - small_peak) < 0.2 * small_peak, mib


# -- the report reads a store ----------------------------------------------------------------------------
def test_the_report_is_built_from_the_stores_jobs(tiny_cnn, tmp_path, monkeypatch):
    from deepscope.commands.report import store_images
    from deepscope.models.classes import ClassList
    from deepscope.models.preprocess import Preprocess
    from deepscope.models.zoo import LoadedModel
    from deepscope.report import Cache, ReportContext, ReportSettings, write_report
    from deepscope.report.layers import block_layer

    rng = np.random.default_rng(0)
    for c, name in enumerate(("tench", "hen")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray((rng.random((40, 48, 3)) * 200 + 20 * c).astype(np.uint8)).save(
                tmp_path / "photos" / name / f"{i}.png")
    loaded = LoadedModel(tiny_cnn, Preprocess(32, 36), ClassList(("tench", "goldfish", "shark", "hen", "ostrich")),
                         "tiny", "a test model")
    images = scan_images(tmp_path / "photos", loaded.classes)
    store = tmp_path / "store"
    for job in (ClassifyJob(5), FeaturesJob(), NeuronsJob(block_layer(tiny_cnn), k=8), ExplainJob("gradient"),
                EvaluateJob("gradient", steps=2)):
        run_job(job, loaded, images, store, shard_size=5)

    def refuse(*args, **kwargs):
        raise AssertionError("computed again although the store has it")

    import deepscope.neurons
    import deepscope.report.base
    import deepscope.report.sections.features
    import deepscope.report.sections.trust
    monkeypatch.setattr(deepscope.report.base, "classify", refuse)
    monkeypatch.setattr(deepscope.report.sections.features, "extract_features", refuse)
    monkeypatch.setattr(deepscope.neurons, "top_activations", refuse)
    monkeypatch.setattr(deepscope.report.sections.trust, "evaluate_methods", refuse)
    photos = store_images(open_store(store), loaded)
    assert photos.paths == images.paths and photos.labels == images.labels
    ctx = ReportContext(loaded, photos, ReportSettings(per_class=2, steps=2, progress=False), Cache(None),
                        store=open_store(store))
    page = write_report(ctx, tmp_path / "out", "model,features,neurons,saliency,trust").read_text()
    assert page.count("the store&#39;s job") >= 3 or page.count("the store's job") >= 3
    assert "every photo&#39;s metrics from the store" in page or "every photo's metrics from the store" in page
    assert "No evaluate job in the store for" in page
    assert "top-1" in page  # accuracy from the stored predictions
