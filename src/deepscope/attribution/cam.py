"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, Score-CAM, Layer-CAM, HiResCAM, XGrad-CAM, Eigen-CAM,
Ablation-CAM and guided Grad-CAM.

Every CAM here runs one shared pipeline (:class:`ClassActivationMap`); a method only says how it
combines a layer's activations ``A`` (N, K, h, w) -- and, for the gradient methods, the gradients
``G = d score / d A`` -- into one map per sample:

1. the layer: ``layer="features.18"`` (any layer by name), a list of names, or ``None`` for the last
   convolutional block, found by :func:`default_cam_layer`;
2. one forward pass through :class:`~deepscope.probe.Probe` captures ``A`` (graph-connected) and one
   ``torch.autograd.grad`` of the summed target scores gives ``G`` for the whole batch;
3. token maps of vision transformers, (N, tokens, C), become a (N, C, h, w) grid (:func:`token_grid`);
4. the method's combination, then a ReLU (``relu=False`` keeps the signed map);
5. :meth:`~ClassActivationMap.attribute_raw` returns the map at the layer's resolution (N, 1, h, w),
   :meth:`~ClassActivationMap.attribute` the same map upsampled once (bilinear) to the input size.

Maps are not normalised (use :func:`deepscope.maps.normalize`), with one exception: several layers
are combined as the mean of their min-max normalised maps (as pytorch-grad-cam does).

The formulas follow pytorch-grad-cam 1.5.7, so the maps agree with it (tests/test_cam_reference.py), except
where a method's docstring says otherwise (Eigen-CAM's sign, Ablation-CAM's ablated value). FullGrad, which
weights no layer, is :mod:`deepscope.attribution.fullgrad`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from deepscope.attribution.base import Attribution, check_inputs
from deepscope.attribution.guided import GuidedBackprop
from deepscope.errors import DeepscopeError, LayerNotFoundError, TargetError, UnsupportedModelError
from deepscope.maps import Display, normalize, upsample
from deepscope.probe import Probe, check_hookable, get_layer, layer_names
from deepscope.targets import Target, repeat_target, resolve_target, target_scores

#: modules whose output is never the default CAM layer (the pooling head and pooling inside it)
POOLING_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)
#: names of the layer-norm that starts a transformer block (timm ``norm1``, torchvision ``ln_1``)
TOKEN_LAYER_SUFFIXES = ("norm1", "ln_1")
MAX_PREFIX_TOKENS = 8

Layers = str | Sequence[str] | None


def token_grid(activation: torch.Tensor, prefix_tokens: int | None = None, layer: str = "") -> torch.Tensor:
    """A layer's output as a (N, C, h, w) map: 4-D maps as they are, token maps reshaped.

    A (N, T, C) token sequence is read as ``prefix`` class/register tokens followed by ``h * h`` patch
    tokens in row-major order; the prefix tokens are dropped. ``prefix_tokens`` (timm models carry it as
    ``model.num_prefix_tokens``) is found otherwise as the smallest count, up to 8, that leaves a square.

    Raises
    ------
    UnsupportedModelError
        For any other shape.
    """
    if activation.ndim == 4:
        return activation
    if activation.ndim == 3:
        n, tokens, channels = activation.shape
        side = _grid_side(tokens, prefix_tokens)
        if side:
            return activation[:, tokens - side * side:].transpose(1, 2).reshape(n, channels, side, side)
    raise UnsupportedModelError(
        f"layer {layer!r} outputs shape {tuple(activation.shape)}; class activation maps need a (N, C, H, W) map "
        "or a (N, tokens, C) sequence of a square patch grid. Choose a convolutional or transformer-block layer "
        "with --layer (`deepscope layers MODEL` lists them).")


def _grid_side(tokens: int, prefix_tokens: int | None) -> int:
    """Side of the square patch grid in a sequence of ``tokens`` tokens, or 0 if there is none."""
    prefixes = [prefix_tokens] if prefix_tokens is not None else range(min(tokens, MAX_PREFIX_TOKENS + 1))
    for prefix in prefixes:
        side = math.isqrt(max(tokens - prefix, 0))
        if side > 1 and side * side == tokens - prefix:
            return side
    return 0


def default_cam_layer(model: nn.Module, inputs: torch.Tensor) -> str:
    """The layer CAMs use by default: the last convolutional block before the pooling head.

    One forward pass of ``inputs[:1]`` records every module's output shape. The answer is the last module
    (in the order modules finish) whose output is a spatial map (N, C, h, w) with h*w > 1 and which is not
    a pooling module -- the outermost block wins over its last child: ``features`` for MobileNet-V2
    (torchvision and TFLite imports) and DenseNet, ``layer4`` for ResNets, ``bn2`` (the activated
    ``conv_head``) for timm EfficientNets.

    Vision transformers: when the last such output is a token sequence, the class token's readout makes
    the gradient at the last block's output zero for every patch token, so the answer is the last
    block's first layer-norm (``blocks.11.norm1`` in timm's ViT, ``...ln_1`` in torchvision's), as
    pytorch-grad-cam recommends.
    """
    prefix = getattr(model, "num_prefix_tokens", None)
    candidates: list[tuple[str, bool]] = []  # (name, is a token sequence)
    with Probe(model, layer_names(model), detach=True) as probe, torch.inference_mode():
        probe(inputs[:1])
        modules = dict(model.named_modules())
        for name, output in probe.activations.items():
            if isinstance(modules[name], POOLING_TYPES):
                continue
            if output.ndim == 4 and output.shape[2] * output.shape[3] > 1:
                candidates.append((name, False))
            elif output.ndim == 3 and _grid_side(output.shape[1], prefix):
                candidates.append((name, True))
    if not candidates:
        raise UnsupportedModelError("found no layer with a spatial map (N, C, H, W) or a patch-token sequence in "
                                    "this model; class activation maps need one. Pass layer=... explicitly.")
    name, is_tokens = candidates[-1]
    if is_tokens:
        starts = [n for n, tokens in candidates if tokens and n.endswith(TOKEN_LAYER_SUFFIXES)]
        name = starts[-1] if starts else name
    return name


def run_channels_last(model: Callable, inputs: torch.Tensor) -> torch.Tensor:
    """``model(inputs)`` with the batch in channels-last memory layout (same values, faster convolutions on CPU:
    1.6x for MobileNet-V2 here). A model whose forward calls ``.view`` on a spatial map cannot take that layout;
    it gets the batch as given."""
    fast = inputs.contiguous(memory_format=torch.channels_last)
    if fast is inputs:
        return model(inputs)
    try:
        return model(fast)
    except RuntimeError as error:
        if "view size is not compatible" not in str(error):
            raise
    return model(inputs)


@dataclass
class _Pass:
    """What the shared forward (and backward) pass gives a method's combination step."""

    inputs: torch.Tensor
    output: torch.Tensor
    target: torch.Tensor | Callable
    layer: str


class ClassActivationMap(Attribution):
    """The shared pipeline (see the module docstring); subclasses implement :meth:`_combine`.

    Parameters
    ----------
    model : nn.Module
    layer : str, list of str, or None
        The layer(s) whose activations are weighted; ``None``: :func:`default_cam_layer`.
    relu : bool
        Apply the ReLU of the method's paper (``False`` gives the signed map before it).
    """

    name = "cam-base"
    uses_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, layer: Layers = None, relu: bool = True):
        super().__init__(model)
        check_hookable(model)
        self.layer = layer
        if layer is not None:
            for name in self.layers_for(None):  # a misspelt layer fails here, before any work
                get_layer(model, name)
        self.relu = relu
        self.display = Display(signed=not relu)
        self._found_layer: str | None = None

    # -- public ----------------------------------------------------------------------------------------
    def layers_for(self, inputs: torch.Tensor | None) -> list[str]:
        """The layer names used for ``inputs`` (the default layer is found once, then remembered)."""
        if self.layer is None:
            if self._found_layer is None:
                self._found_layer = default_cam_layer(self.model, inputs)
            return [self._found_layer]
        if isinstance(self.layer, str):
            return [self.layer]
        layers = list(self.layer)
        if not layers or not all(isinstance(n, str) for n in layers):
            raise DeepscopeError(f"layer must be a layer name or a non-empty list of names, got {self.layer!r}.")
        return layers

    def attribute_raw(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """The map at the layer's resolution, (N, 1, h, w), before upsampling.

        With several layers: the mean of their min-max normalised maps at the finest layer's resolution.
        """
        with torch.inference_mode(False):
            maps = self._layer_maps(check_inputs(inputs, self.model), target)
        if len(maps) == 1:
            return maps[0]
        return _mean_of_normalised(maps, max((tuple(m.shape[-2:]) for m in maps), key=math.prod))

    # -- the pipeline --------------------------------------------------------------------------------------
    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        maps = self._layer_maps(inputs, target)
        size = tuple(inputs.shape[-2:])
        return upsample(maps[0], size) if len(maps) == 1 else _mean_of_normalised(maps, size)

    def _layer_maps(self, inputs: torch.Tensor, target: Target) -> list[torch.Tensor]:
        layers = self.layers_for(inputs)
        prefix = getattr(self.model, "num_prefix_tokens", None)
        grad_mode = torch.enable_grad() if self.uses_gradients else torch.inference_mode()
        # One layer: its activation starts the graph, so the forward up to it costs what inference costs.
        start_graph = self.uses_gradients and len(layers) == 1
        with Probe(self.model, layers, detach=not self.uses_gradients, start_graph=start_graph) as probe, grad_mode:
            x = inputs.requires_grad_(True) if self.uses_gradients and not start_graph else inputs
            output = run_channels_last(probe, x)
            resolved = resolve_target(target, output)
            missing = [name for name in layers if name not in probe.activations]
            if missing:
                raise LayerNotFoundError(f"layer {missing[0]!r} gave no tensor output in the forward pass (the "
                                         "model's forward does not call it); choose another layer.")
            captured = [probe.activations[name] for name in layers]
            if self.uses_gradients:
                gradients = torch.autograd.grad(target_scores(output, resolved).sum(), captured)
            else:
                gradients = [None] * len(layers)
        maps = []
        for name, activation, gradient in zip(layers, captured, gradients):  # the graph is no longer needed
            activation = token_grid(activation.detach(), prefix, name)
            gradient = None if gradient is None else token_grid(gradient, prefix, name)
            with torch.no_grad():
                cam = self._combine(activation, gradient, _Pass(inputs.detach(), output.detach(), resolved, name))
            maps.append(cam.clamp_min(0) if self.relu else cam)
        return maps

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor | None, context: _Pass) -> torch.Tensor:
        """(N, K, h, w) activations (and gradients) -> (N, 1, h, w) map, before the ReLU."""
        raise NotImplementedError


def _weighted_sum(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """sum_k weights[n, k] * activation[n, k] as (N, 1, h, w)."""
    return torch.einsum("nk,nkhw->nhw", weights, activation).unsqueeze(1)


def _mean_of_normalised(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    return torch.stack([normalize(upsample(m, size), "minmax") for m in maps]).mean(0)


class GradCAM(ClassActivationMap):
    """Grad-CAM (Selvaraju et al., 2017): channel weights = spatial mean of the gradient."""

    name = "gradcam"

    def _combine(self, activation, gradient, context):
        return _weighted_sum(gradient.mean(dim=(2, 3)), activation)


class GradCAMPlusPlus(ClassActivationMap):
    """Grad-CAM++ (Chattopadhay et al., 2018): channel weights = sum of ReLU(gradient) x alpha.

    ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` (their Eq. 19, the exponential-score closed form), zero where
    the gradient is zero -- as pytorch-grad-cam computes it.
    """

    name = "gradcam++"

    def _combine(self, activation, gradient, context):
        g2 = gradient.pow(2)
        alpha = g2 / (2 * g2 + activation.sum(dim=(2, 3), keepdim=True) * g2 * gradient + 1e-6)
        alpha = torch.where(gradient != 0, alpha, torch.zeros_like(alpha))
        return _weighted_sum((gradient.clamp_min(0) * alpha).sum(dim=(2, 3)), activation)


class LayerCAM(ClassActivationMap):
    """Layer-CAM (Jiang et al., 2021): every position has its own weight, ReLU(gradient) x activation."""

    name = "layercam"

    def _combine(self, activation, gradient, context):
        return (gradient.clamp_min(0) * activation).sum(dim=1, keepdim=True)


class HiResCAM(ClassActivationMap):
    """HiResCAM (Draelos and Carin, 2020): the element-wise product of gradient and activation, summed over channels.

    Unlike Grad-CAM, no averaging of the gradient over space: for a model whose head is one linear layer
    after the layer, the map (before the ReLU) sums exactly to the score minus the bias.
    """

    name = "hirescam"

    def _combine(self, activation, gradient, context):
        return (gradient * activation).sum(dim=1, keepdim=True)


class XGradCAM(ClassActivationMap):
    """XGrad-CAM (Fu et al., 2020): channel weights = sum over space of gradient x activation, divided by the
    channel's activation sum (plus 1e-7, as pytorch-grad-cam)."""

    name = "xgradcam"

    def _combine(self, activation, gradient, context):
        weights = (gradient * activation).sum(dim=(2, 3)) / (activation.sum(dim=(2, 3)) + 1e-7)
        return _weighted_sum(weights, activation)


class EigenCAM(ClassActivationMap):
    """Eigen-CAM (Muhammad and Yeasin, 2020): the projection of the layer's maps on their first principal component.

    Differs from the protocol: class-agnostic (the target is checked but does not change the map), no gradients.
    Each image's activations, as (h * w) positions x K channels centred per channel, are projected on their
    first right singular vector, as pytorch-grad-cam computes it. A singular vector's sign is arbitrary
    (pytorch-grad-cam keeps LAPACK's); here it is chosen so that the map correlates positively with the
    channels' sum, i.e. high where the layer is strongly active.
    """

    name = "eigencam"
    uses_gradients = False

    def _combine(self, activation, gradient, context):
        n, k, h, w = activation.shape
        positions = activation.flatten(2).transpose(1, 2)  # (N, h * w, K)
        positions = positions - positions.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(positions, full_matrices=False)
        projection = (positions @ vh[:, 0, :, None]).squeeze(2)  # (N, h * w)
        agreement = (projection * positions.sum(dim=2)).sum(dim=1)
        sign = torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)
        return (projection * sign[:, None]).view(n, 1, h, w)


#: how often AblationCAM runs the layers before its layer, from the cheapest (see :class:`AblationCAM`)
PREFIX_RUNS = ("none", "once", "per copy")


class AblationCAM(ClassActivationMap):
    """Ablation-CAM (Desai and Ramaswamy, 2020): channel weights = the relative drop of the score when the
    channel is set to zero, ``(y - y_k) / y``.

    Differs from the protocol: no gradients; one pass of the layers after ``layer`` per channel and image,
    ``batch_size`` ablated copies at a time under ``torch.inference_mode()``. A :class:`~deepscope.probe.Probe`
    hook replaces the layer's output by the batch of copies, each with another channel zeroed, so only the
    layers after ``layer`` need to run on every copy. How often the layers before it run (stored in
    :attr:`prefix_runs_`, cheapest first):

    - ``"none"``: the model runs on an empty batch and the hook puts in copies of the layer's output from
      the shared pass, so the layers before cost nothing. Needs a chain: every later layer reads only what
      comes from ``layer``;
    - ``"once"``: the model runs on the one image and the hook turns the layer's output into the copies;
      residual additions of earlier outputs broadcast the image's values to every copy;
    - ``"per copy"``: the whole model runs on copies of the image (any model; a concatenation with an earlier
      output, as in DenseNet, needs it).

    The cheapest one that works is found on the first image of each call: two unablated copies must give the
    image's own score (and an error, such as adding a batch of copies to an empty or single-image batch,
    rules a way out).

    Channels that are zero everywhere are not run: zeroing them changes nothing and their weight multiplies a
    zero map. The ablated value is always 0 (the paper's); pytorch-grad-cam 1.5.7 uses 0 only when the
    layer's smallest value is 0 and a large negative number otherwise. A zero score divides by 1.

    Parameters
    ----------
    batch_size : int
        Ablated copies per forward pass.
    progress : bool
        Show a progress bar over the images.
    """

    name = "ablationcam"
    uses_gradients = False

    def __init__(self, model: nn.Module, layer: Layers = None, batch_size: int = 64, relu: bool = True,
                 progress: bool = False):
        super().__init__(model, layer=layer, relu=relu)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DeepscopeError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.batch_size = batch_size
        self.progress = progress
        self.prefix_runs_: str | None = None

    def _combine(self, activation, gradient, context):
        clean = target_scores(context.output, context.target)
        ablated = self.ablated_scores(activation, context)
        divisor = torch.where(clean == 0, torch.ones_like(clean), clean)[:, None]
        return _weighted_sum(((clean[:, None] - ablated) / divisor).to(activation.dtype), activation)

    def ablated_scores(self, activation: torch.Tensor, context: _Pass) -> torch.Tensor:
        """(N, K) target scores with each channel of ``context.layer`` zeroed (the clean score for channels that
        are zero everywhere)."""
        n, k = activation.shape[:2]
        clean = target_scores(context.output, context.target)
        scores = clean[:, None].repeat(1, k)
        live = activation.flatten(2).ne(0).any(dim=2)
        # keep (B, K): 1 keeps a channel of a copy, 0 zeroes it; base: the layer output the copies are made of
        state = {"keep": None, "base": None, "calls": 0}

        def ablate(output):
            state["calls"] += 1
            if state["calls"] > 1:
                raise UnsupportedModelError(f"layer {context.layer!r} runs more than once per forward pass; "
                                            "AblationCAM cannot ablate it. Choose another layer.")
            if not isinstance(output, torch.Tensor):
                raise UnsupportedModelError(f"layer {context.layer!r} does not output one tensor; AblationCAM "
                                            "needs a (N, C, H, W) map or a (N, tokens, C) sequence.")
            base = output if state["base"] is None else state["base"]
            if base.ndim != output.ndim:
                raise RuntimeError("the shared pass's activation is a token grid, not the layer's output")
            keep = state["keep"]
            shape = (len(keep), 1, k) if base.ndim == 3 else (len(keep), k) + (1,) * (base.ndim - 2)
            return base * keep.view(shape).to(base.dtype)

        def run(i: int, keep: torch.Tensor, prefix: str) -> torch.Tensor:
            """Target scores of copies of image ``i`` ablated by ``keep``, the layers before run as ``prefix`` says."""
            state.update(keep=keep, calls=0, base=activation[i:i + 1] if prefix == "none" else None)
            image = context.inputs[i:i + 1]
            x = {"none": image[:0], "once": image}.get(prefix, image.expand(len(keep), -1, -1, -1))
            output = run_channels_last(probe, x)
            if len(output) != len(keep):
                raise RuntimeError("the output's batch is not the copies'")
            target = context.target[i:i + 1].expand(len(keep)) if isinstance(context.target, torch.Tensor) \
                else context.target
            return target_scores(output, target)

        with Probe(self.model) as probe, torch.inference_mode():
            probe.replace_output(context.layer, ablate)
            self.prefix_runs_ = self._cheapest_prefix(run, clean, k, activation)
            for i in tqdm(range(n), desc="Ablation-CAM", unit="image", disable=not self.progress, leave=False):
                channels = live[i].nonzero().squeeze(1)
                for chunk in channels.split(self.batch_size):
                    keep = torch.ones(len(chunk), k, device=activation.device, dtype=activation.dtype)
                    keep[torch.arange(len(chunk), device=chunk.device), chunk] = 0
                    scores[i, chunk] = run(i, keep, self.prefix_runs_).to(scores.dtype)
        return scores

    @staticmethod
    def _cheapest_prefix(run, clean: torch.Tensor, k: int, activation: torch.Tensor) -> str:
        """The first of :data:`PREFIX_RUNS` with which two unablated copies of the first image give its score."""
        keep = torch.ones(2, k, device=activation.device, dtype=activation.dtype)
        tolerance = 1e-4 * float(clean.abs().max().clamp_min(1))
        for prefix in PREFIX_RUNS[:-1]:
            try:
                scores = run(0, keep, prefix)
            except (RuntimeError, ValueError, IndexError):
                continue
            if bool((scores - clean[0]).abs().max() <= tolerance):
                return prefix
        return PREFIX_RUNS[-1]


class CAM(ClassActivationMap):
    """CAM (Zhou et al., 2016): ``sum_k w[c, k] A_k`` with the weights of the final linear layer.

    Differs from the protocol: the model must end in global average pooling of the layer followed by one
    linear layer. The head is found automatically -- the last ``nn.Linear`` whose input size is the
    layer's channel count -- and checked on every call: the model's output must equal
    ``W . mean_hw(f(A)) + b`` with ``f`` the identity or a ReLU (DenseNet applies a functional ReLU before
    its pooling); otherwise :class:`~deepscope.errors.UnsupportedModelError`. No ReLU by default
    (``relu=False``), as in the paper; targets must be class indices. Needs no gradients.
    """

    name = "cam"
    uses_gradients = False
    display = Display(signed=True)  # no ReLU by default: negative evidence shows

    def __init__(self, model: nn.Module, layer: Layers = None, relu: bool = False):
        super().__init__(model, layer=layer, relu=relu)

    def _combine(self, activation, gradient, context):
        if not isinstance(context.target, torch.Tensor):
            raise TargetError("CAM explains a class: give the target as a class index (or one per sample), "
                              "not a callable; use gradcam for other scores.")
        linear, feature = self._head(activation, context)
        return _weighted_sum(linear.weight.detach()[context.target].to(activation.dtype), feature(activation))

    def _head(self, activation: torch.Tensor, context: _Pass) -> tuple[nn.Linear, Callable]:
        """The final linear layer and the function applied before pooling, checked against the output."""
        channels = activation.shape[1]
        linears = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        fitting = [(n, m) for n, m in linears if m.in_features == channels]
        advice = "Use gradcam (or gradcam++, layercam, scorecam), which work with any head."
        if not fitting:
            last = (f"its last linear layer {linears[-1][0]!r} takes {linears[-1][1].in_features} features"
                    if linears else "it has no nn.Linear layer")
            raise UnsupportedModelError(
                f"CAM needs global average pooling of layer {context.layer!r} ({channels} channels) followed by "
                f"one linear layer, but {last} (a fully connected head, as in AlexNet and VGG). {advice}")
        name, linear = fitting[-1]
        output = context.output
        for feature in (_identity, F.relu):
            pooled = feature(activation).mean(dim=(2, 3))
            bias = None if linear.bias is None else linear.bias.detach().to(pooled.dtype)
            logits = F.linear(pooled, linear.weight.detach().to(pooled.dtype), bias)
            if logits.shape == output.shape and torch.allclose(
                    logits, output, rtol=1e-3, atol=1e-4 * float(output.abs().max().clamp_min(1))):
                return linear, feature
        raise UnsupportedModelError(
            f"CAM needs the model's output to be {name!r} applied to the global average of layer {context.layer!r}, "
            f"but the output differs from that (checked on this batch): the head between them is not "
            f"pooling + one linear layer. {advice}")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class ScoreCAM(ClassActivationMap):
    """Score-CAM (Wang et al., 2020): channel weights from the model's score on the input masked by each channel.

    Differs from the protocol: no gradients; one forward pass per channel (and image). Each channel's map is
    upsampled to the input size (bilinear with ``align_corners=True``, like pytorch-grad-cam), min-max
    normalised to [0, 1] and multiplied into the input; the weights
    are the softmax over channels of the target's score (the logit) on those masked inputs -- the paper's
    Algorithm 1, as pytorch-grad-cam 1.5.7 computes it. Channels whose maps give the same mask share one
    forward pass: those constant over space (often a quarter or more after a ReLU6) all give the zero mask,
    scored by one forward pass of a zero input, and channels whose maps are equal once min-max normalised
    at the layer's resolution (a map ``a * other + b`` with ``a > 0``: single-cell maps, maps clipped at 6)
    give the same mask up to rounding; one of them is run.

    Parameters
    ----------
    batch_size : int, optional
        Masked inputs per forward pass (they are chunked across images and channels), run under
        ``torch.inference_mode()`` on the input's device; scores stay on the device. Default: 16 on the
        CPU (larger batches of 224 px images run slower there: 1.9x slower at 64 on the development
        machine, where every large block is page-faulted in anew) and 64 on other devices.
    max_channels : int, optional
        Use only the ``max_channels`` channels with the highest spatial variance of each image (the softmax
        then runs over those): cost falls in proportion.
    progress : bool
        Show a progress bar over the chunks.
    """

    name = "scorecam"
    uses_gradients = False

    def __init__(self, model: nn.Module, layer: Layers = None, batch_size: int | None = None,
                 max_channels: int | None = None, relu: bool = True, progress: bool = False):
        super().__init__(model, layer=layer, relu=relu)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise DeepscopeError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if max_channels is not None and (not isinstance(max_channels, int) or max_channels < 1):
            raise DeepscopeError(f"max_channels must be a positive integer or None, got {max_channels!r}.")
        self.batch_size = batch_size
        self.max_channels = max_channels
        self.progress = progress

    def _combine(self, activation, gradient, context):
        n, k, h, w = activation.shape
        if self.max_channels is not None and self.max_channels < k:
            keep = activation.flatten(2).var(dim=2).topk(self.max_channels, dim=1).indices
            activation = activation.gather(1, keep[:, :, None, None].expand(-1, -1, h, w))
            k = self.max_channels
        channel_maps = activation.reshape(n * k, 1, h, w)
        flat = channel_maps.flatten(1)
        varying = (flat.amax(dim=1) > flat.amin(dim=1)).nonzero().squeeze(1)
        owner = torch.arange(n, device=activation.device).repeat_interleave(k)
        run, copies = _distinct_masks(flat[varying], owner[varying])
        run = varying[run]
        targets = repeat_target(context.target, k)
        size = tuple(context.inputs.shape[-2:])
        batch_size = self.batch_size or (16 if context.inputs.device.type == "cpu" else 64)
        parts = []
        with Probe(self.model), torch.inference_mode():
            # A constant map normalises to an all-zero mask: one forward of a zero input scores all of them.
            zero_output = run_channels_last(self.model, torch.zeros_like(context.inputs[:1]))
            scores = target_scores(zero_output.expand(n * k, *zero_output.shape[1:]), targets).clone()
            starts = range(0, len(run), batch_size)
            for start in tqdm(starts, desc="Score-CAM", unit="batch", disable=not self.progress, leave=False):
                chunk = run[start:start + batch_size]
                masks = F.interpolate(channel_maps[chunk], size=size, mode="bilinear", align_corners=True)
                masks = normalize(masks, "minmax", eps=1e-8)
                output = run_channels_last(self.model, context.inputs[owner[chunk]] * masks)
                parts.append(target_scores(output, targets[chunk] if isinstance(targets, torch.Tensor) else targets))
            if parts:
                scores = scores.index_copy(0, varying, torch.cat(parts)[copies])
        weights = scores.view(n, k).to(activation.dtype).softmax(dim=1)
        return _weighted_sum(weights, activation)


def _distinct_masks(maps: torch.Tensor, owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group (M, h * w) non-constant channel maps that give the same Score-CAM mask for the same image.

    Upsampling is linear and keeps constants, so maps equal after min-max normalisation at their own
    resolution give equal masks. Returns ``run``, the index of one map per group, and ``copies``, for every
    map the position in ``run`` of its group's map (so ``scores_run[copies]`` scores every map).
    """
    low, high = maps.amin(dim=1, keepdim=True), maps.amax(dim=1, keepdim=True)
    keys = torch.cat([owner[:, None].to(maps.dtype), (maps - low) / (high - low)], dim=1)
    _, copies = torch.unique(keys, dim=0, return_inverse=True)
    run = torch.full((int(copies.max()) + 1 if len(copies) else 0,), len(copies), device=maps.device,
                     dtype=torch.long).scatter_reduce(0, copies, torch.arange(len(copies), device=maps.device),
                                                      reduce="amin")
    return run, copies


class GuidedGradCAM(Attribution):
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backprop x Grad-CAM upsampled to the input.

    Differs from the protocol: per input channel (N, C, H, W), like guided backprop; ReLU networks only
    (see :class:`~deepscope.attribution.guided.GuidedBackprop`).
    """

    name = "guided-gradcam"
    per_channel = True

    def __init__(self, model: nn.Module, layer: Layers = None):
        super().__init__(model)
        self.layer = layer
        self._guided = GuidedBackprop(model)
        self._gradcam = GradCAM(model, layer=layer)

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        return self._guided.attribute(inputs, target) * self._gradcam.attribute(inputs, target)
