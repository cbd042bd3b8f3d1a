"""Writing results: refusing to overwrite is atomic (of runs racing for one new path exactly one writes), a command
claims all its files before the work and writes them together, a failed or interrupted run leaves nothing, and a
full disk or a location that cannot be used is one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deepscope import fileio
from deepscope.cli import main
from deepscope.errors import DeepscopeError
from deepscope.fileio import Outputs, OutputExistsError, check_location, write_text

REPO = Path(__file__).resolve().parents[1]
RACERS = 8


def race(target, n: int = RACERS) -> list:
    """Run ``target(i)`` in ``n`` threads released together; each result or raised error, in thread order."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as error:  # collected and checked by the test
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_writes_racing_for_one_new_path_exactly_one_wins(tmp_path):
    path = tmp_path / "result.txt"
    results = race(lambda i: write_text(path, f"written by {i}", overwrite=False))
    winners = [i for i, r in enumerate(results) if r == path]
    assert len(winners) == 1
    assert all(isinstance(r, OutputExistsError) for i, r in enumerate(results) if i not in winners)
    assert path.read_text() == f"written by {winners[0]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]  # no temporary file left


def test_commands_racing_to_claim_one_new_path_exactly_one_writes(tmp_path):
    path = tmp_path / "out" / "result.txt"
    entered = []

    def command(i):
        with Outputs([path]) as outputs:
            entered.append(i)
            write_text(path, f"written by {i}")
        return outputs.written

    results = race(command)
    assert len(entered) == 1 and results[entered[0]] == [path]
    assert all(isinstance(r, OutputExistsError) for i, r in enumerate(results) if i != entered[0])
    assert path.read_text() == f"written by {entered[0]}"


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny TorchScript classifier and a folder of four photos."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 1000)).eval()
    with pytest.warns(FutureWarning):
        torch.jit.script(model).save(str(root / "tiny.pt"))
    for c in ("tench", "goldfish"):
        (root / "photos" / c).mkdir(parents=True)
        for i in range(2):
            pixels = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "photos" / c / f"{i}.png")
    return root / "tiny.pt", root / "photos"


def test_two_cli_runs_on_one_new_path_one_writes_the_other_refuses(tiny_inputs, tmp_path):
    model, photos = tiny_inputs
    out = tmp_path / "predictions.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "deepscope.cli", "classify", str(model), str(photos), "--quiet", "--output",
               str(out)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    (_, wrote, _), = [r for r in results if r[0] == 0]
    (_, _, refused), = [r for r in results if r[0] == 2]
    assert f"wrote {out}" in wrote and "already exists" in refused and "wrote" not in refused
    assert len(json.loads(out.read_text())["images"]) == 4


def test_a_failed_run_writes_nothing_and_the_corrected_run_is_not_refused(tmp_path):
    """features used to save its bank before checking --knn against the readable images."""
    photos = tmp_path / "photos"
    (photos / "tench").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(photos / "tench" / f"{i}.png")
    (photos / "tench" / "broken.png").write_bytes(b"not a png")  # counted by the scan, unreadable later
    out = tmp_path / "out"
    common = ["features", "mobilenet_v3_small", str(photos), "--random-weights", "--project", "none", "--quiet",
              "--no-cache", "--pixel-size", "8", "--out", str(out)]
    assert main([*common, "--knn", "2"]) == 2  # 3 files, 2 readable: found after the extraction
    assert not out.exists()
    assert main([*common, "--knn", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["features.npz", "knn.png"]


def test_a_failed_forced_run_leaves_the_previous_results(tmp_path):
    out = tmp_path / "out"
    with Outputs([out / "a.txt", out / "b.txt"]):
        for name in ("a.txt", "b.txt"):
            write_text(out / name, f"previous {name}")
            assert (out / name).read_text() == ""  # held back until the block succeeds
    previous = {"a.txt": "previous a.txt", "b.txt": "previous b.txt"}
    assert {p.name: p.read_text() for p in out.iterdir()} == previous
    with pytest.raises(RuntimeError):
        with Outputs([out / "a.txt", out / "b.txt"], overwrite=True):
            write_text(out / "a.txt", "new a")
            raise RuntimeError("the work failed half-way")
    assert {p.name: p.read_text() for p in out.iterdir()} == previous


def test_an_interrupted_claim_leaves_nothing(tmp_path):
    out = tmp_path / "deep" / "er"
    with pytest.raises(KeyboardInterrupt):
        with Outputs([out / "a.png", out / "b.json"]):
            write_text(out / "b.json", "{}")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # claims, staged files and the folders made are gone


def test_files_not_written_are_not_left_as_empty_claims(tmp_path):
    with Outputs([tmp_path / "written.txt", tmp_path / "skipped.png"]) as outputs:
        write_text(tmp_path / "written.txt", "x")
    assert outputs.written == [tmp_path / "written.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["written.txt"]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DeepscopeError) as error:
        write_text(tmp_path / "result.txt", "x" * 100)
    message = str(error.value)
    assert "\n" not in message and "No space left on device" in message and "free some space" in message
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_command_is_one_line(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    assert main(["filters", "mobilenet_v3_small", "--random-weights", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make,problem", [
    (lambda t: t / "afile" / "out.png", "is a file, not a folder"),
    (lambda t: t / ("x" * 300) / "out.png", "bytes long"),
    (lambda t: t / "folder", "is a folder"),
    (lambda t: Path("/".join(["d" * 200] * 25)) / "out.png", "too long"),
    (lambda t: t / "nul\0byte.png", "not a valid file name"),
], ids=["parent is a file", "name too long", "a folder", "path too long", "NUL byte"])
def test_locations_that_cannot_be_used_are_found_before_the_work(tmp_path, make, problem):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DeepscopeError, match=problem) as error:
        check_location(make(tmp_path))
    assert "\n" not in str(error.value)


def test_an_unwritable_location_is_refused_when_claimed(tmp_path):
    with pytest.raises(DeepscopeError, match="cannot write") as error:
        with Outputs([Path("/proc/deepscope-test/out.png")]):
            pass
    assert "\n" not in str(error.value)


def test_a_long_file_name_still_gets_a_temporary_sibling(tmp_path):
    path = tmp_path / ("n" * 250 + ".json")  # the sibling's name must not exceed the file system's limit
    assert write_text(path, "{}").read_text() == "{}"
