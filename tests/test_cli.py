"""The CLI: one-line errors for user mistakes, no silent overwrites, machine-readable output."""

import json
import subprocess
import sys

import pytest

from deepscope.cli import main


def test_user_mistakes_get_one_line_errors(capsys, tmp_path):
    assert main(["classify", "resnet-18", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean" in err and "Traceback" not in err
    assert main(["classify", "default", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    assert main(["layers", "resnet18", "--random-weights", "--depth", "1"]) == 0
    assert "layer4" in capsys.readouterr().out


def test_classify_writes_json_and_refuses_to_overwrite(capsys, tmp_path):
    out = tmp_path / "predictions.json"
    assert main(["classify", "--quiet", "--top", "3", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    coffee = next(row for row in result["images"] if row["path"].endswith("coffee.png"))
    assert coffee["predictions"][0]["name"] == "espresso" and len(coffee["predictions"]) == 3
    assert main(["classify", "--quiet", "--output", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["classify", "--quiet", "--output", str(tmp_path / "p.csv"), "--force"]) == 0
    assert (tmp_path / "p.csv").read_text().startswith("path,label,label_name,class1,name1,prob1")


def test_classify_reports_accuracy_and_skipped_files(capsys, tmp_path, in20):
    folder = tmp_path / "n01440764"
    folder.mkdir()
    for photo in sorted((in20 / "n01440764").iterdir())[:3]:
        (folder / photo.name).write_bytes(photo.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert main(["classify", "--quiet", "default", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "overall on 3 labelled image(s)" in captured.out
    assert "broken.jpg" in captured.err and "skipped 1 file(s)" in captured.err


_MMAPPED_BYTES = """
import ctypes, sys
from deepscope.cli import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
block = bytearray(200 * 2**20)
print(int(kept), libc.mallinfo2().hblkhd)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_cli_keeps_large_blocks_in_the_heap():
    """The CLI's process serves large blocks from the reusable heap instead of fresh mmaps (glibc)."""
    runs = {how: subprocess.run([sys.executable, "-c", _MMAPPED_BYTES, how], capture_output=True, text=True,
                                check=True).stdout.split() for how in ("keep", "default")}
    assert runs["keep"][0] == "1" and int(runs["keep"][1]) < 100 * 2**20  # a few small mmaps from start-up
    assert runs["default"][0] == "0" and int(runs["default"][1]) >= 200 * 2**20


# -- hardening --------------------------------------------------------------------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _fixed_model(path, logits) -> str:
    """A TorchScript classifier that gives every image the same scores."""
    import torch

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))

        def forward(self, x):
            return self.logits.expand(x.shape[0], -1) + 0 * x.mean()

    with pytest.warns(FutureWarning):
        torch.jit.script(Fixed()).save(str(path))
    return str(path)


@pytest.fixture
def tench_folder(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos" / "n01440764"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder.parent


def _overall(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("overall"))


def test_accuracy_does_not_depend_on_top(tmp_path, tench_folder, capsys):
    """Tench (class 0) scores second: top-1 0%, top-5 100%, whatever --top keeps (--top 1 used to say top-5 0%)."""
    logits = [0.0] * 1000
    logits[1], logits[0] = 5.0, 4.0
    model = _fixed_model(tmp_path / "fixed.pt", logits)
    lines, summaries = set(), []
    for top in ("1", "2", "5", "1000"):
        out = tmp_path / f"top{top}.json"
        assert main(["classify", model, str(tench_folder), "--quiet", "--top", top, "--output", str(out)]) == 0
        lines.add(_overall(capsys.readouterr().out))
        summaries.append({k: v for k, v in json.loads(out.read_text())["summary"].items() if k != "skipped"})
    assert lines == {"overall on 3 labelled image(s): top-1 0.0%, top-5 100.0%"}
    assert summaries == [{"top1": 0.0, "top5": 1.0}] * 4


def test_tied_scores_are_no_hit(tmp_path, tench_folder, capsys):
    model = _fixed_model(tmp_path / "flat.pt", [0.0] * 1000)  # every class scores the same
    assert main(["classify", model, str(tench_folder), "--quiet", "--top", "1"]) == 0
    assert _overall(capsys.readouterr().out).endswith("top-1 0.0%, top-5 0.0%")


def test_options_may_come_between_the_positionals(tmp_path, tench_folder, capsys):
    model = _fixed_model(tmp_path / "fixed.pt", [0.0] * 1000)
    assert main(["classify", model, "--quiet", "--top", "1", str(tench_folder)]) == 0
    assert f"on 3 image(s) from {tench_folder}" in capsys.readouterr().out


def test_a_folder_named_builtin_is_not_shadowed(tmp_path, tench_folder, capsys, monkeypatch):
    model = _fixed_model(tmp_path / "fixed.pt", [0.0] * 1000)
    monkeypatch.chdir(tmp_path)
    assert main(["classify", model, "--quiet"]) == 0  # no IMAGES: the built-in photos
    assert "on 5 image(s)" in capsys.readouterr().out
    (tench_folder / "n01440764").rename(tmp_path / "builtin")
    assert main(["classify", model, "builtin", "--quiet"]) == 0
    assert "on 3 image(s) from builtin" in capsys.readouterr().out


def test_file_names_are_escaped_on_the_terminal(tmp_path, tench_folder, capsys):
    hostile = tench_folder / "n01440764" / "\x1b[2J\x1b]0;pwned\x07.png"
    (tench_folder / "n01440764" / "0.png").rename(hostile)
    model = _fixed_model(tmp_path / "fixed.pt", [0.0] * 1000)
    assert main(["classify", model, str(tench_folder), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J\\x1b]0;pwned\\x07.png" in out
    assert main(["classify", model, str(tmp_path / "\x1b[31mmissing\nline")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1 and "\\x1b[31mmissing\\nline" in err


def test_quiet_silences_every_progress_bar(tmp_path, tench_folder, capsys):
    assert main(["explain", "mobilenet_v3_small", str(tench_folder), "--random-weights", "--quiet", "--limit", "1",
                 "--method", "scorecam,occlusion", "--option", "scorecam.max_channels=2",
                 "--option", "occlusion.window=112", "--option", "occlusion.stride=112",
                 "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""


def _console(*args: str) -> subprocess.Popen:
    import os

    return subprocess.Popen([sys.executable, "-c", "from deepscope.cli import console_main; console_main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})


@pytest.mark.parametrize("delay", [0.3, 1.5, 3.0])
def test_ctrl_c_during_start_up_is_one_line(delay):
    import signal
    import time

    run = _console("layers", "mobilenet_v3_small", "--random-weights")
    time.sleep(delay)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert "Traceback" not in err, err
    if run.returncode == 0:  # a fast machine had finished the command: all of its output, and no complaint
        assert "features" in out and err == "", err
    else:
        assert run.returncode == 130 and err.strip().count("\n") == 0 and "interrupted" in err, err


def test_a_closed_pipe_ends_quietly():
    run = _console("methods")
    run.stdout.close()  # the reader is gone before the first line: every write fails with EPIPE
    err = run.stderr.read()
    run.wait(timeout=300)
    assert err == "" and run.returncode == 0
