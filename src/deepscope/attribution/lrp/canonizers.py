"""Canonizers: what LRP does with the parts of a network that are not one layer with one rule.

zennit rewrites models temporarily (BatchNorm merged into the weights, residual blocks given a ``forward``
that calls a ``Sum`` module), one canonizer per architecture. Here the model is never rewritten; each
canonizer is a rule the probe applies during the forward pass, so one canonizer covers every architecture
with that structure:

``merge-batchnorm``
    A BatchNorm whose input is the output of a convolution or ``nn.Linear`` (checked on the actual tensors,
    not guessed from the module order) is merged into that layer's rule (:class:`~.rules.Affine`). A
    BatchNorm after anything else (DenseNet's BatchNorm of concatenated features, a pre-activation block)
    passes relevance unchanged, as zennit's composites treat BatchNorm they do not merge.
``residual-sum``
    ``a + b`` of two activations in a model's ``forward`` code (ResNet's ``out += identity``, MobileNet-V2's
    inverted residual ``x + self.conv(x)``, the TFLite import's residual ``Block``, timm's blocks) splits
    relevance in proportion, ``R_a = a R / (a + b)`` (zennit's ``Sum`` module with the ``Norm`` rule).
``functional-pool``
    Average pooling called as a function (``F.adaptive_avg_pool2d`` in torchvision's MobileNet-V2 and
    DenseNet, ``x.mean((2, 3))``) gets the proportional rule of an ``nn.AdaptiveAvgPool2d`` module.
``functional-activation``
    ``F.relu``, ``F.relu6``, ``F.silu``, ... called as functions pass relevance unchanged, as activation
    modules do.
``squeeze-excitation``
    A squeeze-excitation module (torchvision's ``SqueezeExcitation``, timm's ``SqueezeExcite``/``SEModule``)
    multiplies its input by a sigmoid gate computed from it. The gate is treated as a constant weight and
    all relevance goes to the gated signal ("signal-take-all", Arras et al. 2017, LRP for LSTMs).

Concatenation (DenseNet, Inception) needs no canonizer: its gradient hands each slice of relevance to the
tensor that slice came from, which is LRP's rule for it; a feature map used in several places (DenseNet
reuses each one in every later layer of its block) collects the relevance of all its uses. Max pooling
keeps its gradient too (relevance to the maximum).

Anything else in a model's ``forward`` code that moves relevance in a way LRP has no rule for -- a
product of two activations, a sigmoid, a normalisation layer, an addition of two activations when the
``residual-sum`` canonizer is off -- is found in the autograd graph after the forward pass
(:func:`check_graph`) and refused with :class:`~deepscope.errors.UnsupportedModelError`, rather than
silently treated as a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.attribution.lrp.rules import pass_through, proportional, ratio
from deepscope.errors import UnsupportedModelError
from deepscope.geometry import activation_types
from deepscope.probe import AttachedBackward, attach_backward

CANONIZERS = ("merge-batchnorm", "residual-sum", "functional-pool", "functional-activation", "squeeze-excitation")

#: Activations that pass relevance unchanged, and activations with no LRP rule: the ``lrp`` column of the one
#: table of element-wise modules (:data:`deepscope.geometry.ELEMENTWISE`), which says why for each.
PASS_ACTIVATIONS = activation_types(lrp="pass")
REFUSED_ACTIVATIONS = (*activation_types(lrp="refused"), nn.MultiheadAttention)
AVERAGE_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def squeeze_excitation_types() -> tuple[type, ...]:
    """The squeeze-excitation module classes of torchvision and (if installed) timm."""
    from torchvision.ops import SqueezeExcitation

    types: list[type] = [SqueezeExcitation]
    try:
        from timm.layers.squeeze_excite import SEModule
        from timm.models._efficientnet_blocks import SqueezeExcite
        types += [SEModule, SqueezeExcite]
    except ImportError:  # pragma: no cover - timm is a dependency, but an optional one for this
        pass
    return tuple(types)


# -- residual sums, functional pooling and activations (routed torch calls) -------------------------------

_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_IN_PLACE_ADDS = {torch.Tensor.add_, torch.Tensor.__iadd__}
_POOLS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
          F.adaptive_avg_pool3d}
_MEANS = {torch.mean, torch.Tensor.mean}
_ACTIVATION_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
                         F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_, F.silu, F.gelu, F.hardswish, F.mish,
                         F.elu, F.elu_, torch.tanh, torch.Tensor.tanh}


def _needs_grad(value) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad


def sum_backward(stabilizer: float):
    """Backward of ``a + b`` by the proportional rule; broadcast operands get their summed share."""

    def backward(inputs: tuple[torch.Tensor, torch.Tensor], relevance: torch.Tensor):
        a, b = inputs
        scaled = ratio(relevance, a + b, stabilizer)
        return (a * scaled).sum_to_size(a.shape), scaled.mul_(b).sum_to_size(b.shape)

    return backward


class _InPlaceSum(torch.autograd.Function):
    """``a += b`` (a stays the same tensor, as the caller expects) with the proportional rule."""

    @staticmethod
    def forward(ctx, a, b, stabilizer):
        ctx.save_for_backward(a.clone(), b)  # a as it was before the sum
        ctx.stabilizer = stabilizer
        a.add_(b)
        ctx.mark_dirty(a)
        return a

    @staticmethod
    def backward(ctx, relevance):
        return (*sum_backward(ctx.stabilizer)(ctx.saved_tensors, relevance), None)


def function_rules(canonizers: set[str], stabilizer: float):
    """The handler for :meth:`deepscope.probe.Probe.route_functions` that applies the routed canonizers."""
    sums, pools, activations = ("residual-sum" in canonizers, "functional-pool" in canonizers,
                                "functional-activation" in canonizers)

    def handler(func, args, kwargs):
        if not (args and _needs_grad(args[0]) and torch.is_grad_enabled()):
            return NotImplemented
        if sums and len(args) == 2 and _needs_grad(args[1]) and not kwargs:
            if func in _ADDS:
                a, b = args
                return attach_backward(torch.add(a.detach(), b.detach()), (a, b), sum_backward(stabilizer))
            if func in _IN_PLACE_ADDS:
                return _InPlaceSum.apply(args[0], args[1], stabilizer)
        if pools and (func in _POOLS or func in _MEANS and _spatial_mean(args, kwargs)):
            x, rest = args[0], args[1:]
            pooled = func(x.detach(), *rest, **kwargs)
            return attach_backward(pooled, (x,), proportional(lambda t: func(t, *rest, **kwargs), stabilizer))
        if activations and func in _ACTIVATION_FUNCTIONS:
            x = args[0]
            return attach_backward(func(x.detach(), *args[1:], **kwargs), (x,), pass_through)
        return NotImplemented

    return handler


def _spatial_mean(args: tuple, kwargs: dict) -> bool:
    """Whether a ``mean`` call averages only over spatial axes (2 and up): global average pooling."""
    x = args[0]
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dims is None or x.ndim < 3 or kwargs.get("dtype") is not None:
        return False
    dims = [dims] if isinstance(dims, int) else list(dims)
    return bool(dims) and all(d % x.ndim >= 2 for d in dims)


# -- what may remain in the autograd graph ---------------------------------------------------------------

#: Graph nodes (grad_fn class names without the trailing number) whose gradient is LRP's rule already:
#: reshaping and indexing, concatenation, zero padding, max pooling (relevance to the maximum), dtype
#: copies, and ReLU-like gates on activations whose relevance is already 0 where the gate is closed.
_NEUTRAL_NODES = {
    "AccumulateGrad", "ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "_UnsafeViewBackward",
    "PermuteBackward", "TransposeBackward", "TBackward", "SqueezeBackward", "UnsqueezeBackward", "ExpandBackward",
    "SliceBackward", "SelectBackward", "IndexBackward", "CatBackward", "StackBackward", "SplitBackward",
    "SplitWithSizesBackward", "UnbindBackward", "CloneBackward", "ToCopyBackward", "AliasBackward",
    "ConstantPadNdBackward", "MaxPool1DWithIndicesBackward", "MaxPool2DWithIndicesBackward",
    "MaxPool3DWithIndicesBackward", "AdaptiveMaxPool1DBackward", "AdaptiveMaxPool2DBackward",
    "AdaptiveMaxPool3DBackward", "ReluBackward", "ThresholdBackward", "HardtanhBackward",
    "UpsampleNearest1DBackward", "UpsampleNearest2DBackward", "UpsampleNearest3DBackward",
}
_HINTS = {
    "AddBackward": "an addition (with a scalar, a constant, or a scaling factor)",
    "SubBackward": "a subtraction",
    "MulBackward": "a product (a gate, attention, or a scaling)",
    "DivBackward": "a division",
    "SigmoidBackward": "a sigmoid",
    "MeanBackward": "a mean that is not a spatial average pooling",
    "SumBackward": "a sum over an axis",
    "NativeLayerNormBackward": "layer normalisation",
    "NativeGroupNormBackward": "group normalisation",
    "ConvolutionBackward": "a convolution LRP did not see as a module (called as a function?)",
    "AddmmBackward": "a matrix product LRP did not see as an nn.Linear module",
    "MmBackward": "a matrix product",
    "BmmBackward": "a batched matrix product (attention)",
    "SoftmaxBackward": "a softmax (explain logits, not probabilities)",
}


def check_graph(output: torch.Tensor, allowed: tuple[type, ...] = ()) -> None:
    """Raise :class:`UnsupportedModelError` if ``output``'s graph holds an operation LRP has no rule for.

    After the forward pass of :class:`~deepscope.attribution.lrp.LRP`, every layer with a rule is one node
    (its backward is the rule) and the routed canonizers are nodes of their own; whatever else is left ran
    in the model's own code. Only the operations whose gradient is already LRP's rule may remain.
    """
    allowed = (AttachedBackward, _InPlaceSum, *allowed)
    seen, stack, refused = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__.rstrip("0123456789")
        if getattr(node, "_forward_cls", None) not in allowed and name not in _NEUTRAL_NODES:
            refused.append(name)
        stack.extend(next_node for next_node, _ in node.next_functions)
    if refused:
        kinds = sorted(set(refused))
        described = "; ".join(f"{_HINTS.get(k, 'an operation')} ({k})" for k in kinds[:3])
        raise UnsupportedModelError(
            f"LRP has no rule for what the model's forward code does outside the layers it handles: {described}. "
            "Its relevance would not be conserved; use gradient, ig or a CAM for this model.")
