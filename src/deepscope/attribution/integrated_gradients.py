"""Integrated Gradients (Sundararajan, Taly and Yan, 2017).

Differs from the protocol: returns per-channel attributions (N, C, H, W),
``(x - b) * integral_0^1 d score / d x (b + a (x - b)) da``, the integral approximated with ``steps``
points of ``method``: ``gausslegendre`` (captum's default), ``riemann_left``, ``riemann_right``,
``riemann_middle`` (as captum) or ``riemann_trapezoid`` (the trapezoid rule: weights ``1/(steps-1)``,
halved at both ends; captum's version weights ``1/steps``, so its sum falls short by ``1/steps``).
The attributions add up to ``score(x) - score(b)`` up to the approximation error, which
:meth:`IntegratedGradients.completeness_error` reports. The default target (the predicted class) is
resolved once on the input, not on the path points.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deepscope.attribution.base import Attribution, check_inputs
from deepscope.errors import DeepscopeError
from deepscope.maps import Display
from deepscope.probe import Probe, batched_forward, fast_layout, input_gradient
from deepscope.targets import Target, resolve_target, select_target, target_scores

METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def path_points(steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights) in float64: the points on the path in [0, 1] and their quadrature weights."""
    if method not in METHODS:
        raise DeepscopeError(f"unknown integration method {method!r}; choose one of {', '.join(METHODS)}.")
    if steps < (1 if method == "gausslegendre" else 2):
        raise DeepscopeError(f"Integrated Gradients needs at least 2 steps with {method}, got {steps}.")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    weights = torch.full((steps,), 1 / steps, dtype=torch.float64)
    if method == "riemann_trapezoid":
        weights = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    start = {"riemann_left": 0.0, "riemann_right": 1 / steps, "riemann_middle": 0.5 / steps}[method]
    return torch.linspace(start, start + 1 - 1 / steps, steps, dtype=torch.float64), weights


class IntegratedGradients(Attribution):
    """Integrated Gradients, see the module docstring.

    Parameters
    ----------
    baseline : "zero", "black" or tensor
        The path's start: 0 in the model's input space, the black image (needs ``preprocess``, the
        model's normalisation, e.g. ``loaded.preprocess``), or a tensor broadcastable to the inputs.
    steps : int
        Points on the path (forward + backward passes per image).
    method : str
        Quadrature rule, see the module docstring.
    batch_size : int
        Path points per forward/backward pass.
    """

    name = "ig"
    per_channel = True
    #: signed, summed over colour channels: the attributions add up to the score difference
    display = Display("sum", signed=True)

    def __init__(self, model: nn.Module, baseline: str | torch.Tensor = "zero", steps: int = 50,
                 method: str = "gausslegendre", batch_size: int = 50, preprocess=None):
        super().__init__(model)
        path_points(steps, method)  # validates
        if isinstance(baseline, str) and baseline not in ("zero", "black"):
            raise DeepscopeError(f"unknown Integrated Gradients baseline {baseline!r}; use zero, black or a tensor.")
        if isinstance(baseline, str) and baseline == "black" and preprocess is None:
            raise DeepscopeError("baseline='black' needs the model's normalisation: pass preprocess=loaded.preprocess.")
        if batch_size < 1:
            raise DeepscopeError(f"batch_size must be positive, got {batch_size}.")
        self.baseline = baseline
        self.steps = steps
        self.method = method
        self.batch_size = batch_size
        self.preprocess = preprocess

    def baseline_images(self, inputs: torch.Tensor) -> torch.Tensor:
        """The (N, C, H, W) start of the path for ``inputs``."""
        if isinstance(self.baseline, torch.Tensor):
            try:
                return self.baseline.to(inputs).expand_as(inputs)
            except RuntimeError:
                raise DeepscopeError(f"the baseline's shape {tuple(self.baseline.shape)} does not broadcast to the "
                                     f"inputs' {tuple(inputs.shape)}.") from None
        if self.baseline == "black":
            return self.preprocess.normalize(torch.zeros_like(inputs))
        return torch.zeros_like(inputs)

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        baseline = self.baseline_images(inputs)
        resolved = resolve_target(target, batched_forward(self.model, inputs, self.batch_size))
        alphas, weights = (t.to(device=inputs.device, dtype=inputs.dtype) for t in path_points(self.steps, self.method))
        n, steps = inputs.shape[0], self.steps
        delta = inputs - baseline
        total = torch.zeros_like(inputs)
        with Probe(self.model) as probe, torch.enable_grad():
            # one stream of path points, sample-major: point k of sample i is row i * steps + k
            for start in range(0, n * steps, self.batch_size):
                rows = torch.arange(start, min(start + self.batch_size, n * steps), device=inputs.device)
                samples, points = rows // steps, rows % steps
                x = baseline[samples] + alphas[points].view(-1, 1, 1, 1) * delta[samples]
                x = fast_layout(x).requires_grad_(True)
                output = probe(x)
                scores = target_scores(output, select_target(resolved, samples))
                (grad,) = input_gradient(scores, x)
                total.index_add_(0, samples, grad * weights[points].view(-1, 1, 1, 1))
        return (total * delta).contiguous()

    def completeness_error(self, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None) -> torch.Tensor:
        """(N,) ``sum(attributions) - (score(x) - score(baseline))``; near 0 when enough steps were used."""
        inputs = check_inputs(inputs, self.model)
        both = batched_forward(self.model, torch.cat([inputs, self.baseline_images(inputs)]), self.batch_size)
        clean, start = both.split(inputs.shape[0])
        resolved = resolve_target(target, clean)
        gap = target_scores(clean, resolved) - target_scores(start, resolved)
        return attributions.flatten(1).sum(1) - gap
