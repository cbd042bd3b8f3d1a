"""The catalogue: every method's options are declared and checked; every consumer builds methods through it;
no call leaves the process or the model changed."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import pytest
import torch

from conftest import assert_unchanged, model_fingerprint
from deepscope import catalogue
from deepscope.catalogue import METHODS, build_method, get_method, parse_method_options, parse_methods
from deepscope.errors import DeepscopeError
from deepscope.maps import Display, display_maps

#: a wrong value of the right name, for each option type
WRONG = {bool: "yes", int: 2.5, float: "fast", str: 3}


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", METHODS)
def test_a_misspelt_option_is_named_with_the_valid_ones(name, tiny_cnn):
    entry = get_method(name)
    for option in entry.options or [catalogue.Option("seed", int, 0, "")]:
        typo = option.name[:-1] + "x" + option.name[-1]  # windw-style slip: one letter wrong
        with pytest.raises(DeepscopeError) as error:
            build_method(name, tiny_cnn, **{typo: option.default})
        message = _one_line(error)
        assert f"unknown option {typo!r}" in message and name in message
        for valid in entry.options:
            assert valid.name in message


@pytest.mark.parametrize("name", METHODS)
def test_ill_typed_options_are_refused(name, tiny_cnn):
    for option in get_method(name).options:
        with pytest.raises(DeepscopeError) as error:
            build_method(name, tiny_cnn, **{option.name: WRONG[option.kind]})
        assert f"option {option.name} must be" in _one_line(error)
        if option.minimum is not None:
            with pytest.raises(DeepscopeError, match="at least"):
                build_method(name, tiny_cnn, **{option.name: option.kind(option.minimum - 1)})
        if option.maximum is not None:
            with pytest.raises(DeepscopeError, match="at most"):
                build_method(name, tiny_cnn, **{option.name: option.kind(option.maximum + 1)})


def test_options_mean_one_thing():
    layered = {name for name, entry in METHODS.items() if entry.accepts("layer")}
    assert layered == {"cam", "gradcam", "gradcam++", "scorecam", "layercam", "hirescam", "xgradcam", "eigencam",
                       "ablationcam", "guided-gradcam"}
    for entry in METHODS.values():  # a channel to explain is the library's neuron_layer, never a catalogue layer
        assert not entry.accepts("neuron_layer")
        layer = entry._by_name.get("layer")
        assert layer is None or "maps are weighted" in layer.meaning
    assert get_method("ig").offered(layer="features.3", batch_size=8, seed=1) == {"batch_size": 8}
    assert get_method("gradcam").offered(layer="features.3", batch_size=8) == {"layer": "features.3"}


def test_every_entry_builds_with_its_defaults_and_says_how_it_is_shown(tiny_cnn):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for name, entry in METHODS.items():
        method = build_method(name, tiny_cnn, **entry.defaults())
        assert isinstance(method.display, Display) and entry.cost in catalogue.COSTS
        shown = display_maps(method(x), method.display, (16, 16))
        assert shown.shape == (2, 16, 16) and shown.abs().max() <= 1
        assert (shown.min() >= 0) or method.display.signed, name


def test_option_values_are_parsed_by_type():
    parsed = parse_method_options(["ig.steps=16", "occlusion.incremental=false", "smoothgrad.noise=0.2",
                                   "scorecam.max_channels=none", "occlusion.baseline=blur"])
    assert parsed == {"ig": {"steps": 16}, "occlusion": {"incremental": False, "baseline": "blur"},
                      "smoothgrad": {"noise": 0.2}, "scorecam": {"max_channels": None}}
    for bad, expected in [("ig.steps=1", "at least 2"), ("ig.stesp=3", "unknown option 'stesp'"),
                          ("smoothgrad.noise=nan", "finite"), ("occlusion.baseline=grey", "one of zero"),
                          ("ig=3", "METHOD.OPTION=VALUE"), ("igg.steps=3", "unknown method 'igg'")]:
        with pytest.raises(DeepscopeError, match=expected):
            parse_method_options([bad])
    with pytest.raises(DeepscopeError, match="not among the chosen"):
        parse_method_options(["ig.steps=8"], ["gradient"])
    assert parse_methods("all") == list(METHODS) and parse_methods("ig, gradient,ig") == ["ig", "gradient"]


def _process_state() -> dict:
    """What no deepscope call may change in the process."""
    import numpy as np

    pyplot = sys.modules.get("matplotlib.pyplot")
    return {"rng": torch.get_rng_state(), "numpy rng": np.random.get_state()[1].copy(),
            "backend": matplotlib.rcParams._get_backend_or_none(), "figures": pyplot.get_fignums() if pyplot else [],
            "flush denormal": torch.tensor([1e-39]).mul(1.0).item() == 0.0, "grad": torch.is_grad_enabled(),
            "threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled()}


def _assert_same_state(before: dict, after: dict, what: str) -> None:
    assert torch.equal(before.pop("rng"), after.pop("rng")), f"{what} changed torch's global RNG"
    assert (before.pop("numpy rng") == after.pop("numpy rng")).all(), f"{what} changed numpy's global RNG"
    assert before == after, what


@pytest.mark.parametrize("name", METHODS)
def test_no_call_changes_the_process_or_the_model(name, tiny_cnn):
    from deepscope.render.attribution import attribution_panel

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before, model_before = _process_state(), model_fingerprint(tiny_cnn)
    method = build_method(name, tiny_cnn, **get_method(name).offered(batch_size=4))
    maps = method(x)
    attribution_panel(x[0], {name: maps[:1]}, {name: method.display})
    with pytest.raises(DeepscopeError):
        method(x, target=99) if not get_method(name).control else method(x[0])  # and after an error
    _assert_same_state(before, _process_state(), name)
    assert_unchanged(tiny_cnn, model_before)


def test_the_command_line_leaves_the_process_as_it_was(tmp_path, capsys):
    from deepscope.cli import main

    before = _process_state()
    assert main(["explain", "default", "--random-weights", "--method", "gradient,random", "--limit", "1",
                 "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["explain", "default", "--random-weights", "--method", "gradient", "--option", "gradient.absolut=1",
                 "--out", str(tmp_path / "b")]) == 2
    assert "unknown option 'absolut'" in capsys.readouterr().err
    _assert_same_state(before, _process_state(), "deepscope.cli.main")


def test_importing_deepscope_selects_no_matplotlib_backend():
    code = ("import matplotlib, deepscope.render.attribution, deepscope.render.report, deepscope.report.build, "
            "deepscope.commands.explain; print(matplotlib.rcParams._get_backend_or_none())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "None"


def test_evaluate_runs_every_method_with_a_cam_layer(tmp_path, capsys):
    from deepscope.cli import main

    out = tmp_path / "eval"
    argv = ["evaluate", "default", "--random-weights", "--methods", "all", "--layer", "blocks.5",
            "--images-per-class", "2", "--mosaics", "0", "--steps", "2", "--cascade-steps", "1",
            "--randomization-images", "1", "--option", "occlusion.window=112", "--option", "occlusion.stride=112",
            "--option", "scorecam.max_channels=4", "--option", "smoothgrad.n=2", "--option", "ig.steps=2",
            "--option", "vargrad.n=2", "--option", "gradientshap.n=2", "--option", "rise.n=8",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = {row.split(",")[0]: row for row in (out / "evaluation.csv").read_text().splitlines()[1:]}
    assert list(rows) == list(METHODS)
    assert "CAM needs global average pooling of layer 'blocks.5'" in rows.pop("cam")  # a row that says why
    assert all(row.split(",")[1] != "nan" for row in rows.values())  # every other method is scored


def test_explain_and_the_report_draw_the_same_map_the_same_way(tmp_path, monkeypatch):
    """Both paths call the one display function with the method's display: their arrays are equal."""
    import deepscope.maps
    import deepscope.render.attribution
    import deepscope.report.sections.saliency
    from deepscope.cli import main
    from deepscope.sample_images import builtin_images

    drawn: list[tuple[Display, torch.Tensor]] = []

    def recording(maps, display=Display(), size=None):
        shown = deepscope.maps.display_maps(maps, display, size)
        drawn.append((display, shown.detach().clone()))
        return shown

    monkeypatch.setattr(deepscope.render.attribution, "display_maps", recording)
    monkeypatch.setattr(deepscope.report.sections.saliency, "display_maps", recording)
    monkeypatch.setattr(deepscope.report.sections.saliency, "gallery_methods", lambda: ["ig"])
    photo = builtin_images().paths[0]
    assert main(["explain", "default", str(photo), "--method", "ig", "--option", "ig.steps=16",
                 "--out", str(tmp_path / "explain"), "--quiet"]) == 0
    from_explain = drawn[0]  # the panel's call (the grid draws it again)
    drawn.clear()
    assert main(["report", "--images", str(photo), "--sections", "saliency", "--no-cache",
                 "--out", str(tmp_path / "report"), "--quiet"]) == 0
    from_report = drawn[0]
    assert from_explain[0] == from_report[0] == Display("sum", signed=True)
    assert from_report[1].shape == from_explain[1].shape == (1, 224, 224)
    torch.testing.assert_close(from_report[1], from_explain[1], rtol=0, atol=1e-6)
    assert from_report[1].min() < 0 < from_report[1].max()  # signed, as Integrated Gradients' sum is
