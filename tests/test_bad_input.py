"""Bad input on the command line: every case is refused with exit code 2, exactly one line on stderr (no
traceback), and no file written or changed.

The cases cover every command and every method of the catalogue: options out of range or of the wrong type,
argparse's own errors, output locations that cannot be used, results that exist already, model files that
cannot be loaded (pickles, mismatched checkpoints, TorchScript models that refuse hooks), ambiguous class
names and folders of unreadable images. Validation comes first, so most cases never load a model; those that
need one use tiny TorchScript files written here, or a torchvision architecture with random weights.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deepscope.catalogue import METHODS
from deepscope.cli import COMMANDS, main

#: commands that read IMAGES, and those that write into --out
IMAGE_COMMANDS = ("classify", "features", "explain", "neurons", "evaluate")
OUT_COMMANDS = {  # the arguments each needs besides --out
    "filters": "{tiny5}", "features": "{tiny5} {photos}", "explain": "{tiny5} {photos}",
    "neurons": "{tiny5} {photos} --layer 0", "classviz": "{tiny5} --classes 1", "dream": "{tiny5} {photo} --layer 0",
    "evaluate": "{tiny5} {photos}", "report": "--model {tiny5} --images {photos}",
}
#: what each command needs to get past its required arguments
BASE = {"models": "", "methods": "", "layers": "{tiny5}", "classify": "{tiny5} {photos}", **OUT_COMMANDS}
#: a value of the wrong kind for each option type of the catalogue
WRONG = {bool: "maybe", int: "1.5", float: "nan", str: None}


def tiny_cnn(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Models, photos and broken files, written once for the module."""
    root = tmp_path_factory.mktemp("inputs")
    with pytest.warns(FutureWarning):  # torch.jit's deprecation notice
        torch.jit.script(tiny_cnn(5)).save(str(root / "tiny5.pt"))
        torch.jit.script(tiny_cnn(1000)).save(str(root / "tiny1000.pt"))
    torch.save(tiny_cnn(10), root / "pickled.pth")                   # a whole module: a pickle
    torch.save(tiny_cnn(10).state_dict(), root / "state.pth")         # fits no torchvision architecture
    torch.save({"epoch": 3, "lr": 0.1}, root / "notensors.pth")
    torch.save([1, 2, 3], root / "list.pth")
    (root / "garbage.pt").write_bytes(b"not a model")
    (root / "garbage.tflite").write_bytes(b"not a flatbuffer")
    for c, folder in enumerate(("tench", "n01514859")):
        (root / "photos" / folder).mkdir(parents=True)
        for i in range(2):
            pixels = np.random.default_rng(10 * c + i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "photos" / folder / f"{i}.png")
    (root / "broken").mkdir()
    (root / "broken" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "broken" / "b.png").write_bytes(b"")
    (root / "afile").write_text("a file, not a folder")
    done = root / "done"  # results of an earlier run
    done.mkdir()
    for name in ("report.html", "evaluation.csv", "features.npz", "preds.json", "classviz_lucid.json",
                 "grid.png", "neurons_0.png", "dream_0_0.png"):
        (done / name).write_text("earlier result")
    files = {"tiny5": "tiny5.pt", "tiny1000": "tiny1000.pt", "pickled": "pickled.pth", "state": "state.pth",
             "notensors": "notensors.pth", "list": "list.pth", "garbage": "garbage.pt",
             "garbage_tflite": "garbage.tflite", "photos": "photos", "broken": "broken", "afile": "afile",
             "done": "done", "photo": "photos/tench/0.png", "root": "."}
    return {key: str((root / name).resolve()) for key, name in files.items()}


def case(argv: str, expect: str = "", *, forbid: str = "", id: str | None = None):
    return pytest.param(argv, expect, forbid, id=id or argv[:90])


def parse_cases():
    """Options refused when they are parsed, for every command."""
    bad_ints = {"positive": ["0", "-3", "1.5", "x", "9" * 30], "nonnegative": ["-1", "two"]}
    options = {  # command -> (option, kind)
        "classify": [("--top", "positive"), ("--show", "nonnegative"), ("--batch-size", "positive")],
        "layers": [("--depth", "positive")],
        "filters": [("--max-filters", "positive"), ("--max-inputs", "positive")],
        "features": [("--knn", "positive"), ("--queries", "positive"), ("--pixel-size", "positive"),
                     ("--thumbnails", "nonnegative")],
        "explain": [("--limit", "positive")],
        "neurons": [("--top", "positive")],
        "classviz": [("--steps", "positive")],
        "dream": [("--octaves", "positive"), ("--steps", "positive"), ("--jitter", "nonnegative")],
        "evaluate": [("--images-per-class", "positive"), ("--mosaics", "nonnegative"), ("--steps", "positive"),
                     ("--cascade-steps", "positive"), ("--randomization-images", "positive")],
        "report": [("--per-class", "positive"), ("--max-images", "positive"), ("--steps", "positive")],
    }
    for command, listed in options.items():
        for option, kind in listed:
            for value in bad_ints[kind][:2] if command not in ("classify", "evaluate") else bad_ints[kind]:
                yield case(f"{command} {BASE[command]} {option}={value}", f"argument {option}")
    for command in ("explain", "classviz", "dream", "evaluate", "report"):
        for value in ("-1", "2**64", "1e3"):
            yield case(f"{command} {BASE[command]} --seed={value}", "argument --seed")
    for value in ("nan", "inf", "0", "-0.5", "fast"):
        yield case(f"dream {BASE['dream']} --lr={value}", "argument --lr: expected a number > 0")
        yield case(f"classviz {BASE['classviz']} --lr={value}", "argument --lr")
    for value in ("1", "0.5", "nan", "-inf"):
        yield case(f"dream {BASE['dream']} --octave-scale={value}", "argument --octave-scale: expected a number > 1")
    for command in ("classify", "layers", "filters", "features", "explain", "neurons", "classviz", "dream",
                    "evaluate", "report"):
        yield case(f"{command} {BASE[command]} --device meta", "--device")
    for value in ("banana", "cpu:3", "cuda:99", "", "CPU"):
        yield case(f"classify {BASE['classify']} --device={value}", "argument --device")
    for value in ("-1", "a", ",", "1,,x"):
        yield case(f"neurons {BASE['neurons']} --channels={value}", "argument --channels")
    for value in ("1", "1,2,3", "-1,0", "y,x"):
        yield case(f"neurons {BASE['neurons']} --neuron={value}", "argument --neuron")
    yield case("classify {tiny5} {photos} --output preds.txt", "use a file name ending in .csv or .json")
    yield case("classify {tiny5} {photos} --output preds", ".csv or .json")
    for value in ("bogus", "pca,xyz", "pca,"):
        if value != "pca,":
            yield case(f"features {BASE['features']} --project={value}", "argument --project")
    yield case("features {tiny5} {photos} --metric manhattan", "invalid choice")
    yield case("filters {tiny5} --normalize everything", "invalid choice")
    yield case("classviz {tiny5} --classes 1 --preset dali", "invalid choice")
    for value in ("", ",", " , "):
        yield case(f"classviz {{tiny5}} --classes={value!r}", "argument --classes")
    for value in ("bogus", "model,bogus", ",", ""):
        yield case(f"report --sections={value!r}", "argument --sections")


def argparse_cases():
    """argparse's own errors, on one line."""
    yield case("", "name a command", id="no command")
    yield case("bogus", "invalid choice")
    yield case("--bogus", "unrecognized arguments")
    yield case("classify --top", "expected one argument")
    yield case("features --q 3", "ambiguous option")
    yield case("classify {tiny5} {photos} extra", "unrecognized arguments: extra")
    yield case("classviz {tiny5}", "the following arguments are required: --classes")
    yield case("dream", "the following arguments are required")
    yield case("neurons {tiny5} {photos}", "required: --layer")
    yield case("models extra", "unrecognized arguments: extra")
    yield case("models --verbose", "unrecognized arguments: --verbose")
    yield case("methods bogus", "unknown method 'bogus'")
    yield case("methods gradcam guidded", "unknown method 'guidded'")
    yield case("--version=3", "ignored explicit argument")
    yield case("classify --help=yes", "ignored explicit argument")


def catalogue_cases():
    """Every method of the catalogue: a misspelt name, an unknown option, each option ill-typed or too small,
    and an option for a method that is not chosen."""
    for name, entry in METHODS.items():
        yield case(f"explain {{tiny5}} {{photos}} --method {name}x", "unknown method", id=f"explain {name}x")
        yield case(f"explain {{tiny5}} {{photos}} --method {name} --option {name}.bogus=1", "unknown option 'bogus'",
                   id=f"explain {name}.bogus")
        yield case(f"evaluate {{tiny5}} {{photos}} --methods {name} --option {name}.bogus=1", "unknown option",
                   id=f"evaluate {name}.bogus")
        other = "random" if name != "random" else "center"
        yield case(f"explain {{tiny5}} {{photos}} --method {other} --option {name}.x=1", "not among the chosen",
                   id=f"explain {name} not chosen")
        for option in entry.options:
            wrong = "bogus" if option.choices else WRONG[option.kind]
            if wrong is not None:
                yield case(f"explain {{tiny5}} {{photos}} --method {name} --option {name}.{option.name}={wrong}",
                           f"option {option.name} must be", id=f"explain {name}.{option.name}={wrong}")
            if option.minimum is not None:
                low = option.kind(option.minimum - 1)
                yield case(f"report --option {name}.{option.name}={low}", "at least",
                           id=f"report {name}.{option.name}={low}")
    yield case("explain {tiny5} {photos} --method gradient --option gradient", "write METHOD.OPTION=VALUE")
    yield case("explain {tiny5} {photos} --method ,", "--method is empty")
    yield case("evaluate {tiny5} {photos} --methods ''", "--methods is empty")


def location_cases():
    """Output locations that cannot be used and results that exist, found before any model is loaded."""
    for command, needs in OUT_COMMANDS.items():
        yield case(f"{command} {needs} --out {{afile}}", "is a file, not a folder", id=f"{command} --out a file")
        yield case(f"{command} {needs} --out {{afile}}/sub", "is a file, not a folder",
                   id=f"{command} --out under a file")
        yield case(f"{command} {needs} --out {'x' * 300}", "bytes long", id=f"{command} --out name too long")
    yield case("classify {tiny5} {photos} --output {afile}/p.json", "is a file, not a folder")
    yield case("classify {tiny5} {photos} --output {root}/photos.json/../photos", ".csv or .json")
    yield case("classify {tiny5} {photos} --output /proc/deepscope-test/p.json", "cannot write")
    yield case("features {tiny5} {photos} --out /proc/deepscope-test", "cannot write")
    yield case("report --model {tiny5} --images {photos} --out /sys/deepscope-test", "cannot write")
    yield case("classify {tiny5} {photos} --output {done}/preds.json", "already exists; pass --force")
    yield case("report --model {tiny5} --images {photos} --out {done}", "already exists; pass --force")
    yield case("evaluate {tiny5} {photos} --out {done}", "already exists")
    yield case("features {tiny5} {photos} --out {done}", "already exists")
    yield case("classviz {tiny5} --classes 1 --out {done}", "already exists")
    yield case("explain {tiny5} {photos} --limit 1 --out {done}", "already exists")
    yield case("dream {tiny5} {photo} --layer 0 --out {done}", "already exists")
    yield case("neurons {tiny5} {photos} --layer 0 --out {done}", "already exists")
    for command in IMAGE_COMMANDS:
        yield case(f"{command} {{tiny5}} {{root}}/nowhere", "no such file or folder", id=f"{command} no images")
    yield case("report --images {root}/nowhere", "no such file or folder")
    yield case("dream {tiny5} {root}/nowhere.jpg --layer 0", "no such file or folder")
    yield case("dream {tiny5} {broken}/a.jpg --layer 0", "a.jpg")
    yield case("explain {tiny5} {broken}", "can be read")


def model_cases():
    """Model files and specs that cannot be used, and what a model refuses (these load a tiny model)."""
    for spec in ("{pickled}", "resnet18@{pickled}"):
        yield case(f"layers {spec}", "", forbid="weights_only", id=f"layers {spec} (pickle)")
    yield case("layers mobilenet_v3_small@{state}", "do not fit 'mobilenet_v3_small'")
    yield case("layers mobilenet_v3_small@{notensors}", "not tensors")
    yield case("layers mobilenet_v3_small@{list}", "expected a state_dict")
    yield case("layers mobilenet_v3_small@{root}/missing.pth", "no such checkpoint file")
    yield case("layers {garbage}", "not a TorchScript file")
    yield case("layers {root}/missing.pt", "no such file")
    yield case("layers {garbage_tflite}", "garbage.tflite")
    yield case("classify {garbage_tflite} {photos} --random-weights", "carries its own weights")
    yield case("classify {tiny5} {photos} --random-weights", "carries its own weights")
    long = "x" * 300  # longer than a file name may be: stat() raises ENAMETOOLONG
    for spec in (long, f"{long}.pt", f"{long}.tflite", f"resnet18@{long}.pth"):
        yield case(f"layers {spec}", "xxx", id=f"layers (name too long{spec[300:]})")
    yield case(f"classify {{tiny5}} {long}", "argument IMAGES", id="classify (IMAGES name too long)")
    yield case("classify resnet18@{state} {photos} --random-weights", "carries its own weights")
    yield case("layers resnet-18", "Did you mean")
    yield case("layers timm:no_such_model", "unknown timm model")
    yield case("layers ''", "unknown model")
    yield case("layers {ESC}[2Jevil.pt", "\\x1b[2Jevil.pt: no such file", forbid="\x1b")
    yield case("layers {tiny5}", "TorchScript")
    yield case("features {tiny5} {photos} --knn 1", "TorchScript")
    yield case("features {tiny5} {photos} --knn 1 --layer 0", "TorchScript")
    yield case("neurons {tiny5} {photos} --layer 0", "TorchScript")
    yield case("filters {tiny5}", "TorchScript")
    yield case("dream {tiny5} {photo} --layer 0", "TorchScript")
    for name, entry in METHODS.items():
        if entry.accepts("layer") or name == "guided":
            yield case(f"explain {{tiny5}} {{photos}} --method {name}", "TorchScript", id=f"explain {name} TorchScript")
    for name in ("crane", "cardigan", "maillot"):
        yield case(f"explain {{tiny1000}} {{photos}} --target {name}", "is ambiguous", id=f"explain --target {name}")
        yield case(f"classviz {{tiny1000}} --classes {name}", "is ambiguous", id=f"classviz --classes {name}")
    yield case("classviz {tiny1000} --classes flamingo,nosuchbird", "unknown class 'nosuchbird'")
    yield case("classviz {tiny5} --classes 5", "out of range")
    yield case("explain {tiny5} {photos} --target 7", "out of range")
    yield case("explain {tiny5} {photos} --target -1", "out of range")
    yield case("explain {tiny5} {photos} --method gradient --layer 0", "none of the chosen methods")
    yield case("evaluate {tiny5} {photos} --layer 0", "takes a layer")
    yield case("evaluate {tiny5} {photos} --steps 60000", "one step per pixel")
    yield case("evaluate {tiny5} {broken}", "can be read")
    yield case("report --model {tiny5} --images {broken} --sections model --no-cache --quiet", "can be read")
    yield case("features {tiny5} {photos} --knn 4", "fewer neighbours")
    yield case("features {tiny5} {photos} --knn 1 --pixel-size 500", "--pixel-size 500")
    yield case("features {tiny5} {photos} --knn 1 --query {root}/elsewhere.png", "not an image of")
    yield case("features mobilenet_v3_small {broken} --random-weights --knn 1 --project none --no-cache --quiet",
               "could be read")
    yield case("neurons {tiny5} {broken} --layer 0", "TorchScript")
    yield case("neurons mobilenet_v3_small {photos} --random-weights --layer features.1 --channels 999 --quiet",
               "out of range")
    yield case("neurons mobilenet_v3_small {photos} --random-weights --layer features.1 --neuron 999,0 --quiet",
               "outside")
    yield case("neurons mobilenet_v3_small {photos} --random-weights --layer bogus", "has no layer 'bogus'")
    yield case("explain mobilenet_v3_small {photos} --random-weights --method gradcam --layer bogus", "no layer")
    yield case("filters mobilenet_v3_small --random-weights --layer features.0.2", "not a convolution")
    yield case("dream mobilenet_v3_small {photo} --random-weights --layer bogus", "no layer 'bogus'")


def serve_cases():
    """The explorer's command: checked before it loads a model or opens a port."""
    for value in ("70000", "-1", "http", "8000.5"):
        yield case(f"serve {{tiny5}} {{photos}} --port {value}", "argument --port")
    for value in ("0", "-5", "lots"):
        yield case(f"serve {{tiny5}} {{photos}} --cache-mb={value}", "argument --cache-mb")
    yield case("serve {tiny5} {root}/missing", "no such file or folder")
    yield case("serve {tiny5} --store {root}/missing", "--store")
    yield case("serve {tiny5} --store {afile}", "--store")


CASES = [*parse_cases(), *argparse_cases(), *catalogue_cases(), *location_cases(), *model_cases(), *serve_cases()]


def test_the_suite_covers_every_command_and_method():
    text = " ".join(str(c.values[0]) for c in CASES)
    assert len(CASES) >= 150
    for command in COMMANDS:
        assert any(str(c.values[0]).split(" ")[0] == command for c in CASES), command
    for name in METHODS:
        assert f"--method {name} " in text or f"--method {name}x" in text


def snapshot(*roots: Path) -> dict[Path, tuple]:
    """Every folder under ``roots``, and every file with its size and modification time."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            info = path.stat()
            found[path] = "folder" if path.is_dir() else (info.st_size, info.st_mtime_ns)
    return found


@pytest.mark.parametrize("argv,expect,forbid", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, expect, forbid, files, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.chdir(tmp_path)  # default output folders land here
    monkeypatch.setenv("DEEPSCOPE_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    words = [word.replace("{ESC}", "\x1b") for word in shlex.split(argv.format(**files, ESC="{ESC}"))]
    before = snapshot(tmp_path, Path(files["root"]))
    code = main(words)
    out, err = capsys.readouterr()
    lines = err.strip("\n").split("\n")
    assert code == 2, (out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("deepscope") and ": error: " in lines[0], err
    assert expect.lower() in lines[0].lower(), err
    assert not forbid or forbid not in err, err
    assert "wrote" not in out, out
    assert snapshot(tmp_path, Path(files["root"])) == before, "a file was written or changed"
