"""Geometry of convolutional networks: receptive fields, the reach of windowed layers, TensorFlow 'SAME'
padding, and which modules act on each position on their own.

One axis at a time, a feature map's :class:`Field` says which input pixels each of its positions reads:
position ``p`` reads input pixels ``p * stride - before`` to ``p * stride + after``. A windowed layer
(convolution, max or average pooling) is described by a :class:`Window` per axis; going through it, the
field grows by the window's span times the stride so far (Araujo et al., "Computing receptive fields of
convolutional neural networks", Distill 2019). :func:`walk_fields` follows a model's modules in order and
records the field after each one, as long as it knows every module on the way.

It walks in one of two modes:

- the *receptive field* (``local=False``, what neuron views crop): windows with their nominal padding;
  modules that scale each position by statistics over all positions (group and instance norm,
  squeeze-excitation) are passed, as receptive fields are conventionally drawn;
- the *cone of change* (``local=True``, what incremental occlusion recomputes): only modules whose every
  output position reads only the inputs its window covers (:func:`is_local`; batch norm and dropout only
  in eval mode); a window whose padding is decided in a ``forward`` this module does not know is taken
  to reach its whole span on both sides.

Children of a module are taken to run in order, except those named ``downsample``, ``shortcut`` or
``skip``, which run from the module's input in parallel (ResNet's strided shortcuts); their fields are
united at the end. A residual addition of the input itself needs nothing: its field lies inside the main
path's. A ``forward`` that does anything else (a global mean inside a block, attention) cannot be seen
from the modules, so callers check their results against the model (:mod:`deepscope.neurons` compares
the map size, :class:`~deepscope.attribution.occlusion.Occlusion` compares full forward passes).

TensorFlow 'SAME' padding (:func:`same_padding`) depends on the input size; layers that pad that way in
their ``forward`` are recognised by :func:`is_same_padded`: deepscope's TFLite import's
:class:`~deepscope.models.tflite.Conv2dSame` and any module with a ``pad_amounts(height, width)`` method,
and timm's ``Conv2dSame``, ``StdConv2dSame``, ``ScaledStdConv2dSame``, ``AvgPool2dSame`` and
``MaxPool2dSame``.

The table :data:`ELEMENTWISE` lists the modules that act on each position (or each channel at each
position) on their own, and those that look element-wise but are not, each with the reason; guided
backprop's lists of activations it guides and refuses are read from it too.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, replace

from torch import nn

Pair = tuple[int, int]

#: layers that slide a window over the map (their subclasses too)
WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
#: names of a block's children that run from the block's input in parallel (ResNet shortcuts)
SHORTCUT_NAMES = ("downsample", "shortcut", "skip")
#: timm's layers that pad by the 'SAME' rule in ``forward`` (recognised once timm has been imported)
_TIMM_SAME = ("timm.layers:Conv2dSame", "timm.layers:StdConv2dSame", "timm.layers:ScaledStdConv2dSame",
              "timm.layers.pool2d_same:AvgPool2dSame", "timm.layers.pool2d_same:MaxPool2dSame")


def pair(value) -> Pair:
    """``value`` as (rows, columns): an int is used for both."""
    return (value, value) if isinstance(value, int) else tuple(value)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> Pair:
    """Padding that TensorFlow's ``'SAME'`` rule adds along one spatial axis.

    Parameters
    ----------
    size : int
        Input length along the axis.
    kernel, stride, dilation : int
        Convolution (or pooling) geometry along the axis.

    Returns
    -------
    tuple of int
        ``(before, after)``: ``total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1
        - size, 0)``, ``before = total // 2`` and the odd pixel, if any, goes after. For a ``size`` that
        is a multiple of the stride, ``before = max((kernel - 1) * dilation + 1 - stride, 0) // 2``.
    """
    extent = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def _loaded_types(names) -> tuple[type, ...]:
    """The classes ``"package.module:Name"`` of packages already imported (a model holding one has)."""
    types = []
    for name in names:
        module, attribute = name.split(":")
        if module.split(".")[0] in sys.modules:
            try:
                types.append(getattr(importlib.import_module(module), attribute))
            except (ImportError, AttributeError):  # another version of the package
                pass
    return tuple(types)


def is_same_padded(module: nn.Module) -> bool:
    """Whether ``module`` pads its input by TensorFlow's 'SAME' rule in ``forward`` (see the module docstring)."""
    return callable(getattr(module, "pad_amounts", None)) or isinstance(module, _loaded_types(_TIMM_SAME))


# -- windowed layers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A windowed layer along one axis.

    Output position ``p`` reads input positions ``p * stride - padding[0]`` to ``p * stride - padding[0] +
    span``; ``known`` is False when the padding is decided in a ``forward`` this module does not know (a
    subclass, ``ceil_mode``, a padding mode other than zeros), so only the nominal padding is given.
    """

    kernel: int
    stride: int
    dilation: int = 1
    padding: Pair = (0, 0)
    ceil_mode: bool = False
    known: bool = True

    @property
    def span(self) -> int:
        """Input positions between the first and last that one output reads."""
        return (self.kernel - 1) * self.dilation

    def reach(self, local: bool = False) -> Pair:
        """(before, after): input positions read before and after ``p * stride``.

        With ``local=True`` an unknown padding reaches the whole span on both sides (every offset is possible).
        """
        if local and not self.known:
            return self.span, self.span
        return self.padding[0], self.span - self.padding[0]

    def out_length(self, length: int | None) -> int | None:
        """Output length for an input of ``length`` (``None``: unknown)."""
        if length is None:
            return None
        padded = length + sum(self.padding) - self.span - 1
        if not self.ceil_mode:
            return padded // self.stride + 1
        out = -(-padded // self.stride) + 1
        return out - 1 if (out - 1) * self.stride >= length + self.padding[0] else out  # the last window starts inside


def windows(module: nn.Module, size: tuple[int | None, int | None] = (None, None)) -> tuple[Window, Window] | None:
    """The (rows, columns) :class:`Window` of a convolution or pooling layer, ``None`` for any other module.

    ``size`` is the input's (height, width); 'SAME' padding depends on it. Where it is unknown (``None``)
    the input is taken to be a multiple of the stride.
    """
    if not isinstance(module, WINDOWED):
        return None
    kernel, stride = pair(module.kernel_size), pair(module.stride or module.kernel_size)
    dilation = pair(getattr(module, "dilation", 1))
    spans = [(k - 1) * d for k, d in zip(kernel, dilation)]
    same = is_same_padded(module)
    if same:
        padding = [same_padding(length or s, k, s, d) for length, k, s, d in zip(size, kernel, stride, dilation)]
    elif module.padding == "valid":
        padding = [(0, 0), (0, 0)]
    elif module.padding == "same":  # PyTorch's 'same' (stride 1): the odd pixel after
        padding = [(span // 2, span - span // 2) for span in spans]
    else:
        padding = [(p, p) for p in pair(module.padding)]
    ceil_mode = bool(getattr(module, "ceil_mode", False))
    known = same or (type(module) in WINDOWED and not ceil_mode
                     and getattr(module, "padding_mode", "zeros") == "zeros")
    return tuple(Window(k, s, d, p, ceil_mode, known)
                 for k, s, d, p in zip(kernel, stride, dilation, padding))


def window_geometry(module: nn.Module) -> tuple[Pair, tuple[Pair, Pair]] | None:
    """(stride, (before, after) per axis) of a windowed layer in the cone of change, ``None`` for another module.

    Output position ``p`` can change when input positions ``p * stride - before ... p * stride + after``
    do; 'SAME' padding is taken for an input that is a multiple of the stride.
    """
    found = windows(module)
    if found is None:
        return None
    return tuple(w.stride for w in found), tuple(w.reach(local=True) for w in found)


# -- element-wise modules -----------------------------------------------------------------------------------
#: ``Elementwise.local``: each output position reads only the same input position
LOCAL = "local"
#: ``Elementwise.local``: each position on its own, but scaled by statistics over all positions
STATISTICS = "statistics"
#: ``Elementwise.local``: an output reads every position
GLOBAL = "global"


@dataclass(frozen=True)
class Elementwise:
    """One row of :data:`ELEMENTWISE`.

    ``local`` is :data:`LOCAL`, :data:`STATISTICS` or :data:`GLOBAL`; ``eval_only``: local only in eval
    mode; ``guided``: what guided backprop does at such an activation -- ``"guided"`` (its rule),
    ``"refused"`` (the model is refused), ``"plain"`` (its plain gradient passes), ``None`` (not an activation);
    ``lrp``: what LRP does at it -- ``"pass"`` (relevance passes unchanged: exact for the piecewise-linear
    activations, the identity rule of Achtibat et al. 2024 for the smooth ones), ``"refused"`` (no rule: the
    output is not 0 at 0, a gate or a probability), ``None`` (not an activation; LRP's canonizers decide).
    Types given as ``"package.module:Name"`` are recognised once their package has been imported.
    """

    what: str
    types: tuple[type | str, ...]
    local: str
    why: str
    eval_only: bool = False
    guided: str | None = None
    lrp: str | None = None

    def classes(self) -> tuple[type, ...]:
        """The row's types that are loaded."""
        return tuple(t for t in self.types if isinstance(t, type)) + _loaded_types(
            t for t in self.types if isinstance(t, str))


#: Modules that look element-wise, whether each is local, and why. The first matching row counts
#: (``nn.ReLU6`` is a ``nn.Hardtanh``).
ELEMENTWISE: tuple[Elementwise, ...] = (
    Elementwise("batch norm", (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm), LOCAL,
                "in eval mode a per-channel affine map with the running statistics; in training mode its "
                "statistics span the batch and every position", eval_only=True),
    Elementwise("local response norm", (nn.LocalResponseNorm,), LOCAL,
                "normalises across neighbouring channels at the same position"),
    Elementwise("identity", (nn.Identity,), LOCAL, "returns its input (a placeholder for a removed layer)"),
    Elementwise("dropout", (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                            nn.FeatureAlphaDropout), LOCAL,
                "the identity in eval mode; in training mode a random mask", eval_only=True),
    Elementwise("ReLU", (nn.ReLU, nn.ReLU6), LOCAL, "a function of each element", guided="guided", lrp="pass"),
    Elementwise("sigmoid", (nn.Sigmoid,), LOCAL,
                "a function of each element; guided backprop passes its plain gradient: in a ReLU network "
                "it is a gate (squeeze-excitation) or the output's squashing, not a feature activation",
                guided="plain", lrp="refused"),
    Elementwise("hard tanh", (nn.Hardtanh,), LOCAL,
                "a function of each element; guided backprop passes its plain gradient: a clip (its subclass "
                "ReLU6 is guided)", guided="plain", lrp="pass"),
    Elementwise("smooth and leaky activations", (nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.ELU,
                                                 nn.PReLU, nn.RReLU, nn.SELU, nn.CELU, nn.Tanh, nn.Softsign), LOCAL,
                "a function of each element (PReLU: with a slope per channel); guided backprop refuses them: its "
                "rule is defined at ReLUs, and passing negative inputs or gradients would give a silently "
                "different map", guided="refused", lrp="pass"),
    Elementwise("hard sigmoid and softplus", (nn.Hardsigmoid, nn.Softplus), LOCAL,
                "a function of each element that is not 0 at 0 (a gate, a soft positive part); guided backprop "
                "refuses them as it refuses smooth activations", guided="refused", lrp="refused"),
    Elementwise("other element-wise functions", (nn.LogSigmoid, nn.Threshold, nn.Tanhshrink, nn.Softshrink,
                                                 nn.Hardshrink), LOCAL,
                "a function of each element that is not 0 at 0 or not a feature activation", lrp="refused"),
    Elementwise("softmax", (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d), GLOBAL,
                "normalises over a whole dimension (classes or channels)", lrp="refused"),
    Elementwise("group and instance norm", (nn.GroupNorm, nn.InstanceNorm2d), STATISTICS,
                "each position is normalised with a mean and variance over all positions of the map"),
    Elementwise("squeeze-excitation", ("torchvision.ops:SqueezeExcitation", "timm.layers:SqueezeExcite",
                                       "timm.layers:SEModule", "timm.layers:EffectiveSEModule",
                                       "timm.models._efficientnet_blocks:SqueezeExcite"), STATISTICS,
                "each position is scaled by a gate per channel computed from the channel's mean over all positions"),
    Elementwise("layer norm", (nn.LayerNorm,), GLOBAL,
                "which positions it normalises over depends on its normalized_shape and the tensor's layout"),
)


def elementwise(module: nn.Module) -> Elementwise | None:
    """The row of :data:`ELEMENTWISE` for ``module`` (``None``: not in the table)."""
    return next((row for row in ELEMENTWISE if isinstance(module, row.classes())), None)


def is_local(module: nn.Module) -> bool:
    """Whether every output position of an element-wise ``module`` reads only the same input position, now
    (batch norm and dropout only in eval mode)."""
    row = elementwise(module)
    return row is not None and row.local == LOCAL and not (row.eval_only and module.training)


def activation_types(guided: str | None = None, *, lrp: str | None = None) -> tuple[type, ...]:
    """The activation types that guided backprop treats as ``guided`` says (``"guided"``, ``"refused"``,
    ``"plain"``), or that LRP treats as ``lrp`` says (``"pass"``, ``"refused"``)."""
    if lrp is not None:
        return tuple(t for row in ELEMENTWISE if row.lrp == lrp for t in row.classes())
    return tuple(t for row in ELEMENTWISE if row.guided == guided for t in row.classes())


# -- receptive fields ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """A feature map's receptive field along one axis, and the map's length (``None``: unknown).

    Position ``p`` reads input pixels ``p * stride - before`` to ``p * stride + after``.
    """

    stride: int = 1
    before: int = 0
    after: int = 0
    length: int | None = None

    @property
    def size(self) -> int:
        """Input pixels one position reads."""
        return self.before + self.after + 1

    @property
    def offset(self) -> int:
        """First input pixel position 0 reads (negative: in the padding)."""
        return -self.before

    def through(self, window: Window, local: bool = False) -> "Field":
        """The field after ``window`` (see :meth:`Window.reach` for ``local``)."""
        before, after = window.reach(local)
        return Field(self.stride * window.stride, self.before + before * self.stride,
                     self.after + after * self.stride, window.out_length(self.length))

    def union(self, other: "Field") -> "Field":
        """The field of the sum of two maps of the same stride and length (a residual block's branches)."""
        return replace(self, before=max(self.before, other.before), after=max(self.after, other.after))


class Unfollowable(Exception):
    """A module whose effect on the field :func:`walk_fields` cannot know."""


@dataclass
class FieldWalk:
    """What :func:`walk_fields` found.

    Attributes
    ----------
    fields : dict of str to (Field, Field)
        The (rows, columns) field of the output of every module walked, in the order outputs are made.
    leaves : list of str
        The modules taken as one layer, in order.
    stopped : str or None
        Where and why the walk stopped before the model's end (``None``: it did not).
    """

    fields: dict[str, tuple[Field, Field]]
    leaves: list[str]
    stopped: str | None = None


def walk_fields(model: nn.Module, size: tuple[int | None, int | None] = (None, None), *,
                local: bool = False) -> FieldWalk:
    """Follow ``model``'s modules from the input and record the field after each (see the module docstring).

    Parameters
    ----------
    model : nn.Module
    size : (int or None, int or None)
        The input's (height, width); 'SAME' padding and the map lengths need it. Unknown: every map is
        taken to be a multiple of the next stride, and adaptive pooling stops the walk.
    local : bool
        Walk the cone of change instead of the receptive field.
    """
    walk = FieldWalk({}, [])
    try:
        _walk(model, "", tuple(Field(length=length) for length in size), walk, local)
    except Unfollowable as error:
        walk.stopped = str(error)
    return walk


def _walk(module: nn.Module, name: str, fields: tuple[Field, Field], walk: FieldWalk, local: bool):
    def stop(reason: str):
        raise Unfollowable(f"{name or 'the model'} ({type(module).__name__}) {reason}")

    def path(child_name: str) -> str:
        return f"{name}.{child_name}" if name else child_name

    row = elementwise(module)
    children = list(module.named_children())
    if isinstance(module, WINDOWED):
        out = tuple(f.through(w, local) for f, w in zip(fields, windows(module, [f.length for f in fields])))
        walk.leaves.append(name)
    elif row is not None:
        if row.local == GLOBAL or (local and not is_local(module)):
            stop(f"is not local: {row.why}")
        out = fields
        walk.leaves.append(name)
        if row.local == LOCAL:  # its sub-modules act after it (timm's BatchNormAct2d: dropout, activation)
            for child_name, child in children:
                out = _walk(child, path(child_name), out, walk, local)
    elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        targets = (module.output_size,) * 2 if isinstance(module.output_size, int) or module.output_size is None \
            else tuple(module.output_size)
        if any(f.length is None or t not in (None, f.length) for f, t in zip(fields, targets)):
            stop("pools over several positions")
        out = fields
        walk.leaves.append(name)
    elif not children:
        stop("is not a layer whose geometry is known")
    else:
        main, shortcuts = fields, []
        for child_name, child in children:
            if child_name in SHORTCUT_NAMES:
                shortcuts.append(_walk(child, path(child_name), fields, walk, local))
            else:
                main = _walk(child, path(child_name), main, walk, local)
        for branch in shortcuts:
            if any((a.stride, a.length) != (b.stride, b.length) for a, b in zip(main, branch)):
                stop("has branches with different strides")
            main = tuple(a.union(b) for a, b in zip(main, branch))
        out = main
    if name:
        walk.fields[name] = out
    return out
