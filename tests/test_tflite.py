"""Tests of deepscope.models.tflite: importing TFLite classifiers into PyTorch.

The tests that need the reference data (TFLite files, in20 photos) find it through
``DEEPSCOPE_DATA`` (default ``../shared/data`` beside the repository). Missing data
skips them locally and fails them in CI (``CI=true``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deepscope.models.tflite import (
    Block,
    Conv2dSame,
    TFLiteImport,
    load_tflite,
    logits_tensor_index,
    same_padding,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "mobilenet_v2_1.0_224_quant.tflite"
FILES = {
    "mobilenet_v2_1.0_224_quant.tflite": 224,
    "tf2_mobilenet_v2_1.0_224_ptq.tflite": 224,
    "mobilenet_v1_0.25_128_quant.tflite": 128,
    "mobilenet_v1_0.5_160_quant.tflite": 160,
    "mobilenet_v1_0.75_192_quant.tflite": 192,
}


def _unavailable(message: str) -> None:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    root = Path(os.environ.get("DEEPSCOPE_DATA", REPO.parent / "shared" / "data"))
    needed = [root / "models" / "coral" / f for f in FILES]
    needed += [root / "in20", root / "imagenet" / "synset_words.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        _unavailable(f"reference data missing (set DEEPSCOPE_DATA): {missing}")
    return root


@pytest.fixture(scope="module")
def interpreter_cls():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        _unavailable(f"ai_edge_litert is not installed: {err}")
    return Interpreter


@pytest.fixture(scope="module")
def reference(data_dir: Path) -> TFLiteImport:
    torch.set_num_threads(1)
    return load_tflite(data_dir / "models" / "coral" / REFERENCE)


def _photos(data_dir: Path, n: int) -> list[tuple[Path, int]]:
    """n photos, one per class in turn, with their ImageNet indices."""
    lines = (data_dir / "imagenet" / "synset_words.txt").read_text().splitlines()
    index = {line.split()[0]: i for i, line in enumerate(lines)}
    per_class = [sorted(d.glob("*.JPEG")) for d in sorted((data_dir / "in20").iterdir()) if d.is_dir()]
    photos = [(c[rank], index[c[rank].parent.name])
              for rank in range(max(map(len, per_class))) for c in per_class if rank < len(c)]
    return photos[:n]


def _crop(path: Path, size: int) -> np.ndarray:
    """uint8 HWC crop: shorter side round(size / 0.875), bilinear, centre crop."""
    img = Image.open(path).convert("RGB")
    short = round(size / 0.875)
    w, h = img.size  # as torchvision's Resize(short)
    img = img.resize((short, int(short * h / w)) if w <= h else (int(short * w / h), short),
                     Image.BILINEAR)
    left, top = (int(round((s - size) / 2.0)) for s in img.size)
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    """NCHW float batch normalised with (x / 255 - 0.5) / 0.5."""
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


# --- (1) TF 'SAME' padding -------------------------------------------------------


def test_same_padding_values():
    assert same_padding(4, 3, 2) == (0, 1)  # even input, stride 2: asymmetric
    assert same_padding(5, 3, 2) == (1, 1)
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(7, 1, 1) == (0, 0)
    assert same_padding(8, 3, 1, dilation=2) == (2, 2)


def test_conv2d_same_matches_manual_asymmetric_padding():
    torch.manual_seed(0)
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    assert isinstance(conv, nn.Conv2d)
    assert conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.padding == (0, 0)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(9.0).reshape(1, 1, 3, 3))
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF pads (left, right, top, bottom) = (0, 1, 0, 1): output pixel (i, j) sums
    # the 3x3 window starting at (2i, 2j) of the zero-extended 5x5 input.
    padded = np.zeros((5, 5))
    padded[:4, :4] = x[0, 0].numpy()
    w = np.arange(9.0).reshape(3, 3)
    expected = np.array([[np.sum(padded[2 * i:2 * i + 3, 2 * j:2 * j + 3] * w) for j in range(2)]
                         for i in range(2)])
    out = conv(x)
    assert out.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(out[0, 0].detach().numpy(), expected)
    assert conv.pad_amounts(4, 4) == (0, 1, 0, 1)
    assert not torch.allclose(out, F.conv2d(x, conv.weight, stride=2, padding=1))


def test_conv2d_same_odd_input_and_stride_one():
    torch.manual_seed(0)
    conv = Conv2dSame(2, 4, 3, stride=2)
    x = torch.randn(1, 2, 5, 5)  # odd: TF pads (1, 1) like PyTorch padding=1
    ref = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(conv(x), ref)
    conv1 = Conv2dSame(2, 2, 3, stride=1, groups=2)
    assert conv1.padding == (1, 1)
    torch.testing.assert_close(conv1(x), F.conv2d(x, conv1.weight, conv1.bias, padding=1, groups=2))


# --- (2) the reference file against the TFLite interpreter ------------------------


@pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors:UserWarning")
def test_reference_agrees_with_interpreter(data_dir, reference, interpreter_cls):
    path = data_dir / "models" / "coral" / REFERENCE
    photos = _photos(data_dir, 16)
    crops = [_crop(p, reference.input_size) for p, _ in photos]
    with torch.no_grad():
        ours = reference.model(_to_tensor(crops)).numpy()

    interp = interpreter_cls(model_path=str(path), num_threads=1,
                             experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    assert inp["dtype"] == np.uint8
    logits_index = logits_tensor_index(path)
    scale, zero_point = next(d["quantization"] for d in interp.get_tensor_details()
                             if d["index"] == logits_index)
    theirs = []
    for crop in crops:  # the uint8 pixels are the file's native input: (p - 128) / 128
        interp.set_tensor(inp["index"], crop[None])
        interp.invoke()
        q = interp.get_tensor(logits_index).reshape(-1).astype(np.float32)
        theirs.append(((q - zero_point) * scale)[1:])  # drop background
    theirs = np.stack(theirs)

    assert ours.shape == theirs.shape == (16, 1000)
    agree = int((ours.argmax(1) == theirs.argmax(1)).sum())
    assert agree >= 15, f"top-1 agrees on {agree}/16 photos"
    pearson = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
    assert pearson > 0.99, f"Pearson correlation of logits {pearson:.4f}"
    labels = np.array([c for _, c in photos])
    assert (ours.argmax(1) == labels).sum() >= 8  # a sanity floor (69% expected)


# --- (3) every file imports and runs ----------------------------------------------


@pytest.mark.parametrize("filename", list(FILES))
def test_all_files_import_and_run(data_dir, filename):
    torch.set_num_threads(1)
    imp = load_tflite(data_dir / "models" / "coral" / filename)
    assert imp.input_size == FILES[filename]
    assert imp.name == filename.removesuffix(".tflite")
    assert all(abs(m - 0.5) < 0.01 for m in imp.mean) and all(abs(s - 0.5) < 0.01 for s in imp.std)
    assert not imp.model.training
    assert all(p.dtype == torch.float32 for p in imp.model.parameters())
    photo, _ = _photos(data_dir, 1)[0]
    with torch.no_grad():
        out = imp.model(_to_tensor([_crop(photo, imp.input_size)]))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


# --- (4) module structure and names -----------------------------------------------


def test_named_modules(reference):
    model = reference.model
    modules = dict(model.named_modules())
    linears = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].out_features == 1000 and linears[0].in_features == 1280
    assert [n for n, _ in model.classifier.named_children()] == ["pool", "flatten", "fc"]
    assert isinstance(model.classifier.pool, nn.AdaptiveAvgPool2d)
    assert [n for n, _ in model.named_children()] == ["features", "classifier"]
    assert len(model.features) == 19  # torchvision numbering: stem, 17 blocks, last conv
    assert all(isinstance(b, Block) for b in model.features)
    assert model.features[0].tf_scope == "Conv" and model.features[18].tf_scope == "Conv_1"
    for name in ("features.0.conv.conv", "features.0.conv.act", "features.1.depthwise.conv",
                 "features.1.project.conv", "features.2.expand.conv", "features.2.expand.act",
                 "features.2.depthwise.conv", "features.2.project.conv", "features.18.conv.conv",
                 "classifier.fc"):
        assert name in modules, name
    residual = [i for i, b in enumerate(model.features) if b.residual]
    assert residual == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh))]
    assert len(acts) == 35 and all(type(m) is nn.ReLU6 and not m.inplace for m in acts)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 52 and all(isinstance(c, Conv2dSame) for c in convs)
    assert modules["features.2.depthwise.conv"].groups == 96
    assert modules["features.2.depthwise.conv"].stride == (2, 2)


def test_block_hook_sees_residual_output(reference):
    block = reference.model.features[3]
    captured = {}
    block.register_forward_hook(lambda m, i, o: captured.update(inp=i[0], out=o))
    try:
        with torch.no_grad():
            reference.model(torch.zeros(1, 3, 224, 224))
            inner = block.project(block.depthwise(block.expand(captured["inp"])))
    finally:
        block._forward_hooks.clear()
    torch.testing.assert_close(captured["out"], captured["inp"] + inner)


def test_gradients_deepcopy_and_other_sizes(reference):
    model = copy.deepcopy(reference.model)
    x = torch.randn(1, 3, 224, 224, requires_grad=True)
    model(x)[0, 207].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert model(torch.randn(2, 3, 161, 193)).shape == (2, 1000)
        y = torch.randn(1, 3, 224, 224)
        torch.testing.assert_close(model(y), reference.model(y))


# --- (5) bad files -----------------------------------------------------------------


def test_corrupt_file_raises_value_error(tmp_path):
    bad = tmp_path / "corrupt_model.tflite"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="corrupt_model.tflite"):
        load_tflite(bad)


def test_truncated_file_raises_value_error(data_dir, tmp_path):
    data = (data_dir / "models" / "coral" / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(data[:2000])
    with pytest.raises(ValueError, match="truncated.tflite"):
        load_tflite(bad)


def test_unsupported_op_is_named(data_dir, tmp_path):
    import tflite

    data = bytearray((data_dir / "models" / "coral" / "mobilenet_v1_0.25_128_quant.tflite").read_bytes())
    model = tflite.Model.GetRootAsModel(data, 0)
    for j in range(model.OperatorCodesLength()):  # turn DEPTHWISE_CONV_2D (4) into MUL (18)
        code = model.OperatorCodes(j)
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == 4:
            tab = code._tab
            for slot in (4, 10):  # deprecated_builtin_code (int8), builtin_code (int32)
                offset = tab.Offset(slot)
                if offset:  # little-endian: the low byte holds the code
                    data[tab.Pos + offset] = 18
    bad = tmp_path / "patched.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"patched\.tflite.*MUL"):
        load_tflite(bad)
