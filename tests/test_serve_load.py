"""The explorer under load, bounded: 50 concurrent clients ask 500 maps of a tiny model over loopback.

Every request must be answered with the map asked for (checked against the same map computed here), the
server's memory must stay flat once warm, and duplicate requests in flight must share one computation. The
figures go to ``$DEEPSCOPE_ARTIFACTS/serve_load.json``; ``bench/bench_serve.py`` is the full-size run on the
built-in model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from serve_helpers import photo_folder, tiny_explorer

sys.path.insert(0, str(REPO / "bench"))
from bench_serve import free_port, launch, plan, run_load, stop, wait_until_up  # noqa: E402

from test_report_browser import artifacts_dir  # noqa: E402

METHODS = ["gradient", "guided", "gradcam", "gradcam++", "layercam", "cam", "smoothgrad", "ig", "random", "center"]
CLIENTS, REQUESTS = 50, 500


def indices(uri: str) -> np.ndarray:
    """The palette indices (map levels) of a heatmap layer PNG."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_fifty_clients_five_hundred_maps(tmp_path):
    port = free_port()
    folder = tmp_path / "photos"
    process, started = launch([sys.executable, str(REPO / "tests" / "serve_helpers.py"), str(port), str(folder), "1"],
                              env={"PYTHONPATH": str(REPO / "src")})
    url = f"http://127.0.0.1:{port}"
    try:
        up = wait_until_up(url, process, started)
        jobs = plan(url, METHODS, REQUESTS, seed=0)
        result = asyncio.run(run_load(url, jobs, CLIENTS, size=32, pid=process.pid, samples=5))
        import httpx

        sample = sorted(set(jobs))[::25]
        with httpx.Client(base_url=url, timeout=120) as http:
            served = {job: http.get(f"/api/photos/{job[0]}/maps/{job[1]}", params={"target": job[2]}).json()["image"]
                      for job in sample}
    finally:
        output = stop(process)
    (artifacts_dir() / "serve_load.json").write_text(json.dumps({**result, "startup": up["times"]}, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "errors"}))

    assert result["errors"] == [] and result["answered"] == REQUESTS, result["errors"][:5]
    # every request was computed, shared with a duplicate in flight, or answered from the cache; the plan repeats
    # some maps, so some requests were not computed (the 1 MB cache evicts, so some are computed again)
    assert result["from_cache"] + result["shared"] > 0
    assert result["distinct"] <= result["computed"] < REQUESTS
    # memory: flat once warm (the last sample within 10% of the first, after 100 answers), with a 1 MB cache
    memory = [mb for _, mb in result["memory_megabytes"]]
    assert len(memory) == 5 and memory[-1] <= 1.10 * memory[0], memory
    assert result["cache_megabytes"] <= 1.0
    # the maps are the ones asked for: the same as computed here with the same model and photos
    explorer = tiny_explorer(photo_folder(tmp_path / "again"))
    explorer.start().result()
    try:
        for job, image in served.items():
            expected = explorer.map_job(explorer.photos.get(job[0]), job[1], job[2], None).result(120)["image"]
            differ = np.abs(indices(image).astype(int) - indices(expected).astype(int))
            assert differ.max() <= 1 and (differ > 0).mean() < 0.01, job
    finally:
        explorer.stop()
    assert output.rstrip().endswith("deepscope serve: stopped"), output
