"""Shared by the explorer's tests: a tiny model with photos, and a real uvicorn server in a thread."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from deepscope.images import scan_images
from deepscope.models.classes import ClassList
from deepscope.models.preprocess import Preprocess
from deepscope.models.zoo import LoadedModel

#: a class name and a file name that would run script if a page wrote them as HTML
EVIL_NAME = '<img src=x onerror="document.title=\'pwned\'">'
EVIL_FILE = "<img src=x onerror=alert(1)>.png"


def tiny_loaded(seed: int = 0) -> LoadedModel:
    """A 3-conv ReLU classifier of 32-px photos into 10 classes (one with an HTML-injection name)."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    names = ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray",
             "cock", "hen", EVIL_NAME)
    return LoadedModel(model.eval(), Preprocess(32, 36), ClassList(names), "tiny", "a tiny test CNN")


def photo_folder(folder: Path, count: int = 6, seed: int = 0) -> Path:
    """``count`` small photos (coloured shapes on noise), one with an HTML-injection file name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = Image.fromarray(rng.integers(0, 120, (48, 56, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        x, y = rng.integers(4, 30, 2)
        draw.ellipse([int(x), int(y), int(x) + 18, int(y) + 18], fill=tuple(int(c) for c in rng.integers(120, 255, 3)))
        name = f"photo{i}.png" if i != count - 1 else EVIL_FILE
        image.save(folder / name)
    return folder


def tiny_explorer(folder: Path, **settings):
    from deepscope.serve.explorer import Explorer, ServeSettings

    defaults = {"feature_cache": False, "optimise_steps": 4, "trust_steps": 4, "trust_mosaics": 2}
    return Explorer(tiny_loaded(), scan_images(folder), ServeSettings(**{**defaults, **settings}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread; ``url`` once started; ``stop()`` ends it."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        from deepscope.serve.server import bind

        self.sock = bind("127.0.0.1", port or 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_serve(*args: str, cwd: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``deepscope serve ARGS --port PORT`` in a subprocess of this Python (stdout and stderr merged, text)."""
    port = free_port()
    src = str(Path(__file__).resolve().parents[1] / "src")
    process = subprocess.Popen([sys.executable, "-m", "deepscope.cli", "serve", *args, "--port", str(port)],
                               env={**os.environ, "PYTHONPATH": src, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=cwd)
    return process, f"http://127.0.0.1:{port}"


def first_response(http, path: str, process: subprocess.Popen | None = None, timeout: float = 180):
    """The first answer to ``GET path`` once the server listens (a dead server process fails at once)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            return http.get(path)
        except httpx.TransportError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server exited: {process.stdout.read()}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    # python tests/serve_helpers.py PORT FOLDER CACHE_MB: the tiny explorer on 127.0.0.1, in a process of its own
    # with the console script's process settings (the load test measures this process's memory)
    import torch

    from deepscope.cli import keep_freed_memory
    from deepscope.serve.server import run_server

    keep_freed_memory()
    port, folder, cache = int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    explorer = tiny_explorer(photo_folder(folder), cache_megabytes=cache)
    explorer.interactive._setup = explorer.background._setup = lambda: torch.set_flush_denormal(True)
    run_server(explorer, "127.0.0.1", port)
