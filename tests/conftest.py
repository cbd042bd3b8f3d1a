"""Shared fixtures: the reference data, tiny models, and proof that a model was left unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from deepscope.cli import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]

# The test process is the suite's own: like the console script, it has glibc keep freed memory for reuse
# (CPU passes several times faster on the development machine; see deepscope.cli.keep_freed_memory).
keep_freed_memory()


def data_dir() -> Path:
    """``$DEEPSCOPE_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DEEPSCOPE_DATA", REPO.parent / "shared" / "data")).resolve()


def require(path: Path) -> Path:
    """``path`` if it exists; otherwise fail under CI (missing reference data is an error there) or skip."""
    if not path.exists():
        message = f"reference data missing: {path} (set DEEPSCOPE_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def data() -> Path:
    return require(data_dir())


@pytest.fixture(scope="session")
def in20(data) -> Path:
    return require(data / "in20")


@pytest.fixture(scope="session")
def reference_tflite(data) -> Path:
    return require(data / "models" / "coral" / "mobilenet_v2_1.0_224_quant.tflite")


@pytest.fixture(scope="session")
def mobilenet_v2_import(reference_tflite):
    """The imported reference MobileNet-V2 (LoadedModel), shared by the session: never modify it."""
    from deepscope.models.zoo import load_model

    return load_model(str(reference_tflite))


def model_fingerprint(model: nn.Module) -> dict:
    """Everything a deepscope call must leave as it was: weights, flags, module types, hooks."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "types": [type(m) for m in model.modules()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = model_fingerprint(model)
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), f"weight {key} changed"
    for field in ("training", "requires_grad", "types", "inplace", "hooks"):
        assert before[field] == after[field], f"{field} changed"


@pytest.fixture
def tiny_cnn() -> nn.Module:
    """A small ReLU CNN with a GAP + linear head, in training mode with mixed requires_grad."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    model.train()
    model[0].weight.requires_grad_(False)
    return model


@pytest.fixture
def tiny_loaded(tiny_cnn):
    """:func:`tiny_cnn` as a LoadedModel: 32-pixel input, five generic classes."""
    from deepscope.models.classes import ClassList
    from deepscope.models.preprocess import Preprocess
    from deepscope.models.zoo import LoadedModel

    return LoadedModel(tiny_cnn, Preprocess(32, 36), ClassList.generic(5), "tiny", "test")
