"""Property: whatever text a typed option of any command is given, the command either accepts it (and reaches its
work, which is stopped here before any model is loaded) or refuses it with one line and exit code 2; never a
traceback. Accepted numbers are in the range the option declares."""

from __future__ import annotations

import argparse
import contextlib
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from deepscope.cli import COMMANDS, build_parser, main
from deepscope.commands import common

#: arguments each command needs besides the option under test
BASE = {"layers": "{model}", "classify": "{model} {photos}", "filters": "{model}", "features": "{model} {photos}",
        "explain": "{model} {photos}", "neurons": "{model} {photos} --layer 0", "classviz": "{model} --classes 1",
        "dream": "{model} {photo} --layer 0", "evaluate": "{model} {photos}", "report": "--model {model} --images {photos}",
        "serve": "{model} {photos}"}
#: what an accepted value of each shared type must be
ACCEPTED = {
    common.positive_int: lambda v: isinstance(v, int) and 1 <= v <= common.MAX_COUNT,
    common.nonnegative_int: lambda v: isinstance(v, int) and 0 <= v <= common.MAX_COUNT,
    common.seed: lambda v: isinstance(v, int) and 0 <= v <= common.MAX_SEED,
    common.positive_float: lambda v: math.isfinite(v) and v > 0,
    common.int_list: lambda v: v and all(isinstance(x, int) and x >= 0 for x in v),
    common.device: lambda v: v in ("auto", "cpu", "mps") or v.startswith("cuda"),
    common.port: lambda v: isinstance(v, int) and 0 <= v <= 65535,
}


class Reached(Exception):
    """The command got past its checks to the work (loading the model)."""


def typed_options() -> list[tuple[str, str, object]]:
    """(command, option, type) for every option of every command that has a ``type=``."""
    commands = build_parser().get_default("commands")
    return [(command, action.option_strings[-1], action.type) for command in COMMANDS
            for action in commands[command]._actions if action.option_strings and action.type is not None]


OPTIONS = typed_options()

VALUES = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "-nan", "inf", "-inf", "1e309", "0x10", "1_000", "\u0663", "1,2", "0,0", "-0",
                     "+5", "2**63", "cuda", "cuda:0", "cpu", "meta", "mps", ",", "0,", "pca,tsne", "none", "x" * 300]),
    st.text(max_size=12),
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("property")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    with pytest.warns(FutureWarning):
        torch.jit.script(model).save(str(root / "tiny.pt"))
    (root / "photos" / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 50 * i, dtype=np.uint8)).save(root / "photos" / "a" / f"{i}.png")
    return {"model": str(root / "tiny.pt"), "photos": str(root / "photos"), "photo": str(root / "photos/a/0.png")}


def test_every_command_with_options_is_covered():
    assert {command for command, _, _ in OPTIONS} == set(BASE)
    assert len(OPTIONS) >= 40
    assert not [(c, o) for c, o, kind in OPTIONS if kind in (int, float)]  # bare int/float take -3, nan, inf


@pytest.mark.parametrize("command,option,kind", OPTIONS, ids=[f"{c} {o}" for c, o, _ in OPTIONS])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_any_value_is_accepted_or_refused_in_one_line(command, option, kind, value, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPSCOPE_CACHE", str(tmp_path / "cache"))
    seen: list[argparse.Namespace] = []

    def stop(args):
        seen.append(args)
        raise Reached

    for name in COMMANDS:  # each command module imported model_from_args by name
        module = __import__(f"deepscope.commands.{name}", fromlist=["run"])
        if hasattr(module, "model_from_args"):
            monkeypatch.setattr(module, "model_from_args", stop)
        elif hasattr(module, "images_from_args"):  # serve: its explorer loads the model, after the photos
            monkeypatch.setattr(module, "images_from_args", stop)
    argv = [command, *BASE[command].format(**inputs).split(), f"{option}={value}"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except Reached:
        parsed = getattr(seen[0], option.lstrip("-").replace("-", "_"))
        assert kind not in ACCEPTED or ACCEPTED[kind](parsed), (option, value, parsed)
        if isinstance(parsed, float):
            assert math.isfinite(parsed)
        return
    text = err.getvalue()
    assert code == 2, text
    assert text.count("\n") == 1 and "Traceback" not in text and ": error: " in text, text
