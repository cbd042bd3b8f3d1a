"""Composable objectives for feature visualisation (in the style of Lucid/Lucent).

An :class:`Objective` maps what one forward pass saw (the model output, the captured activations and
the pixels) to one score per image, to be maximised. Objectives combine with arithmetic::

    objective = class_logit(130) - 0.1 * l2()
    objective = channel("features.10", 17) + 0.5 * neuron("features.10", 3)

Each objective lists the layers it reads; the optimiser captures exactly those through
:class:`deepscope.probe.Probe`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from deepscope.errors import TargetError


@dataclass
class Seen:
    """What an objective can read: the model ``output``, layer ``activations`` and the [0, 1] ``pixels``."""

    output: torch.Tensor
    activations: dict[str, torch.Tensor]
    pixels: torch.Tensor


class Objective:
    """A score per image, ``(N,)``, to maximise; combine objectives with ``+``, ``-``, ``*`` and ``/`` by numbers.

    Parameters
    ----------
    fn : callable
        ``fn(seen: Seen) -> (N,) tensor``.
    layers : sequence of str
        Layers whose activations ``fn`` reads.
    name : str
        How the objective prints.
    """

    def __init__(self, fn: Callable[[Seen], torch.Tensor], layers: Sequence[str] = (), name: str = "objective"):
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name

    def __call__(self, seen: Seen) -> torch.Tensor:
        return self.fn(seen)

    def __repr__(self) -> str:
        return self.name

    def __add__(self, other: "Objective | float") -> "Objective":
        if isinstance(other, Objective):
            return Objective(lambda s: self(s) + other(s), self.layers + other.layers, f"{self} + {other}")
        return Objective(lambda s: self(s) + other, self.layers, f"{self} + {other}")

    __radd__ = __add__

    def __neg__(self) -> "Objective":
        return -1 * self

    def __sub__(self, other: "Objective | float") -> "Objective":
        return self + (-other)

    def __rsub__(self, other: float) -> "Objective":
        return (-self) + other

    def __mul__(self, factor: float) -> "Objective":
        if isinstance(factor, Objective):
            raise TypeError("objectives can be multiplied by numbers only")
        return Objective(lambda s: factor * self(s), self.layers, f"{factor} * ({self})")

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> "Objective":
        return self * (1.0 / divisor)


def _per_image(index: int | Sequence[int] | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    index = torch.as_tensor(index, device=device).long()
    return index.expand(n) if index.ndim == 0 else index


def class_logit(classes: int | Sequence[int] | torch.Tensor) -> Objective:
    """The logit (before softmax) of a class, or of one class per image (Simonyan et al. 2014)."""

    def fn(seen: Seen) -> torch.Tensor:
        index = _per_image(classes, seen.output.shape[0], seen.output.device)
        if index.shape[0] != seen.output.shape[0]:
            raise TargetError(f"got {index.shape[0]} classes for {seen.output.shape[0]} images; give one per image.")
        if int(index.max()) >= seen.output.shape[1] or int(index.min()) < 0:
            raise TargetError(f"class out of range: the model has {seen.output.shape[1]} outputs.")
        return seen.output.gather(1, index.view(-1, 1)).squeeze(1)

    return Objective(fn, (), f"class_logit({classes})")


def _channel_check(activation: torch.Tensor, layer: str, channel: int) -> None:
    if not 0 <= channel < activation.shape[1]:
        raise TargetError(f"channel {channel} is out of range: layer {layer!r} has {activation.shape[1]} channels.")


def channel(layer: str, c: int) -> Objective:
    """Mean activation of channel ``c`` of ``layer`` over space."""

    def fn(seen: Seen) -> torch.Tensor:
        activation = seen.activations[layer]
        _channel_check(activation, layer, c)
        return activation[:, c].flatten(1).mean(dim=1)

    return Objective(fn, (layer,), f"channel({layer!r}, {c})")


def neuron(layer: str, c: int, y: int | None = None, x: int | None = None) -> Objective:
    """Activation of one spatial neuron of channel ``c`` (default position: the map's centre)."""

    def fn(seen: Seen) -> torch.Tensor:
        activation = seen.activations[layer]
        _channel_check(activation, layer, c)
        h, w = activation.shape[-2:]
        yy, xx = h // 2 if y is None else y, w // 2 if x is None else x
        if not (0 <= yy < h and 0 <= xx < w):
            raise TargetError(f"neuron ({yy}, {xx}) is outside layer {layer!r}'s {h}x{w} map.")
        return activation[:, c, yy, xx]

    return Objective(fn, (layer,), f"neuron({layer!r}, {c}, {y}, {x})")


def deepdream(layer: str) -> Objective:
    """Mean squared activation of ``layer`` (Mordvintsev et al. 2015)."""

    def fn(seen: Seen) -> torch.Tensor:
        return seen.activations[layer].pow(2).flatten(1).mean(dim=1)

    return Objective(fn, (layer,), f"deepdream({layer!r})")


layer_l2 = deepdream


def l2(center: float = 0.5) -> Objective:
    """Mean squared distance of the [0, 1] pixels from ``center`` (subtract it: ``obj - 0.1 * l2()``)."""
    return Objective(lambda seen: (seen.pixels - center).pow(2).flatten(1).mean(dim=1), (), "l2()")
