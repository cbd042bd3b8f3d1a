"""``deepscope serve`` under load: start-up time, map latency with many concurrent clients, server memory.

Starts ``deepscope serve MODEL IMAGES`` in a subprocess, as a user does (the console script, with its process
settings), and measures

- start-up: seconds from launch to the first HTTP response (the page), to the model being ready
  (``/api/info``), and to the first map;
- load: ``--clients`` concurrent clients ask ``--requests`` maps in all (photo x method x class drawn with a
  seed from the photos, ``--methods`` and each photo's top-5 classes); every answer is checked (status, the
  photo, method and class asked for, a PNG at the model's input size); latency percentiles; maps computed,
  shared by duplicate requests, and answered from the cache;
- memory: the server's resident memory (VmRSS) after every tenth of the requests.

The server runs one map at a time (one worker thread owns the model), so the throughput is the model's; the
figures to read are that every request is answered, that the latency of the page's other requests stays low
(``/api/status`` is timed during the load) and that memory stays flat.

Run: ``PYTHONPATH=src nice python bench/bench_serve.py [--model default] [--images builtin] [--clients 50]
[--requests 500] [--methods gradient,guided,gradcam,layercam]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_megabytes(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def launch(command: list[str], env: dict | None = None) -> tuple[subprocess.Popen, float]:
    """Start ``command`` (stdout and stderr merged, as text); returns the process and its start time."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    return process, started


def serve_command(model: str, images: str, port: int) -> list[str]:
    """``deepscope serve`` as the console script runs it (:func:`deepscope.cli.console_main`)."""
    return [sys.executable, "-c", "from deepscope.cli import console_main; console_main()", "serve", model, images,
            "--port", str(port)]


def wait_until_up(url: str, process: subprocess.Popen, started: float, timeout: float = 300) -> dict:
    """Seconds from ``started`` to the first answer of the page and to the model being ready."""
    times = {}
    with httpx.Client(base_url=url, timeout=timeout) as http:
        while "page" not in times:
            try:
                if http.get("/").status_code == 200:
                    times["page"] = time.perf_counter() - started
            except httpx.TransportError:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited: {process.stdout.read()}") from None
                if time.perf_counter() - started > timeout:
                    raise
                time.sleep(0.02)
        info = http.get("/api/info").json()
        times["model"] = time.perf_counter() - started
        photo = http.get("/api/photos").json()["photos"][0]["id"]
        http.get(f"/api/photos/{photo}/maps/gradcam").raise_for_status()
        times["first map"] = time.perf_counter() - started
    return {"times": times, "info": info}


def plan(url: str, methods: list[str], requests: int, seed: int = 0) -> list[tuple[str, str, int]]:
    """``requests`` (photo, method, class) triples drawn with ``seed`` from every photo's top-5 classes."""
    with httpx.Client(base_url=url, timeout=300) as http:
        photos = [p["id"] for p in http.get("/api/photos").json()["photos"]]
        classes = {p: [c["index"] for c in http.get(f"/api/photos/{p}/predictions").json()["predictions"]]
                   for p in photos}
    rng = random.Random(seed)
    return [(photo, rng.choice(methods), rng.choice(classes[photo])) for photo in rng.choices(photos, k=requests)]


def check(answer: httpx.Response, job: tuple[str, str, int], size: int) -> str:
    """Why the answer to ``job`` is wrong, or an empty string."""
    from PIL import Image

    if answer.status_code != 200:
        return f"status {answer.status_code}: {answer.text[:200]}"
    body = answer.json()
    photo, method, target = job
    if (body["photo"], body["method"], body["target"]) != (photo, method, target):
        return f"asked {job}, got {(body['photo'], body['method'], body['target'])}"
    if not body["applicable"]:
        return f"{method} not applicable: {body['note']}"
    image = Image.open(io.BytesIO(base64.b64decode(body["image"].split(",", 1)[1])))
    if image.size != (size, size):
        return f"map of {image.size}, expected {size}x{size}"
    return ""


async def run_load(url: str, jobs: list[tuple[str, str, int]], clients: int, size: int, pid: int | None = None,
                   samples: int = 10) -> dict:
    """``clients`` concurrent clients working through ``jobs``; every answer checked; memory of ``pid`` sampled
    after every ``len(jobs) / samples`` answers; ``/api/status`` timed alongside."""
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies, errors, memory, status_latencies = [], [], [], []
    every = max(1, len(jobs) // samples)
    finished = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            photo, method, target = job = queue.get_nowait()
            started = time.perf_counter()
            answer = await http.get(f"/api/photos/{photo}/maps/{method}", params={"target": target})
            latencies.append(time.perf_counter() - started)
            problem = check(answer, job, size)
            if problem:
                errors.append(f"{job}: {problem}")
            if pid is not None and len(latencies) % every == 0:
                memory.append((len(latencies), round(rss_megabytes(pid), 1)))

    async def watch(http: httpx.AsyncClient) -> None:
        while not finished.is_set():
            started = time.perf_counter()
            (await http.get("/api/status")).raise_for_status()
            status_latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        watcher = asyncio.create_task(watch(http))
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
        finished.set()
        await watcher
        status = (await http.get("/api/status")).json()
    latencies.sort()
    status_latencies.sort()

    def percentile(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else float("nan")

    worker = status["workers"][0]
    return {"requests": len(jobs), "clients": clients, "distinct": len(set(jobs)), "answered": len(latencies),
            "errors": errors, "wall_seconds": round(wall, 1),
            "latency_p50": percentile(latencies, 0.5), "latency_p95": percentile(latencies, 0.95),
            "latency_max": percentile(latencies, 1.0),
            "status_p50": percentile(status_latencies, 0.5), "status_max": percentile(status_latencies, 1.0),
            "computed": worker["computed"], "shared": worker["shared"], "from_cache": worker["from_cache"],
            "cache_megabytes": worker["cache_megabytes"], "memory_megabytes": memory}


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", default="builtin")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--methods", default="gradient,guided,gradcam,layercam")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{(port := free_port())}"
    process, started = launch(serve_command(args.model, args.images, port))
    try:
        up = wait_until_up(url, process, started)
        times = up["times"]
        print(f"deepscope serve {args.model} {args.images}: first HTTP response {times['page']:.1f} s after launch, "
              f"model ready {times['model']:.1f} s, first map {times['first map']:.1f} s; "
              f"memory {rss_megabytes(process.pid):.0f} MB")
        jobs = plan(url, args.methods.split(","), args.requests, args.seed)
        result = asyncio.run(run_load(url, jobs, args.clients, up["info"]["input_size"], process.pid))
    finally:
        output = stop(process)
    print(f"{result['requests']} map requests ({result['distinct']} distinct; {args.methods}) from {args.clients} "
          f"concurrent clients: {result['answered']} answered, {len(result['errors'])} wrong, "
          f"{result['wall_seconds']} s")
    print(f"  latency p50 {result['latency_p50']} s, p95 {result['latency_p95']} s, max {result['latency_max']} s; "
          f"/api/status meanwhile p50 {result['status_p50']} s, max {result['status_max']} s")
    print(f"  maps computed {result['computed']}, shared by duplicate requests {result['shared']}, "
          f"answered from the cache {result['from_cache']}")
    print("  server memory (MB) after n answers: "
          + ", ".join(f"{n}: {mb:.0f}" for n, mb in result["memory_megabytes"]))
    for error in result["errors"][:10]:
        print("  wrong:", error)
    if "stopped" not in output:
        print(output)


if __name__ == "__main__":
    main()
