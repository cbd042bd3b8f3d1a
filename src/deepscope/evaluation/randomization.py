"""Sanity checks by cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018).

The weights of a *copy* of the model are randomised layer by layer from the top (the output layer)
down, and the method's map is recomputed after each step. A map that explains the model must change:
its rank correlation (Spearman) and structural similarity (SSIM) with the original map should drop.
Adebayo et al. found that the gradient and Grad-CAM pass, while guided backprop and guided Grad-CAM
stay almost unchanged (they behave like edge detectors). The user's model is never modified.

Randomisation: each parameter tensor of a layer is replaced by Gaussian noise with that tensor's own
mean and standard deviation (seeded), which keeps the scale of activations and destroys what was
learned; buffers (BatchNorm running statistics) are kept. The class explained stays the original
model's prediction at every step.

Similarity (per image, on the one-channel saliency of
:func:`~deepscope.evaluation.common.saliency`): ``spearman`` is the rank correlation of the *absolute*
maps, as in Adebayo et al.'s main figures (for signed single-channel maps ``spearman_signed`` keeps
the sign; maps reduced with ``abs-max`` are already absolute); ``ssim`` is
:func:`skimage.metrics.structural_similarity` of the absolute maps scaled to [0, 1].

A map that is constant (a Grad-CAM whose every weighted channel is negative becomes all zeros after its
ReLU) has no ranks to correlate: its correlation is undefined. Results flag such maps (``constant``,
``original_constant``) and leave them out of the means; a summary that reads NaN with
``top_layer_constant`` equal to the number of images means "every map became constant", which passes the
check (the map no longer shows anything the trained model saw) rather than failing it.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deepscope.attribution.base import check_inputs
from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import DEFAULT_REDUCTION, Explainer, explain_in_chunks, saliency
from deepscope.maps import normalize
from deepscope.probe import Probe, get_layer, model_device
from deepscope.targets import Target, resolve_target

#: Builds the explanation for a model: an Attribution class or ``lambda m: Method(m, ...)``.
MethodBuilder = Callable[[nn.Module], Explainer]
ORDERS = ("top-down", "bottom-up")


@dataclass
class RandomizationResult:
    """Maps and similarities along the cascade; row 0 is the model before any randomisation.

    Attributes
    ----------
    layers : list of str
        Layers randomised, in cascade order (the output layer first); row ``k`` of the tensors below is
        the model with ``layers[:k]`` randomised.
    maps : (S + 1, N, 1, H, W) tensor
        Saliency of each image at each step.
    spearman, spearman_signed, ssim : (S + 1, N) tensors
        Similarity of each step's map with the original map (row 0 compares a recomputation on the
        untouched copy, so it is 1 for a deterministic method). The correlations are NaN exactly where a
        map is constant (``constant`` or ``original_constant``).
    constant : (S + 1, N) bool tensor
        The step's map is constant (the same value at every pixel).
    original_constant : (N,) bool tensor
        The original model's map is constant.
    """

    layers: list[str]
    maps: torch.Tensor
    spearman: torch.Tensor
    spearman_signed: torch.Tensor
    ssim: torch.Tensor
    constant: torch.Tensor
    original_constant: torch.Tensor

    @property
    def top_layer_spearman(self) -> float:
        """Mean rank correlation after randomising only the output layer (the first cascade step), over
        the maps that are not constant; NaN when every one is (see :attr:`top_layer_constant`)."""
        return self.mean_spearman(1)

    @property
    def top_layer_ssim(self) -> float:
        return float(self.ssim[1].mean()) if len(self.layers) else float("nan")

    @property
    def top_layer_constant(self) -> int:
        """How many images have a constant map after the first step (or before any randomisation)."""
        return int((self.constant[1] | self.original_constant).sum()) if len(self.layers) else 0

    @property
    def last_spearman(self) -> float:
        """Mean rank correlation after the last step (every layer in ``layers`` randomised), over the maps
        that are not constant."""
        return self.mean_spearman(len(self.layers))

    def mean_spearman(self, step: int) -> float:
        """Mean rank correlation of |maps| at ``step`` over the images whose maps are not constant."""
        defined = ~(self.constant[step] | self.original_constant)
        return float(self.spearman[step][defined].mean()) if defined.any() else float("nan")


def randomization_layers(model: nn.Module, depth: int | None = None) -> list[str]:
    """Layers with parameters in cascade order: the one nearest the output first.

    ``depth=None`` lists every module that holds parameters itself (each convolution, BatchNorm and
    linear layer). ``depth=k`` groups them into blocks named by their first ``k`` dotted parts
    (``depth=2`` on MobileNet-V2: ``classifier.2``, ``features.18``, ..., ``features.0``), fewer and
    faster steps.
    """
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or next(module.parameters(recurse=False), None) is None:
            continue
        block = ".".join(name.split(".")[:depth]) if depth else name
        if block not in names:
            names.append(block)
    return names[::-1]


def randomize_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Replace every parameter of ``module`` (and its sub-modules) by noise with the tensor's own mean and std."""
    with torch.no_grad():
        for parameter in module.parameters():
            mean = parameter.float().mean()
            std = parameter.float().std() if parameter.numel() > 1 else torch.zeros(())
            noise = torch.randn(parameter.shape, generator=generator).to(parameter.device)
            parameter.copy_((noise * std + mean).to(parameter.dtype))


def cascading_randomization(method: MethodBuilder, model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                            layers: Sequence[str] | None = None, depth: int | None = None,
                            max_steps: int | None = None, order: str = "top-down", seed: int = 0,
                            batch_size: int | None = None, reduction: str = DEFAULT_REDUCTION,
                            progress: bool = False) -> RandomizationResult:
    """Randomise a copy of ``model`` from the top layer down and compare each step's maps with the original.

    Parameters
    ----------
    method : callable ``model -> explainer``
        Builds the explanation for a model: an Attribution class (``Gradient``) or a function
        (``lambda m: GuidedBackprop(m)``, ``lambda m: build_method("gradcam", m)``). It is built again on
        each randomised copy.
    model : nn.Module
        The user's model; only a deep copy is randomised.
    inputs : (N, C, H, W) tensor
        Model input on the model's device.
    target : Target
        Classes explained (default: the original model's prediction), the same at every step.
    layers : list of str, optional
        Layers (or blocks) to randomise, in cascade order; default :func:`randomization_layers`.
    depth : int, optional
        With ``layers=None``: group layers into blocks of this many dotted parts.
    max_steps : int, optional
        Stop after randomising this many layers (the first ones in cascade order), for speed.
    order : "top-down" or "bottom-up"
        With ``layers=None``: randomise from the output layer down (Adebayo et al.) or from the input
        layer up (Hedström et al.'s choice for sMPRT).
    batch_size : int, optional
        Images explained per call (default: all at once).
    """
    from tqdm.auto import tqdm

    check_inputs(inputs)
    if order not in ORDERS:
        raise DeepscopeError(f"unknown order {order!r}; choose {' or '.join(ORDERS)}.")
    build = builder(method)
    inputs = inputs.detach()
    resolved, original = original_maps(build, model, inputs, target, reduction, batch_size)
    size = tuple(inputs.shape[-2:])

    randomized = copy_model(model)
    cascade = list(layers) if layers is not None else randomization_layers(randomized, depth)
    if layers is None and order == "bottom-up":
        cascade.reverse()
    if max_steps is not None:
        cascade = cascade[:max_steps]
    modules = [get_layer(randomized, name) for name in cascade]
    if not cascade:
        raise DeepscopeError("the model has no layer with parameters to randomise.")
    generator = torch.Generator().manual_seed(seed)
    maps = [saliency(explain_in_chunks(build(randomized), inputs, resolved, batch_size), size, reduction)]
    for module in tqdm(modules, desc="randomising", unit="layer", disable=not progress, leave=False):
        randomize_parameters(module, generator)
        maps.append(saliency(explain_in_chunks(build(randomized), inputs, resolved, batch_size), size, reduction))
    stacked = torch.stack(maps)
    return RandomizationResult(
        layers=cascade,
        maps=stacked,
        spearman=torch.stack([spearman(original.abs(), m.abs()) for m in maps]),
        spearman_signed=torch.stack([spearman(original, m) for m in maps]),
        ssim=torch.stack([ssim(original, m) for m in maps]),
        constant=is_constant(stacked.flatten(2)),
        original_constant=is_constant(original.flatten(1)))


def original_maps(build: Callable[[nn.Module], Explainer], model: nn.Module, inputs: torch.Tensor, target: Target,
                  reduction: str | None, batch_size: int | None = None):
    """``target`` resolved on the original model's output, and the saliency of its maps at the input's size."""
    with Probe(model, detach=True), torch.inference_mode():
        resolved = resolve_target(target, model(inputs))
    if isinstance(resolved, torch.Tensor):
        resolved = resolved.clone()  # a normal tensor, usable outside inference mode
    maps = explain_in_chunks(build(model), inputs, resolved, batch_size)
    return resolved, saliency(maps, tuple(inputs.shape[-2:]), reduction)


def is_constant(values: torch.Tensor) -> torch.Tensor:
    """Whether each map (the last dimension of ``values``) holds a single value."""
    return values.amax(dim=-1) == values.amin(dim=-1)


def copy_model(model: nn.Module) -> nn.Module:
    """An independent copy of ``model``; TorchScript modules go through a save/load round trip
    (``copy.deepcopy`` of a ScriptModule gives parameters that are not leaves)."""
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but the user's file is one
            torch.jit.save(model, buffer)
            buffer.seek(0)
            return torch.jit.load(buffer, map_location=model_device(model))
    return copy.deepcopy(model)


def builder(method: MethodBuilder) -> Callable[[nn.Module], Explainer]:
    """``method`` checked: a callable that builds an explainer from a model (never a method's name)."""
    if isinstance(method, str) or not callable(method):
        raise DeepscopeError(f"method must build an explanation from a model (an Attribution class or a function "
                             f"model -> method, e.g. lambda m: build_method('gradient', m)); got {method!r}.")
    return method


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (from 1) along the last dimension of (N, K) ``values``; tied values share their average rank."""
    ordered, order = values.sort(dim=1)
    position = torch.arange(values.shape[1], device=values.device, dtype=torch.float64).expand_as(ordered)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.cumsum(dim=1) - 1  # tie group of each sorted value
    first = torch.zeros_like(position).scatter_reduce(1, group, position, "amin", include_self=False)
    last = torch.zeros_like(position).scatter_reduce(1, group, position, "amax", include_self=False)
    average = (first.gather(1, group) + last.gather(1, group)) / 2 + 1
    return torch.empty_like(average).scatter_(1, order, average)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) Spearman rank correlation between the maps of ``a`` and ``b`` (each (N, ...)), ties averaged.

    A constant map has no ranks to correlate: its correlation is NaN.
    """
    if a.shape != b.shape:
        raise DeepscopeError(f"maps to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    return ((ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1))).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) structural similarity of (N, 1, H, W) maps, each made absolute and scaled to [0, 1] first."""
    from skimage.metrics import structural_similarity

    x = normalize(a.abs().float(), "minmax").squeeze(1).cpu().numpy()
    y = normalize(b.abs().float(), "minmax").squeeze(1).cpu().numpy()
    side = min(x.shape[-2:])
    window = min(7, side if side % 2 else side - 1)  # skimage's default 7x7 window, smaller for tiny maps
    values = [structural_similarity(p, q, data_range=1.0, win_size=window) for p, q in zip(x, y)]
    return torch.tensor(values, dtype=torch.float32, device=a.device)
