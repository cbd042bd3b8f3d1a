"""Import a TensorFlow Lite image classifier as an equivalent float PyTorch model.

:func:`load_tflite` reads a ``.tflite`` flatbuffer with the PyPI reader ``tflite``
(no interpreter is involved), dequantises every weight and bias, and rebuilds the
network from ordinary PyTorch modules, so that gradients, hooks, ``copy.deepcopy``
and the rest of deepscope work on it as on any torchvision model.

What the import does
--------------------
* Weights: uint8 asymmetric per-tensor and int8 symmetric per-channel weights
  (``quantized_dimension``) become ``(q - zero_point) * scale``; int32 biases become
  ``q * scale`` with the scale stored in the file (input scale x weight scale).
  Batch norm is already folded into these biases by the converter.
  Float32 weights and float16 weights behind a ``DEQUANTIZE`` op are read as they are.
* Layouts: TF ``OHWI`` convolution kernels become PyTorch ``OIHW``; ``1HWO``
  depthwise kernels become ``(O, 1, H, W)`` with ``groups = in_channels``.
* Padding: TensorFlow ``'SAME'`` padding is reproduced exactly by :class:`Conv2dSame`,
  including the asymmetric case (one more pixel after than before) and for any input
  size, since the padding is computed from the actual input at forward time.
* Activations fused into a TFLite op (``RELU``, ``RELU6``) become separate,
  non-inplace ``nn.ReLU`` / ``nn.ReLU6`` modules after the convolution.
* Activation ``QUANTIZE`` / ``DEQUANTIZE`` ops are skipped (the float model needs
  none), the final ``SOFTMAX`` is dropped (the model outputs logits), and a 1001-way
  output loses its first row (the ``background`` class) to give the 1000 ImageNet
  classes in the usual order.
* Supported ops: ``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``ADD`` (residual connections),
  ``PAD``, ``RELU``, ``RELU6``, ``AVERAGE_POOL_2D`` / ``MAX_POOL_2D`` (``VALID``
  inside the network; a global ``AVERAGE_POOL_2D`` or a spatial ``MEAN`` as the
  head), ``FULLY_CONNECTED`` or a 1x1 ``CONV_2D`` as the logits layer,
  ``RESHAPE`` / ``SQUEEZE`` in the head, ``SOFTMAX``, ``QUANTIZE``, ``DEQUANTIZE``.
  The graph must be a chain of layers with residual ``ADD``s, ending in global
  average pooling and one linear layer (MobileNet V1/V2, EfficientNet-Lite style).
  Anything else raises ``ValueError`` naming the file and the op.

Layer naming
------------
The model is a :class:`TFLiteNet` with two children:

* ``features``: an ``nn.Sequential`` of :class:`Block` modules numbered ``0, 1, ...``.
  Blocks follow the TensorFlow name scopes found in the weight tensor names (with the
  model prefix such as ``MobilenetV2/`` removed), so for the MobileNet-V2 files the
  numbering matches torchvision's ``mobilenet_v2``: ``features.0`` is the stem
  convolution (TF scope ``Conv``), ``features.1`` ... ``features.17`` are the
  inverted-residual blocks (``expanded_conv`` ... ``expanded_conv_16``) and
  ``features.18`` is the last 1x1 convolution (``Conv_1``). For MobileNet-V1,
  ``features.0`` is ``Conv2d_0`` and ``features.k`` holds ``Conv2d_k_depthwise`` and
  ``Conv2d_k_pointwise``. A block with a residual ``ADD`` adds its input to the output
  of its last layer, so a hook on a block always sees the block's output.
  Each block's TF scope is kept in its ``tf_scope`` attribute.
* Inside a block, each layer is an ``nn.Sequential`` named after its role in the TF
  scope (``expand``, ``depthwise``, ``project``, ``pointwise``; ``conv`` when the
  scope names no role) holding ``conv`` (an ``nn.Conv2d``, :class:`Conv2dSame` for
  ``'SAME'`` padding) and, when the TFLite op had a fused activation, ``act``
  (``nn.ReLU6`` or ``nn.ReLU``). Example: ``features.2.expand.conv``,
  ``features.2.expand.act``, ``features.2.depthwise.conv``, ``features.2.project.conv``.
* ``classifier``: ``nn.Sequential(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
  fc=nn.Linear(C, 1000))``; the input of ``classifier.fc`` is the pooled feature
  vector (1280-d for MobileNet-V2 1.0).

Example
-------
>>> imp = load_tflite("mobilenet_v2_1.0_224_quant.tflite")  # doctest: +SKIP
>>> [name for name, _ in imp.model.named_children()]  # doctest: +SKIP
['features', 'classifier']
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepscope.geometry import same_padding

__all__ = [
    "TFLiteImport",
    "load_tflite",
    "logits_tensor_index",
    "same_padding",
    "Conv2dSame",
    "Block",
    "TFLiteNet",
]

# ----------------------------------------------------------------------------
# Public modules
# ----------------------------------------------------------------------------


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``'SAME'`` padding, exact for any input size.

    The zero padding is computed from the input size in :meth:`forward` with
    :func:`same_padding` (for stride 2 and an even input it is 0 before and 1 after);
    symmetric padding is left to the convolution, uneven padding is added with ``F.pad``.

    Notes
    -----
    ``kernel_size``, ``stride``, ``dilation`` and ``groups`` are the real ones.
    ``padding`` reports the *leading* (top, left) padding when the input size is a
    multiple of the stride, i.e. ``max(k_eff - stride, 0) // 2``; that holds at the
    native input size of every layer in the supported MobileNet files and is what
    receptive-field arithmetic needs. The trailing padding can be one larger and
    is always computed in :meth:`forward`; use :meth:`pad_amounts` for the exact
    values at a given size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0,
            dilation=dilation, groups=groups, bias=bias,
        )
        self.padding = tuple(
            same_padding(s, k, s, d)[0] for k, s, d in zip(self.kernel_size, self.stride, self.dilation)
        )

    def pad_amounts(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Exact TF padding for an input of ``height x width``.

        Returns
        -------
        tuple of int
            ``(left, right, top, bottom)``, the order ``F.pad`` expects.
        """
        top, bottom = same_padding(height, self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(width, self.kernel_size[1], self.stride[1], self.dilation[1])
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = pads = self.pad_amounts(x.shape[-2], x.shape[-1])
        if left == right and top == bottom:  # the convolution pads itself, without a padded copy (18 % faster)
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Block(nn.Sequential):
    """A run of layers from one TF name scope, with an optional residual ``ADD``.

    Parameters
    ----------
    layers : OrderedDict of str to nn.Module
        The layers, applied in order.
    residual : bool
        If true, the block returns ``input + layers(input)``.
    tf_scope : str
        The TensorFlow name scope the block came from (for reference only).
    """

    def __init__(self, layers: OrderedDict, residual: bool = False, tf_scope: str = "") -> None:
        super().__init__(layers)
        self.residual = residual
        self.tf_scope = tf_scope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"tf_scope={self.tf_scope!r}, residual={self.residual}"


class TFLiteNet(nn.Module):
    """Float PyTorch network imported from a TFLite classifier.

    Parameters
    ----------
    features : nn.Sequential
        The blocks up to (not including) global average pooling.
    classifier : nn.Sequential
        ``pool`` (``nn.AdaptiveAvgPool2d(1)``), ``flatten`` and ``fc`` (``nn.Linear``).
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised NCHW images to class logits."""
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class TFLiteImport:
    """A TFLite classifier imported into PyTorch.

    Attributes
    ----------
    model : torch.nn.Module
        Float32 :class:`TFLiteNet` in eval mode; maps ``(N, 3, H, W)`` images,
        normalised with ``mean``/``std``, to 1000 ImageNet logits (pre-softmax).
    input_size : int
        Height (= width) of the file's input tensor, e.g. 224.
    mean, std : tuple of float
        Per-channel normalisation of ``[0, 1]`` RGB pixels, derived from the input
        quantisation: a uint8 pixel ``p`` means ``(p - zero_point) * scale``, so
        ``mean = zero_point / 255`` and ``std = 1 / (255 * scale)`` (for an int8
        input, which stores ``p - 128``, ``mean = (zero_point + 128) / 255``).
        That is 128/255 = 0.502 for both in the TF1 MobileNet files (scale 1/128,
        zero point 128), i.e. about the usual ``x / 127.5 - 1``. A float input
        tensor gets 0.5 / 0.5.
    name : str
        File name without the ``.tflite`` suffix.
    """

    model: torch.nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str


# ----------------------------------------------------------------------------
# Reading the flatbuffer into plain records
# ----------------------------------------------------------------------------

_DTYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8,
    "INT64": np.int64, "INT16": np.int16, "INT8": np.int8,
}
_ACTIVATIONS = {0: None, 1: nn.ReLU, 3: nn.ReLU6}
_SKIPPED = ("QUANTIZE", "DEQUANTIZE")
_HEAD_OPS = ("RESHAPE", "SQUEEZE", "SOFTMAX")
_ROLE_SUFFIX = re.compile(r"(.+?)_(expand|depthwise|pointwise|project)")


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    quantized_dimension: int
    data: np.ndarray | None


@dataclass
class _Op:
    index: int
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: dict


@dataclass
class _Graph:
    path: str
    tensors: list[_Tensor]
    ops: list[_Op]
    inputs: list[int]
    outputs: list[int]


def _type_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}


def _op_name(code: int) -> str:
    from tflite.utils import BUILTIN_OPCODE2NAME

    return BUILTIN_OPCODE2NAME.get(code, f"opcode {code}")


def _read_tensor(model, fb_tensor, file_bytes: bytes, type_names: dict[int, str]) -> _Tensor:
    dtype = type_names.get(fb_tensor.Type(), str(fb_tensor.Type()))
    shape = tuple(int(s) for s in fb_tensor.ShapeAsNumpy()) if fb_tensor.ShapeLength() else ()
    scale = zero_point = None
    qdim = 0
    quant = fb_tensor.Quantization()
    if quant is not None and quant.ScaleLength():
        scale = quant.ScaleAsNumpy().astype(np.float64)
        zero_point = (quant.ZeroPointAsNumpy().astype(np.int64) if quant.ZeroPointLength()
                      else np.zeros_like(scale, dtype=np.int64))
        qdim = quant.QuantizedDimension()
    data = None
    buffer = model.Buffers(fb_tensor.Buffer())
    raw = None
    if buffer is not None and buffer.DataLength():
        raw = buffer.DataAsNumpy().tobytes()
    elif buffer is not None and buffer.Offset() > 1:
        raw = file_bytes[buffer.Offset(): buffer.Offset() + buffer.Size()]
    if raw is not None and dtype in _DTYPES:
        data = np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape).copy()
    name = fb_tensor.Name().decode("utf-8", errors="replace") if fb_tensor.Name() else ""
    return _Tensor(name, shape, dtype, scale, zero_point, qdim, data)


def _read_options(kind: str, fb_op) -> dict:
    import tflite

    classes = {
        "CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
        "AVERAGE_POOL_2D": tflite.Pool2DOptions, "MAX_POOL_2D": tflite.Pool2DOptions,
        "FULLY_CONNECTED": tflite.FullyConnectedOptions, "ADD": tflite.AddOptions,
        "MEAN": tflite.ReducerOptions,
    }
    if kind not in classes:
        return {}
    table = fb_op.BuiltinOptions()
    if table is None:
        raise ValueError(f"{kind} op without its options")
    opt = classes[kind]()
    opt.Init(table.Bytes, table.Pos)
    getters = ("Padding", "StrideH", "StrideW", "DilationHFactor", "DilationWFactor",
               "FusedActivationFunction", "DepthMultiplier", "FilterHeight", "FilterWidth",
               "KeepDims")
    return {g: getattr(opt, g)() for g in getters if hasattr(opt, g)}


def _read_graph(path: str) -> _Graph:
    import tflite

    file_bytes = Path(path).read_bytes()
    if len(file_bytes) < 8 or not tflite.Model.ModelBufferHasIdentifier(file_bytes, 0):
        raise ValueError(f"{path}: not a TensorFlow Lite file (no 'TFL3' identifier)")
    try:
        model = tflite.Model.GetRootAsModel(file_bytes, 0)
        if model.SubgraphsLength() != 1:
            raise ValueError(f"{path}: expected one subgraph, found {model.SubgraphsLength()}")
        sg = model.Subgraphs(0)
        type_names = _type_names()
        tensors = [_read_tensor(model, sg.Tensors(i), file_bytes, type_names)
                   for i in range(sg.TensorsLength())]
        ops = []
        for i in range(sg.OperatorsLength()):
            fb_op = sg.Operators(i)
            code = model.OperatorCodes(fb_op.OpcodeIndex())
            kind = _op_name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
            if kind == "CUSTOM":
                kind = f"CUSTOM ({(code.CustomCode() or b'').decode(errors='replace')})"
            try:
                options = _read_options(kind, fb_op)
            except ValueError as err:
                raise ValueError(f"{path}: {err} (op #{i})") from err
            ops.append(_Op(i, kind, [int(t) for t in fb_op.InputsAsNumpy()],
                           [int(t) for t in fb_op.OutputsAsNumpy()], options))
        inputs = [int(t) for t in sg.InputsAsNumpy()]
        outputs = [int(t) for t in sg.OutputsAsNumpy()]
    except ValueError:
        raise
    except Exception as err:  # a corrupt flatbuffer fails in many ways
        raise ValueError(f"{path}: corrupt TensorFlow Lite file ({type(err).__name__}: {err})") from err
    return _Graph(str(path), tensors, ops, inputs, outputs)


def _dequantize(t: _Tensor) -> np.ndarray:
    """Real values of a constant tensor as float32."""
    if t.scale is None:
        return t.data.astype(np.float32)
    scale, zero_point = t.scale, t.zero_point
    if scale.size > 1:
        shape = [1] * t.data.ndim
        shape[t.quantized_dimension] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((t.data.astype(np.float64) - zero_point) * scale).astype(np.float32)


# ----------------------------------------------------------------------------
# Linearising the graph: a chain of ops with residual ADDs
# ----------------------------------------------------------------------------


@dataclass
class _Step:
    op: _Op
    data: int  # the input on the main chain
    skip: int | None  # the other input of a residual ADD
    out: int


class _Chain:
    """Follows the main data path through a graph, skipping (de)quantisation."""

    def __init__(self, graph: _Graph) -> None:
        self.graph = graph
        self.alias: dict[int, int] = {}
        self.constants: dict[int, np.ndarray] = {}

    def resolve(self, index: int) -> int:
        while index in self.alias:
            index = self.alias[index]
        return index

    def constant(self, index: int, what: str) -> np.ndarray:
        """Dequantised value of a constant input tensor."""
        index = self.resolve(index)
        if index in self.constants:
            return self.constants[index]
        t = self.graph.tensors[index]
        if t.data is None:
            raise ValueError(f"{self.graph.path}: {what} tensor {t.name!r} is not a constant")
        return _dequantize(t)

    def is_constant(self, index: int) -> bool:
        index = self.resolve(index)
        return index in self.constants or self.graph.tensors[index].data is not None

    def steps(self) -> list[_Step]:
        """The ops on the main chain, in order; raise on any other topology."""
        g = self.graph
        if len(g.inputs) != 1:
            raise ValueError(f"{g.path}: expected one input tensor, found {len(g.inputs)}")
        current = g.inputs[0]
        steps = []
        for op in g.ops:
            if op.kind in _SKIPPED:
                if self.is_constant(op.inputs[0]):
                    self.constants[op.outputs[0]] = self.constant(op.inputs[0], op.kind)
                else:
                    self.alias[op.outputs[0]] = self.resolve(op.inputs[0])
                continue
            data = [self.resolve(i) for i in op.inputs if i >= 0 and not self.is_constant(i)]
            if current not in data:
                raise ValueError(
                    f"{g.path}: unsupported graph topology at op #{op.index} {op.kind}: "
                    "only a chain of layers with residual ADDs can be imported")
            others = [i for i in data if i != current]
            if op.kind == "ADD" and len(others) == 1:
                steps.append(_Step(op, current, others[0], op.outputs[0]))
            elif others:
                raise ValueError(f"{g.path}: unsupported op {op.kind} (op #{op.index}) "
                                 "with several data inputs")
            else:
                steps.append(_Step(op, current, None, op.outputs[0]))
            current = op.outputs[0]
        return steps


# ----------------------------------------------------------------------------
# Op -> module conversion
# ----------------------------------------------------------------------------


def _activation(code: int, path: str, op: _Op) -> nn.Module | None:
    if code not in _ACTIVATIONS:
        import tflite

        names = {v: k for k, v in vars(tflite.ActivationFunctionType).items() if not k.startswith("_")}
        raise ValueError(f"{path}: unsupported fused activation {names.get(code, code)} "
                         f"in {op.kind} (op #{op.index})")
    cls = _ACTIVATIONS[code]
    return None if cls is None else cls()


def _bias(chain: _Chain, op: _Op) -> np.ndarray | None:
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return None
    return chain.constant(op.inputs[2], "bias")


def _conv(chain: _Chain, step: _Step) -> nn.Conv2d:
    """A ``CONV_2D`` or ``DEPTHWISE_CONV_2D`` op as an ``nn.Conv2d``."""
    op, opts = step.op, step.op.options
    weight = chain.constant(op.inputs[1], "weight")
    in_channels = chain.graph.tensors[step.data].shape[3]
    if op.kind == "CONV_2D":
        weight = weight.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        groups = in_channels // weight.shape[1]
    else:
        weight = weight[0].transpose(2, 0, 1)[:, None]  # 1HWO -> O1HW
        groups = in_channels
    bias = _bias(chain, op)
    cls = Conv2dSame if opts["Padding"] == 0 else nn.Conv2d
    conv = cls(in_channels, weight.shape[0], weight.shape[2:],
               stride=(opts["StrideH"], opts["StrideW"]),
               dilation=(opts["DilationHFactor"], opts["DilationWFactor"]),
               groups=groups, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
    return conv


def _pool(step: _Step, path: str) -> nn.Module:
    opts = step.op.options
    if opts["Padding"] != 1:
        raise ValueError(f"{path}: unsupported {step.op.kind} with SAME padding inside the "
                         f"network (op #{step.op.index})")
    cls = nn.AvgPool2d if step.op.kind == "AVERAGE_POOL_2D" else nn.MaxPool2d
    return cls((opts["FilterHeight"], opts["FilterWidth"]), (opts["StrideH"], opts["StrideW"]))


def _pad(chain: _Chain, step: _Step) -> nn.Module:
    pads = chain.constant(step.op.inputs[1], "paddings").astype(np.int64)
    if pads.shape != (4, 2) or pads[0].any() or pads[3].any():
        raise ValueError(f"{chain.graph.path}: unsupported PAD (op #{step.op.index}): "
                         "only spatial padding of NHWC tensors is supported")
    (top, bottom), (left, right) = pads[1], pads[2]
    return nn.ZeroPad2d((int(left), int(right), int(top), int(bottom)))


def _layer(chain: _Chain, step: _Step) -> nn.Sequential:
    """One op of ``features`` as ``nn.Sequential(conv=..., act=...)`` or similar."""
    kind, path = step.op.kind, chain.graph.path
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        parts["conv"] = _conv(chain, step)
        act = _activation(step.op.options["FusedActivationFunction"], path, step.op)
    elif kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        parts["pool"] = _pool(step, path)
        act = _activation(step.op.options["FusedActivationFunction"], path, step.op)
    elif kind == "PAD":
        parts["pad"] = _pad(chain, step)
        act = None
    elif kind in ("RELU", "RELU6"):
        act = nn.ReLU() if kind == "RELU" else nn.ReLU6()
    else:
        raise ValueError(f"{path}: unsupported TFLite op {kind} (op #{step.op.index})")
    if act is not None:
        parts["act"] = act
    return nn.Sequential(parts)


# ----------------------------------------------------------------------------
# Names and blocks
# ----------------------------------------------------------------------------


def _name_parts(chain: _Chain, step: _Step) -> list[str]:
    """TF scope components of an op: from its weight tensor, else its output tensor."""
    g = chain.graph
    index = step.op.inputs[1] if step.op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") else step.out
    name = g.tensors[index].name.split(";")[0]
    return [p for p in name.split("/") if p and p != "StatefulPartitionedCall"]


def _common_prefix(names: list[list[str]]) -> int:
    """Number of leading scope components shared by all names (the model prefix)."""
    if not names:
        return 0
    n = 0
    limit = min(len(p) for p in names) - 1
    while n < limit and all(p[n] == names[0][n] for p in names):
        n += 1
    return n


def _sanitize(name: str) -> str:
    name = re.sub(r"\W", "_", name) or "layer"
    return f"l{name}" if name[0].isdigit() else name


def _scope_and_role(parts: list[str], kind: str) -> tuple[str | None, str]:
    default = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise"}.get(kind, kind.lower())
    if not parts:
        return None, default
    scope = parts[0]
    role = parts[1] if len(parts) >= 3 else None
    match = _ROLE_SUFFIX.fullmatch(scope)
    if match and role is None:
        scope, role = match.groups()
    return scope, _sanitize(role or default)


@dataclass
class _BlockSpec:
    scope: str
    inp: int
    out: int
    layers: list[tuple[str, nn.Module]]
    residual: bool = False


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        result.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return result


def _add_residual(blocks: list[_BlockSpec], step: _Step, path: str) -> None:
    """Close the blocks from the one whose input is the skip tensor into one residual block."""
    if step.op.options.get("FusedActivationFunction", 0):
        raise ValueError(f"{path}: unsupported ADD with a fused activation (op #{step.op.index})")
    start = next((j for j in range(len(blocks) - 1, -1, -1) if blocks[j].inp == step.skip), None)
    if start is None or blocks[start].residual and start == len(blocks) - 1:
        raise ValueError(f"{path}: unsupported ADD (op #{step.op.index}): "
                         "not a residual connection around preceding layers")
    merged = blocks[start:]
    del blocks[start:]
    layers = [layer for b in merged for layer in b.layers]
    blocks.append(_BlockSpec(merged[0].scope, merged[0].inp, step.out, layers, residual=True))


def _features(chain: _Chain, steps: list[_Step]) -> nn.Sequential:
    """Group feature ops into :class:`Block` s by TF name scope."""
    named = [_name_parts(chain, s) for s in steps if s.op.kind != "ADD"]
    prefix = _common_prefix(named)
    blocks: list[_BlockSpec] = []
    for step in steps:
        if step.op.kind == "ADD":
            _add_residual(blocks, step, chain.graph.path)
            continue
        scope, role = _scope_and_role(_name_parts(chain, step)[prefix:], step.op.kind)
        module = _layer(chain, step)
        last = blocks[-1] if blocks else None
        if last is not None and not last.residual and scope in (None, last.scope):
            last.layers.append((role, module))
            last.out = step.out
        else:
            blocks.append(_BlockSpec(scope or f"op{step.op.index}", step.data, step.out,
                                     [(role, module)]))
    modules = []
    for b in blocks:
        names = _unique([n for n, _ in b.layers])
        layers = OrderedDict(zip(names, (m for _, m in b.layers)))
        modules.append(Block(layers, residual=b.residual, tf_scope=b.scope))
    return nn.Sequential(*modules)


# ----------------------------------------------------------------------------
# The head: global pooling -> one linear layer [-> reshape -> softmax]
# ----------------------------------------------------------------------------


def _is_global_pool(chain: _Chain, step: _Step) -> bool:
    shape = chain.graph.tensors[step.data].shape
    if step.op.kind == "MEAN":
        axes = chain.constant(step.op.inputs[1], "axes").astype(np.int64).ravel()
        return sorted(int(a) % 4 for a in axes) == [1, 2]
    if step.op.kind == "AVERAGE_POOL_2D":
        opts = step.op.options
        return ((opts["FilterHeight"], opts["FilterWidth"]) == shape[1:3]
                and opts["FusedActivationFunction"] == 0)
    return False


def _split_head(chain: _Chain, steps: list[_Step]) -> tuple[list[_Step], _Step]:
    """Split the chain into feature steps and the linear (logits) step."""
    path = chain.graph.path
    pools = [i for i, s in enumerate(steps) if s.op.kind in ("MEAN", "AVERAGE_POOL_2D")]
    if not pools or not _is_global_pool(chain, steps[pools[-1]]):
        raise ValueError(f"{path}: unsupported model: no global average pooling head")
    p = pools[-1]
    linear = [s for s in steps[p + 1:] if s.op.kind in ("CONV_2D", "FULLY_CONNECTED")]
    others = [s for s in steps[p + 1:] if s.op.kind not in ("CONV_2D", "FULLY_CONNECTED") + _HEAD_OPS]
    if others:
        s = others[0]
        raise ValueError(f"{path}: unsupported TFLite op {s.op.kind} (op #{s.op.index}) in the head")
    if len(linear) != 1:
        raise ValueError(f"{path}: unsupported head: expected one linear layer after global "
                         f"pooling, found {len(linear)}")
    return steps[:p], linear[0]


def _classifier(chain: _Chain, step: _Step) -> nn.Sequential:
    """Pool -> flatten -> ``nn.Linear``; a 1001-way output loses its background row."""
    path, op = chain.graph.path, step.op
    if op.options.get("FusedActivationFunction", 0):
        raise ValueError(f"{path}: unsupported fused activation on the logits layer (op #{op.index})")
    weight = chain.constant(op.inputs[1], "weight")
    if op.kind == "CONV_2D":
        if weight.shape[1:3] != (1, 1):
            raise ValueError(f"{path}: unsupported logits CONV_2D with a "
                             f"{weight.shape[1]}x{weight.shape[2]} kernel (op #{op.index})")
        weight = weight[:, 0, 0, :]
    bias = _bias(chain, op)
    if bias is None:
        bias = np.zeros(weight.shape[0], dtype=np.float32)
    if weight.shape[0] == 1001:
        weight, bias = weight[1:], bias[1:]
    fc = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        fc.bias.copy_(torch.from_numpy(bias))
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=fc))


# ----------------------------------------------------------------------------
# Input normalisation
# ----------------------------------------------------------------------------


def _normalisation(t: _Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean/std on [0, 1] pixels implied by the input tensor's quantisation."""
    if t.scale is None:  # float input: the TF-slim / Keras MobileNet convention
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    scale, zero_point = float(t.scale[0]), float(t.zero_point[0])
    if t.dtype == "INT8":  # pixel p in [0, 255] is stored as p - 128
        zero_point += 128.0
    mean, std = zero_point / 255.0, 1.0 / (255.0 * scale)
    return (mean,) * 3, (std,) * 3


# ----------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------


def load_tflite(path: str | PathLike) -> TFLiteImport:
    """Import a TFLite image classifier as a float PyTorch model.

    Parameters
    ----------
    path : str or path-like
        A ``.tflite`` file (uint8 / int8 quantised or float).

    Returns
    -------
    TFLiteImport
        The model (float32, eval mode, 1000 logits), its input size and the
        normalisation its input expects.

    Raises
    ------
    ValueError
        If the file is not a TFLite flatbuffer, or contains an unsupported op or
        graph structure; the message names the file (and the op).
    """
    path = str(path)
    graph = _read_graph(path)
    chain = _Chain(graph)
    feature_steps, linear = _split_head(chain, chain.steps())
    model = TFLiteNet(_features(chain, feature_steps), _classifier(chain, linear))
    model.eval()
    inp = graph.tensors[graph.inputs[0]]
    if len(inp.shape) != 4 or inp.shape[3] != 3:
        raise ValueError(f"{path}: expected an NHWC RGB input tensor, got shape {inp.shape}")
    mean, std = _normalisation(inp)
    return TFLiteImport(model=model, input_size=int(inp.shape[1]), mean=mean, std=std,
                        name=Path(path).name.removesuffix(".tflite"))


def logits_tensor_index(path: str | PathLike) -> int:
    """Index of the tensor holding the (quantised) logits in a TFLite file.

    This is the output of the logits layer before softmax, handy for comparing
    the import with a TFLite interpreter (which must keep intermediate tensors).

    Parameters
    ----------
    path : str or path-like
        A ``.tflite`` file that :func:`load_tflite` can import.

    Returns
    -------
    int
        Tensor index in subgraph 0.
    """
    chain = _Chain(_read_graph(str(path)))
    _, linear = _split_head(chain, chain.steps())
    return linear.out
