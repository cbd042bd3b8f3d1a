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
