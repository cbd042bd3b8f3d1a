"""``deepscope serve``: every endpoint of the explorer's API, bad input, security, the workers, the command.

Most tests run the app in-process (FastAPI's TestClient) on a tiny CNN over six generated photos; answers
are compared with the same computation made directly with the library. ``test_serve_command_*`` start the
real command in a subprocess.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, assert_unchanged, model_fingerprint
from serve_helpers import (EVIL_FILE, EVIL_NAME, ServerThread, first_response, photo_folder, start_serve,
                           tiny_explorer)

from deepscope.catalogue import build_method, method_names
from deepscope.errors import DeepscopeError
from deepscope.images import load_image
from deepscope.maps import display_maps
from deepscope.render.report import heatmap_layer_uri
from deepscope.serve.app import CONTENT_SECURITY_POLICY, create_app
from deepscope.serve.worker import ModelWorker, ResultCache, wait

STATIC = REPO / "src" / "deepscope" / "serve" / "static"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("served") / "photos")


@pytest.fixture(scope="module")
def explorer(folder):
    return tiny_explorer(folder)


@pytest.fixture(scope="module")
def client(explorer):
    from fastapi.testclient import TestClient

    with TestClient(create_app(explorer), base_url="http://127.0.0.1") as client:
        assert client.get("/api/info").status_code == 200  # the model is loaded
        yield client


def png_array(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def refused(response, status: int, words: str) -> str:
    """The one-line message of a refused request (checked: status, JSON, one line, mentions ``words``)."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and 0 < len(message) <= 400
    assert words.lower() in message.lower(), message
    return message


# ------------------------------------------------------------------------------------------- the page
def test_page_and_its_files_are_served_with_a_content_security_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), "inline script in the page"
    assert not re.search(r"\son[a-z]+=", page.text), "inline event handler in the page"
    assert not re.search(r"\sstyle=", page.text), "inline style in the page"
    script = client.get("/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")
    # the script writes every name as text, never as HTML
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script.text, sink
    refused(client.get("/static/explorer.py"), 404, "no such file")
    refused(client.get("/api/nothing"), 404, "no such")


def test_info_lists_every_method_layer_and_colour_scale(client, explorer):
    info = client.get("/api/info").json()
    assert info["model"] == "tiny" and info["input_size"] == 32 and info["classes"] == 10
    assert [m["name"] for m in info["methods"]] == method_names()
    assert {m["name"] for m in info["methods"] if m["layer"]} >= {"gradcam", "cam", "scorecam", "layercam"}
    occlusion = next(m for m in info["methods"] if m["name"] == "occlusion")
    assert occlusion["settings"] == "window=32, stride=24"  # the report's quick settings
    assert [layer["name"] for layer in info["layers"]] == ["0", "1", "2", "3", "4", "5"]
    assert info["layers"][2] == {"name": "2", "channels": 16, "height": 16, "width": 16}
    assert info["default_layer"] == "5"
    assert info["scales"]["signed"].startswith("data:image/png") and info["scales"]["unsigned"].startswith("data:")
    assert client.get("/api/classes").json()["names"][9] == EVIL_NAME
    assert client.get("/api/classes/resolve", params={"name": "Tiger Shark"}).json() == {"index": 3, "name": "tiger shark"}


def test_photos_are_listed_by_id_and_no_path_leaves_the_server(client, folder):
    response = client.get("/api/photos")
    photos = response.json()["photos"]
    assert [p["id"] for p in photos] == [f"f{i}" for i in range(6)]
    assert photos[0] == {"id": "f0", "name": EVIL_FILE, "folder": None, "source": "folder"}
    assert str(folder) not in response.text and "path" not in photos[0]
    image = Image.open(io.BytesIO(client.get("/api/photos/f1/image").content))
    assert image.format == "JPEG" and image.size == (32, 32)
    thumb = client.get("/api/photos/f1/thumb")
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size == (112, 112)


def test_predictions_are_the_models_softmax(client, explorer, folder):
    loaded = explorer.loaded
    x = loaded.preprocess(load_image(folder / "photo1.png"))[None]
    with torch.no_grad():
        probs = loaded.model(x).softmax(1)[0]
    top = probs.topk(5)
    found = client.get("/api/photos/f2/predictions").json()["predictions"]  # f0 is EVIL_FILE, f1 photo0...
    assert [p["index"] for p in found] == top.indices.tolist()
    assert [p["probability"] for p in found] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert found[0]["name"] == loaded.classes.names[found[0]["index"]]


@pytest.mark.parametrize("method", ["gradcam", "gradient", "ig", "occlusion"])
def test_a_map_is_the_catalogue_method_shown_as_in_the_report(client, explorer, folder, method):
    loaded = explorer.loaded
    before = model_fingerprint(loaded.model)
    answer = client.get(f"/api/photos/f2/maps/{method}", params={"target": "3"}).json()
    assert answer["method"] == method and answer["target"] == 3 and answer["target_name"] == "tiger shark"
    assert answer["applicable"] and answer["layer"] == ("5" if method == "gradcam" else None)
    pixels = loaded.preprocess.crop(load_image(folder / "photo1.png"))
    built = build_method(method, loaded.model, preprocess=loaded.preprocess, **explorer.method_options(method, None))
    shown = display_maps(built.attribute(loaded.preprocess.normalize(pixels[None]), target=3), built.display, (32, 32))[0]
    assert answer["image"] == heatmap_layer_uri(shown, built.display.signed)
    assert png_array(answer["image"]).shape == (32, 32)
    assert answer["signed"] == built.display.signed
    by_name = client.get(f"/api/photos/f2/maps/{method}", params={"target": "Tiger shark"}).json()
    assert by_name["image"] == answer["image"]
    assert_unchanged(loaded.model, before)


def test_the_predicted_class_is_explained_by_default(client):
    predicted = client.get("/api/photos/f3/predictions").json()["predictions"][0]["index"]
    default = client.get("/api/photos/f3/maps/gradient").json()
    assert default["target"] == predicted
    assert default["image"] == client.get("/api/photos/f3/maps/gradient", params={"target": predicted}).json()["image"]


def test_the_layer_picks_the_cams_maps_and_other_methods_ignore_it(client):
    default = client.get("/api/photos/f1/maps/gradcam", params={"target": 1}).json()
    early = client.get("/api/photos/f1/maps/gradcam", params={"target": 1, "layer": "1"}).json()
    assert (default["layer"], early["layer"]) == ("5", "1") and default["image"] != early["image"]
    plain = client.get("/api/photos/f1/maps/gradient", params={"target": 1}).json()
    with_layer = client.get("/api/photos/f1/maps/gradient", params={"target": 1, "layer": "1"}).json()
    assert with_layer["layer"] is None and with_layer["image"] == plain["image"]


def test_a_method_that_does_not_fit_is_reported_not_failed(client):
    answer = client.get("/api/photos/f1/maps/cam", params={"target": 1, "layer": "2"}).json()
    assert answer["applicable"] is False and answer["image"] is None
    assert answer["note"].startswith("not applicable:")


@pytest.mark.parametrize("path, params, status, words", [
    ("/api/photos/f1/maps/gradcam", {"target": "platypus"}, 422, "unknown class 'platypus'"),
    ("/api/photos/f1/maps/gradcam", {"target": "1000"}, 422, "out of range"),
    ("/api/photos/f1/maps/gradcam", {"target": "-1"}, 422, "out of range"),
    ("/api/photos/f1/maps/gradcamm", {}, 422, "unknown method 'gradcamm'. Did you mean: gradcam"),
    ("/api/photos/f1/maps/gradcam", {"layer": "features.99"}, 422, "unknown layer 'features.99'"),
    ("/api/photos/f1/maps/layercam", {"layer": "6"}, 422, "unknown layer '6'"),
    ("/api/photos/f9/maps/gradcam", {}, 404, "unknown photo 'f9'"),
    ("/api/photos/f1x/predictions", {}, 404, "unknown photo"),
    ("/api/photos/u0/image", {}, 404, "unknown photo"),
    ("/api/classes/resolve", {"name": "platypus"}, 422, "unknown class"),
    ("/api/neurons", {"layer": "2", "channel": 16}, 422, "channel 16 is out of range"),
    ("/api/neurons", {"layer": "2", "channel": "two"}, 422, "channel"),
    ("/api/neurons", {"layer": "nope", "channel": 0}, 422, "unknown layer"),
    ("/api/neurons", {"channel": 0}, 422, "layer"),
    ("/api/neurons/optimised", {"layer": "8", "channel": 0}, 422, "unknown layer"),
    ("/api/features", {"projection": "isomap"}, 422, "projection must be one of"),
    ("/api/features", {"space": "logits"}, 422, "space must be"),
    ("/api/features/neighbours", {"photo": "f99"}, 404, "unknown photo"),
    ("/api/features/neighbours", {"photo": "f1", "k": 0}, 422, "k must be"),
])
def test_bad_input_is_a_clear_4xx(client, path, params, status, words):
    refused(client.get(path, params=params), status, words)


# ------------------------------------------------------------------------------------------- uploads
def _png(seed: int = 1, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _bomb(side: int) -> bytes:
    """The start of a PNG of ``side`` x ``side`` grey pixels: a few kilobytes that claim a huge image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compressobj(9)
    body = b"".join(rows.compress(b"\x00" + b"\x80" * side) for _ in range(64)) + rows.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def upload(client, data: bytes, content_type: str = "image/png", name: str = "photo.png", **headers):
    return client.post("/api/photos", content=data, headers={"content-type": content_type, "x-filename": name, **headers})


def test_an_upload_is_checked_stored_privately_and_explained(folder):
    from fastapi.testclient import TestClient

    from deepscope.serve.photos import UploadLimits

    explorer = tiny_explorer(folder, uploads=UploadLimits(max_bytes=60_000, max_uploads=2))
    with TestClient(create_app(explorer), base_url="http://127.0.0.1") as client:
        refused(upload(client, b"GIF89a not really"), 415, "not an image file")
        refused(upload(client, b"hello", content_type="text/plain"), 415, "type 'text/plain' is not accepted")
        refused(upload(client, b""), 415, "empty")
        refused(upload(client, _png(size=(200, 200))), 413, "over the limit")
        refused(upload(client, _png()[:300]), 415, "corrupt or truncated")
        refused(upload(client, _png(size=(10, 10))), 415, "too small")
        assert len(_bomb(40_000)) < 60_000
        refused(upload(client, _bomb(40_000)), 413, "decompression bomb")  # Pillow's own limit
        refused(upload(client, _bomb(8_000)), 413, "8000x8000 px is too large (over 40 megapixels)")
        assert client.get("/api/photos").json()["photos"][-1]["id"] == "f5"  # nothing was added

        answer = upload(client, _png(), name="%2E%2E%2F..%2Fetc%2F<svg onload=alert(2)>.png")
        assert answer.status_code == 200
        photo = answer.json()["photo"]
        assert photo == {"id": "u0", "name": "<svg onload=alert(2)>.png", "folder": None, "source": "upload"}
        assert upload(client, _png()).json()["photo"]["id"] == "u0"  # the same bytes: the same photo
        stored = explorer.photos.get("u0").path
        assert stored.parent != folder and stored.name == "u0.png" and stored.read_bytes() == _png()
        assert client.get("/api/photos/u0/predictions").status_code == 200
        assert client.get("/api/photos/u0/maps/gradcam").json()["applicable"]
        assert upload(client, _png(2)).json()["photo"]["id"] == "u1"
        refused(upload(client, _png(3)), 429, "limit")
        ids = [p["id"] for p in client.get("/api/photos").json()["photos"]]
        assert ids[-2:] == ["u0", "u1"]
        # the feature space takes the uploads in
        points = client.get("/api/features").json()["points"]
        assert {p["photo"] for p in points} == set(ids)
    assert not stored.exists() and not stored.parent.exists()  # removed when the server stopped


def test_an_oversized_upload_is_refused_from_its_declared_length(folder):
    from fastapi.testclient import TestClient

    from deepscope.serve.photos import UploadLimits

    explorer = tiny_explorer(folder, uploads=UploadLimits(max_bytes=1000))
    with TestClient(create_app(explorer), base_url="http://127.0.0.1") as client:
        response = client.post("/api/photos", content=b"x" * 10, headers={"content-type": "image/png",
                                                                          "content-length": "5000000"})
        refused(response, 413, "over the limit")


# ------------------------------------------------------------------------------------------- paths
def test_no_request_reads_a_file_outside_the_served_folder(client, folder):
    secret = folder.parent / "secret.txt"
    secret.write_text("the secret contents")
    opened: list[str] = []
    recording = threading.Event()

    def audit(event, args):
        if recording.is_set() and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)  # cannot be removed; it records only while the event is set
    attempts = [
        ("get", "/api/photos/..%2Fsecret.txt/image", {}), ("get", "/api/photos/..%2F..%2Fetc%2Fpasswd/thumb", {}),
        ("get", "/api/photos/%2Fetc%2Fpasswd/image", {}), ("get", f"/api/photos/{secret}/image", {}),
        ("get", "/api/photos/%2e%2e/secret.txt", {}), ("get", "/static/..%2Fsecret.txt", {}),
        ("get", "/static/%2e%2e%2f%2e%2e%2fsecret.txt", {}), ("get", "/static/%2Fetc%2Fpasswd", {}),
        ("get", "/api/features/neighbours", {"photo": "../secret.txt"}),
        ("get", "/api/features/neighbours", {"photo": str(secret)}),
        ("get", "/api/photos/f1/maps/..%2F..%2Fsecret.txt", {}),
        ("get", "/api/photos/f1/maps/gradcam", {"layer": "../secret.txt"}),
        ("get", "/api/photos/f1/maps/gradcam", {"target": str(secret)}),
        ("get", "/api/neurons", {"layer": "/etc/passwd", "channel": 0}),
    ]
    recording.set()
    try:
        responses = [getattr(client, verb)(path, params=params) for verb, path, params in attempts]
    finally:
        recording.clear()
    for (_, path, _), response in zip(attempts, responses):
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert "secret contents" not in response.text and "root:" not in response.text
        assert "error" in response.json()
    touched = [path for path in opened if "secret" in path or path.startswith("/etc/")]
    assert touched == [], touched


# ------------------------------------------------------------------------------------------- views
def test_a_neuron_view_is_its_top_crops_with_guided_backprop(client, explorer):
    from deepscope.neurons import top_activations

    view = client.get("/api/neurons", params={"layer": "3", "channel": 5}).json()
    assert view["layer"] == "3" and view["channel"] == 5 and view["gradient_method"] == "guided backprop"
    assert len(view["items"]) == 6 and view["field"]["method"] == "architecture"
    values = [item["activation"] for item in view["items"]]
    assert values == sorted(values, reverse=True)
    loaded = explorer.loaded
    top = top_activations(loaded.model, explorer.photos.image_set(), loaded.preprocess, "3", [5], 6, progress=False)
    assert values == pytest.approx(top.values[0].tolist(), abs=1e-4)
    assert [item["photo"] for item in view["items"]] == [f"f{i}" for i in top.image_indices[0].tolist()]
    for item in view["items"]:
        top_, left, bottom, right = item["box"]
        assert Image.open(io.BytesIO(base64.b64decode(item["crop"].split(",")[1]))).size == (right - left, bottom - top_)
        assert png_array(item["guided"]).shape == (bottom - top_, right - left, 3)
    optimised = client.get("/api/neurons/optimised", params={"layer": "3", "channel": 5}).json()
    assert optimised["steps"] == 4
    assert Image.open(io.BytesIO(base64.b64decode(optimised["image"].split(",")[1]))).size == (32, 32)


def test_the_feature_space_and_its_neighbours(client, explorer):
    from deepscope.features import extract_features, nearest_neighbours, pixel_bank

    space = client.get("/api/features").json()
    assert space["method"] == "pca" and space["layer"] == "8:input" and space["dimensions"] == 16
    assert [p["photo"] for p in space["points"]] == [f"f{i}" for i in range(6)]
    xs, ys = [p["x"] for p in space["points"]], [p["y"] for p in space["points"]]
    assert min(xs) == 0 and max(xs) == 1 and min(ys) == 0 and max(ys) == 1
    assert all(p["predicted"] for p in space["points"])
    tsne = client.get("/api/features", params={"projection": "tsne", "space": "pixels"}).json()
    assert tsne["layer"] == "pixels@32"  # 64 px, at most the input side and len(tsne["points"]) == 6
    found = client.get("/api/features/neighbours", params={"photo": "f2", "k": 3}).json()
    images = explorer.photos.image_set()
    bank = extract_features(explorer.loaded, images, cache=False)
    pixels = pixel_bank(images, explorer.loaded.preprocess, size=32, cache=False)
    for name, source in (("features", bank), ("pixels", pixels)):
        expected = nearest_neighbours(source, [2], 3)
        assert [n["photo"] for n in found[name]] == [f"f{i}" for i in expected.indices[0].tolist()]
        assert [n["distance"] for n in found[name]] == pytest.approx(expected.distances[0].tolist(), abs=1e-4)


def test_the_trust_table_runs_in_the_background(client):
    assert client.get("/api/trust").json()["state"] == "idle"
    started = client.post("/api/trust").json()
    assert started["state"] in ("queued", "running") and started["total"] == len(method_names())
    for _ in range(600):
        state = client.get("/api/trust").json()
        if state["state"] in ("done", "failed"):
            break
        assert client.get("/api/status").status_code == 200  # the server answers while it runs
        time.sleep(0.2)
    assert state["state"] == "done", state
    assert [row[0] for row in state["rows"]] == method_names()
    assert all(len(row) == len(state["columns"]) for row in state["rows"])
    assert float(state["rows"][0][1].split()[0]) >= 0
    assert client.post("/api/trust").json()["state"] == "done"  # the same photos: not recomputed


def test_status_reports_the_workers_and_memory(client):
    status = client.get("/api/status").json()
    assert status["model"] == "ready"
    assert [w["name"] for w in status["workers"]] == ["interactive", "background"]
    assert status["workers"][0]["computed"] > 0 and status["memory_megabytes"] > 0


# ------------------------------------------------------------------------------------------- security
def test_a_server_off_the_loopback_needs_its_token(folder):
    from fastapi.testclient import TestClient

    with TestClient(create_app(tiny_explorer(folder), token="s3cret", allowed_hosts=None), base_url="http://10.0.0.5") as client:
        refused(client.get("/"), 403, "access token")
        refused(client.get("/api/photos", params={"token": "wrong"}), 403, "access token")
        refused(client.get("/api/photos", headers={"x-deepscope-token": "s3cre"}), 403, "access token")
        first = client.get("/", params={"token": "s3cret"})
        assert first.status_code == 200
        assert "deepscope_token=s3cret" in first.headers["set-cookie"] and "samesite=strict" in first.headers["set-cookie"].lower()
        assert client.get("/api/photos").status_code == 200  # the cookie
        client.cookies.clear()
        assert client.get("/api/photos", headers={"x-deepscope-token": "s3cret"}).status_code == 200
        refused(client.get("/api/photos"), 403, "access token")


def test_the_loopback_server_refuses_other_hosts_and_cross_site_posts(client):
    refused(client.get("/api/photos", headers={"host": "attacker.example"}), 403, "host 'attacker.example'")
    assert client.get("/api/photos", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/api/photos", headers={"host": "[::1]:8000"}).status_code == 200
    refused(upload(client, _png(), origin="http://attacker.example"), 403, "another site")
    refused(client.post("/api/trust", headers={"origin": "http://attacker.example"}), 403, "another site")


# ------------------------------------------------------------------------------------------- workers
def test_duplicate_jobs_share_one_computation_and_results_are_cached():
    worker = ModelWorker("test", ResultCache(10_000))
    worker.start()
    gate = threading.Event()
    calls = []
    try:
        blocker = worker.submit(None, gate.wait)
        futures = [worker.submit("k", lambda: calls.append(1) or "value", size=len) for _ in range(10)]
        assert len({id(f) for f in futures}) == 1 and worker.shared == 9
        assert worker.status()["queued"] == 2
        gate.set()
        assert [f.result(10) for f in futures] == ["value"] * 10 and len(calls) == 1
        assert blocker.result(10) is True
        assert worker.submit("k", lambda: calls.append(1)).result(10) == "value" and len(calls) == 1  # cached
        assert (worker.computed, worker.shared, worker.from_cache) == (2, 9, 1)
    finally:
        worker.stop()


def test_errors_are_not_cached_and_a_cancelled_waiter_leaves_the_shared_job():
    import asyncio

    worker = ModelWorker("test", ResultCache(10_000))
    worker.start()
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise DeepscopeError("first time")
        return "fine"

    try:
        with pytest.raises(DeepscopeError, match="first time"):
            worker.submit("f", flaky, size=len).result(10)
        assert worker.submit("f", flaky, size=len).result(10) == "fine" and len(attempts) == 2

        gate = threading.Event()
        shared: Future = worker.submit("slow", lambda: gate.wait(10) and "done", size=len)

        async def scenario():
            impatient = asyncio.ensure_future(wait(shared))
            patient = asyncio.ensure_future(wait(shared))
            await asyncio.sleep(0.05)
            impatient.cancel()
            gate.set()
            return await patient

        assert asyncio.run(scenario()) == "done" and not shared.cancelled()
    finally:
        worker.stop()


def test_the_result_cache_is_bounded_least_recently_used_first_out():
    cache = ResultCache(max_bytes=100, max_entries=3)
    for key in "abc":
        cache.put(key, key, 30)
    assert cache.get("a") == "a"  # a is now the most recent
    cache.put("d", "d", 30)
    assert "b" not in cache and all(k in cache for k in "acd") and cache.bytes == 90
    cache.put("e", "e", 60)
    assert "c" not in cache and "a" not in cache and cache.bytes == 90
    cache.put("huge", "x", 101)
    assert "huge" not in cache and len(cache) == 2


def test_the_page_stays_responsive_while_the_model_worker_is_busy(folder):
    explorer = tiny_explorer(folder)
    with ServerThread(create_app(explorer)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/api/info").status_code == 200
        gate = threading.Event()
        explorer.interactive.submit(None, gate.wait, "a long job")
        result: dict = {}
        map_request = threading.Thread(target=lambda: result.update(
            answer=http.get("/api/photos/f1/maps/gradient", params={"target": 2})))
        map_request.start()
        try:
            for _ in range(100):  # the map request reaches the queue behind the long job
                status = http.get("/api/status").json()
                if status["workers"][0]["queued"] == 1:
                    break
                time.sleep(0.05)
            assert status["workers"][0]["running"] == "a long job" and status["workers"][0]["queued"] == 1
            assert http.get("/api/photos").status_code == 200
            assert http.get("/api/photos/f1/thumb").status_code == 200
            assert "answer" not in result
        finally:
            gate.set()
            map_request.join(60)
        assert result["answer"].status_code == 200 and result["answer"].json()["target"] == 2


# ------------------------------------------------------------------------------------------- the command
def test_serve_command_refuses_what_it_cannot_do():
    from deepscope.cli import main

    assert main(["serve", "--store", "results"]) == 2
    assert main(["serve", "--port", "70000"]) == 2


def test_serve_command_refuses_a_taken_port(capsys):
    from deepscope.cli import main
    from deepscope.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert main(["serve", "--port", str(sock.getsockname()[1]), "--random-weights"]) == 2
        assert "choose another --port" in capsys.readouterr().err
    finally:
        sock.close()


def test_serve_command_with_no_arguments_serves_the_default_model(tmp_path):
    """``deepscope serve`` as a user starts it: the built-in model and photos on 127.0.0.1."""
    process, url = start_serve(cwd=tmp_path, env={"DEEPSCOPE_CACHE": str(tmp_path / "cache")})
    try:
        with httpx.Client(base_url=url, timeout=180) as http:
            page = first_response(http, "/", process)
            assert page.status_code == 200 and "deepscope explorer" in page.text
            info = http.get("/api/info").json()
            assert info["model"] == "efficientnet_lite0" and info["photos"] == 5
            photos = http.get("/api/photos").json()["photos"]
            assert [p["name"] for p in photos][:2] == ["chelsea.png", "coffee.png"]
            cat = http.get("/api/photos/f0/predictions").json()["predictions"][0]
            assert cat["name"] in ("tabby", "tiger cat", "Egyptian cat")
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = process.communicate(timeout=60)
    assert f"open {url}/" in output and "token" not in output
    assert "model ready after" in output and output.rstrip().endswith("deepscope serve: stopped")
    assert process.returncode == 0, output


def test_serve_on_another_interface_prints_a_token_once(tmp_path):
    process, url = start_serve("--random-weights", "--host", "0.0.0.0", cwd=tmp_path)
    try:
        token = re.search(r"\?token=([\w-]+)", process.stdout.readline()).group(1)
        with httpx.Client(base_url=url, timeout=60) as http:
            assert first_response(http, "/api/photos", process).status_code == 403
            assert http.get("/api/photos", params={"token": token}).status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert token not in output and len(token) >= 32  # printed once, in the first line only
