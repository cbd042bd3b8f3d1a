"""LRP rules: how one layer hands the relevance of its outputs down to its inputs.

An affine layer ``z = W x + b`` (a convolution or ``nn.Linear``, with a following BatchNorm merged in;
see :class:`Affine`) gets one of the rules of :data:`RULES`, each a function
``rule(layer, x, relevance) -> input relevance``. Other operations get :func:`pass_through` (activations,
unmerged BatchNorm, squeeze-excitation gates) or :func:`proportional` (sums, average pooling).

The formulas are those of zennit 0.5.1 (``zennit.rules``), so that results can be compared with it;
Montavon et al. 2019 ("Layer-wise relevance propagation: an overview") give the rules, with the bias
counted as one more input (``b+`` in the z+ denominator, for instance). Denominators are stabilised as in
zennit: ``z + eps * sign(z)``, with ``sign(0) = +1``. Where zennit differs from the overview, so does this:

- z+, alpha-beta and gamma handle negative inputs too (the generalised forms: ``x- w-`` counts as a
  positive contribution), which the overview's ReLU-input versions leave out;
- w-square squares the bias along with the weights (the bias acts as an input fixed at 1);
- z-box's denominator ``W x - W+ low - W- high`` has no bias (the three biases cancel).

Each rule computes only what it needs: the transposed convolution of the backward pass, plus one forward
convolution per modified weight (the z+ rule of a layer with non-negative input, the usual case after a
ReLU, costs one convolution and one transposed convolution). No rule changes a module's parameters: the
modified weights are new tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.errors import UnsupportedModelError
from deepscope.models.tflite import Conv2dSame

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_FORWARDS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward, Conv2dSame.forward, nn.Linear.forward}


def ratio(relevance: torch.Tensor, z: torch.Tensor, eps: float, sign: str = "") -> torch.Tensor:
    """``relevance / (z + eps sign(z))``, computed in ``z``'s memory (``z`` must be a temporary).

    The stabilised denominator is never 0 and keeps the sign of ``z``. ``sign="+"`` (``"-"``) says that ``z``
    is never negative (positive), which saves a pass. Otherwise ``eps`` takes ``z``'s sign bit, so ``-0.0``
    gets ``-eps`` where zennit adds ``+eps``: such a ``z`` is a sum of zeros, whose shares are 0 either way.
    """
    if sign == "+":
        z.add_(eps)
    elif sign == "-":
        z.sub_(eps)
    else:
        z.add_(torch.copysign(torch.tensor(eps, dtype=z.dtype, device=z.device), z))
    return torch.div(relevance, z, out=z)


class Affine:
    """The affine map of a convolution or ``nn.Linear`` module, optionally followed by a BatchNorm.

    The BatchNorm (eval mode: running statistics) is merged into the weights the rules use,
    ``W' = W * s`` and ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``, as the BatchNorm
    canonizers of zennit do to the module itself; here nothing is written back to the model.

    Parameters
    ----------
    module : nn.Conv1d, nn.Conv2d, nn.Conv3d or nn.Linear
        The layer (``Conv2dSame`` of the TFLite import included). Zero padding only.
    norm : BatchNorm module, optional
        A BatchNorm applied to the layer's output.
    name : str
        The layer's name, for error messages.
    """

    def __init__(self, module: nn.Module, norm: nn.Module | None = None, name: str = ""):
        check_affine(module, name)
        self.module = module
        weight, bias = module.weight.detach(), module.bias
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device) if bias is None else bias.detach()
        if norm is not None:
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight.detach()
            bias = (bias - norm.running_mean) * scale
            if norm.bias is not None:
                bias = bias + norm.bias.detach()
            weight = weight * scale.view(-1, *(1,) * (weight.ndim - 1))
        self.weight, self.bias = weight, bias
        self.is_conv = isinstance(module, CONV_TYPES)

    # -- geometry: the layer's own forward and its transpose, with any weights --------------------------
    def _pads(self, x: torch.Tensor) -> list[tuple[int, int]]:
        """Zero padding (before, after) per spatial axis for input ``x``."""
        m = self.module
        if isinstance(m, Conv2dSame):
            left, right, top, bottom = m.pad_amounts(x.shape[-2], x.shape[-1])
            return [(top, bottom), (left, right)]
        if m.padding == "valid":
            return [(0, 0)] * len(m.kernel_size)
        if m.padding == "same":
            totals = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
            return [(t // 2, t - t // 2) for t in totals]
        return [(p, p) for p in m.padding]

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The layer applied to ``x`` with the given weight and bias."""
        if not self.is_conv:
            return F.linear(x, weight, bias)
        m = self.module
        pads = self._pads(x)
        if any(a != b for a, b in pads):
            x = F.pad(x, [p for pair in reversed(pads) for p in pair])
            pads = [(0, 0)] * len(pads)
        return torch.ops.aten.convolution(x, weight, bias, m.stride, [a for a, _ in pads], m.dilation,
                                          False, [0] * len(pads), m.groups)

    def backward(self, grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``W^T grad``: the gradient of ``forward(x, weight)`` w.r.t. an input shaped like ``x``."""
        if not self.is_conv:
            return grad @ weight
        m = self.module
        pads = self._pads(x)
        symmetric = all(a == b for a, b in pads)
        if symmetric:
            like = x
        else:  # only the padded shape and layout matter
            shape = (*x.shape[:2], *(n + a + b for n, (a, b) in zip(x.shape[2:], pads)))
            layout = torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
            like = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
        result = torch.ops.aten.convolution_backward(
            grad, like, weight, None, m.stride, [a for a, _ in pads] if symmetric else [0] * len(pads),
            m.dilation, False, [0] * len(pads), m.groups, (True, False, False))[0]
        if not symmetric:
            result = result[(..., *(slice(a, a + n) for (a, _), n in zip(pads, x.shape[2:])))]
        return result


def check_affine(module: nn.Module, name: str) -> None:
    """Raise :class:`UnsupportedModelError` for a conv/linear module whose forward the rules cannot reproduce."""
    if type(module).forward not in _PLAIN_FORWARDS:
        raise UnsupportedModelError(
            f"LRP cannot reproduce layer {name!r} ({type(module).__name__}): it has its own forward; "
            "only plain nn.Conv1d/2d/3d, nn.Linear and the TFLite import's Conv2dSame are supported.")
    if isinstance(module, CONV_TYPES) and module.padding_mode != "zeros":
        raise UnsupportedModelError(f"LRP supports zero padding only; layer {name!r} pads with {module.padding_mode!r}.")


def check_batch_norm(module: nn.Module, name: str) -> None:
    """Raise :class:`UnsupportedModelError` for a BatchNorm that normalises with batch statistics in eval mode."""
    if module.running_mean is None or module.running_var is None:
        raise UnsupportedModelError(f"LRP needs BatchNorm running statistics; layer {name!r} has none "
                                    "(track_running_stats=False), so its output depends on the whole batch.")


# -- rules for affine layers -------------------------------------------------------------------------------
# Each takes ``nonnegative``: whether the input is known to be >= 0 (after a ReLU), which drops the negative
# half of the generalised rules (two convolutions); None checks it, with one reduction.

def _split(x: torch.Tensor, nonnegative: bool | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if nonnegative is None:
        nonnegative = bool(x.amin() >= 0)
    return (x, None) if nonnegative else (x.clamp(min=0), x.clamp(max=0))


def _two_part(layer: Affine, xp: torch.Tensor, xn: torch.Tensor | None, wp: torch.Tensor, wn: torch.Tensor,
              bias: torch.Tensor, relevance: torch.Tensor, eps: float, sign: str, scale: float = 1.0) -> torch.Tensor:
    """``scale`` times the relevance of ``z = wp xp + wn xn + bias`` shared by contributions (z+, alpha-beta):
    ``z`` has one sign, the sign of ``wp``."""
    z = layer.forward(xp, wp, bias)
    if xn is not None:
        z = z + layer.forward(xn, wn)
    scaled = ratio(relevance, z, eps, sign)
    result = layer.backward(scaled, wp * scale, xp).mul_(xp)
    if xn is not None:
        result = result.addcmul_(layer.backward(scaled, wn * scale, xn), xn)
    return result


def epsilon_rule(layer: Affine, x: torch.Tensor, relevance: torch.Tensor, *, epsilon: float,
                 nonnegative: bool | None = None) -> torch.Tensor:
    """LRP-epsilon (Bach et al. 2015): ``R_i = x_i sum_j w_ij R_j / (z_j + eps sign z_j)``; ``epsilon=0`` is LRP-0."""
    z = layer.forward(x, layer.weight, layer.bias)
    return layer.backward(ratio(relevance, z, epsilon), layer.weight, x).mul_(x)


def zplus_rule(layer: Affine, x: torch.Tensor, relevance: torch.Tensor, *, stabilizer: float,
               nonnegative: bool | None = None) -> torch.Tensor:
    """z+ (alpha=1, beta=0): relevance by positive contributions ``x+ w+`` and ``x- w-``, with ``b+`` in the sum."""
    xp, xn = _split(x, nonnegative)
    w = layer.weight
    return _two_part(layer, xp, xn, w.clamp(min=0), w.clamp(max=0), layer.bias.clamp(min=0), relevance, stabilizer,
                     "+")


def alpha_beta_rule(layer: Affine, x: torch.Tensor, relevance: torch.Tensor, *, stabilizer: float,
                    alpha: float = 2.0, beta: float = 1.0, nonnegative: bool | None = None) -> torch.Tensor:
    """Alpha-beta (Bach et al. 2015): ``alpha`` times the z+ share minus ``beta`` times the negative share."""
    xp, xn = _split(x, nonnegative)
    w, b = layer.weight, layer.bias
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    positive = _two_part(layer, xp, xn, wp, wn, b.clamp(min=0), relevance, stabilizer, "+", alpha)
    return positive.add_(_two_part(layer, xp, xn, wn, wp, b.clamp(max=0), relevance, stabilizer, "-", -beta))


def gamma_rule(layer: Affine, x: torch.Tensor, relevance: torch.Tensor, *, gamma: float, stabilizer: float,
               nonnegative: bool | None = None) -> torch.Tensor:
    """LRP-gamma (Montavon et al. 2019), generalised to signed inputs and outputs as in zennit.

    Where ``z > 0`` the positive contributions are favoured, ``w + gamma w+`` on ``x+`` (and ``w + gamma w-``
    on ``x-``); where ``z < 0`` the negative ones. The sign of ``z`` comes from the four modified outputs,
    whose sum is ``(2 + gamma) z``.
    """
    xp, xn = _split(x, nonnegative)
    w, b = layer.weight, layer.bias
    w_up, w_down = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
    b_up, b_down = b + gamma * b.clamp(min=0), b + gamma * b.clamp(max=0)
    up = layer.forward(xp, w_up, b_up)
    down = layer.forward(xp, w_down, b_down)
    if xn is not None:
        up = up + layer.forward(xn, w_down)
        down = down + layer.forward(xn, w_up)
    total = up + down
    scaled_up = ratio(relevance * (total > 0), up, stabilizer)
    scaled_down = ratio(relevance * (total < 0), down, stabilizer)
    result = layer.backward(scaled_up, w_up, xp).add_(layer.backward(scaled_down, w_down, xp)).mul_(xp)
    if xn is not None:
        negative = layer.backward(scaled_up, w_down, xn).add_(layer.backward(scaled_down, w_up, xn))
        result = result.addcmul_(negative, xn)
    return result


def _constant_input(x: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
    """A batch of one shaped like a sample of ``x``, filled with ``value`` (broadcast per channel)."""
    return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(1, *x.shape[1:]).contiguous()


def _uniform_rule(layer: Affine, x: torch.Tensor, relevance: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None, stabilizer: float) -> torch.Tensor:
    denominator = layer.forward(_constant_input(x, 1.0), weight, bias)  # the same for every sample, >= 0
    return layer.backward(relevance / denominator.add_(stabilizer), weight, x)


def flat_rule(layer: Affine, x: torch.Tensor, relevance: torch.Tensor, *, stabilizer: float,
              nonnegative: bool | None = None) -> torch.Tensor:
    """Flat (Lapuschkin et al. 2019): each output's relevance spread evenly over its receptive field."""
    return _uniform_rule(layer, x, relevance, torch.ones_like(layer.weight), None, stabilizer)


def wsquare_rule(layer: Affine, x: torch.Tensor, relevance: torch.Tensor, *, stabilizer: float,
                 nonnegative: bool | None = None) -> torch.Tensor:
    """w-square (Montavon et al. 2017): relevance spread in proportion to ``w^2`` (the bias squared counts too)."""
    return _uniform_rule(layer, x, relevance, layer.weight ** 2, layer.bias ** 2, stabilizer)


def zbox_rule(layer: Affine, x: torch.Tensor, relevance: torch.Tensor, *, low: torch.Tensor, high: torch.Tensor,
              stabilizer: float, nonnegative: bool | None = None) -> torch.Tensor:
    """z-box (Montavon et al. 2017) for an input bounded by ``low <= x <= high`` (per channel or per pixel)."""
    w = layer.weight
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    low, high = _constant_input(x, low), _constant_input(x, high)
    z = layer.forward(x, w) - layer.forward(low, wp) - layer.forward(high, wn)
    scaled = ratio(relevance, z, stabilizer)
    result = layer.backward(scaled, w, x).mul_(x)
    return result.sub_(low * layer.backward(scaled, wp, x)).sub_(high * layer.backward(scaled, wn, x))


#: The rules for affine layers, by the names LRP's ``rules`` option accepts.
RULES: dict[str, Callable[..., torch.Tensor]] = {
    "epsilon": epsilon_rule, "gamma": gamma_rule, "z-plus": zplus_rule, "alpha-beta": alpha_beta_rule,
    "flat": flat_rule, "w-square": wsquare_rule, "z-box": zbox_rule,
}


# -- rules for other operations ------------------------------------------------------------------------------

def pass_through(inputs: tuple[torch.Tensor, ...], relevance: torch.Tensor) -> tuple[torch.Tensor]:
    """Relevance passes unchanged: element-wise activations, unmerged BatchNorm, squeeze-excitation gates."""
    return (relevance,)


def proportional(function: Callable[..., torch.Tensor], stabilizer: float):
    """Backward of a linear operation without weights (sum, average pooling): relevance in proportion to each
    input's share of the output, ``R_i = x_i d out/d x_i (R / out)``, as zennit's ``Norm`` rule."""

    def backward(inputs: tuple[torch.Tensor, ...], relevance: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in inputs]
            output = function(*leaves)
            grads = torch.autograd.grad(output, leaves, ratio(relevance, output.detach().clone(), stabilizer))
        return tuple(g.mul_(t) for t, g in zip(inputs, grads))

    return backward
