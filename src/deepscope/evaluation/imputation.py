"""Noisy linear imputation (Rong, Leemann, Borisov, Kasneci and Kasneci, ROAD, ICML 2022).

Each removed pixel becomes the weighted mean of its eight neighbours (weight 1/6 for the four sharing an
edge, 1/12 for the four diagonal ones; neighbours outside the image do not count), removed neighbours
included, so the values of all removed pixels solve one sparse linear system per image and channel: a
discrete Laplace equation whose boundary values are the kept pixels. Gaussian noise of standard deviation
``noise`` is then added to the imputed pixels. The imputed image carries no trace of the removed region's
shape, which is what makes ROAD's two orders agree (the paper's point).

Solver: the reference implementation (the authors', used by pytorch-grad-cam) assembles the system with
SciPy and factorises it on the CPU for every image and percentage. Here all systems of a batch are solved
together on the input's device by conjugate gradients, preconditioned by one geometric multigrid V-cycle
(Jacobi smoothing, bilinear prolongation and its transpose as restriction, a removed-pixel mask
coarsened to the cells whose children are all removed), in float64 (float32 for the preconditioner), to a
relative residual of ``tolerance``: 10 to 20 iterations, whatever the image size or the share removed.
Without noise, the imputed pixels match SciPy's direct solution to about 1e-6 (in model-input units).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import row_draws, wide_dtype


def noisy_linear_imputation(inputs: torch.Tensor, removed: torch.Tensor, *, noise: float = 0.01,
                            generator: torch.Generator | None = None, tolerance: float = 1e-7,
                            max_iterations: int = 500) -> torch.Tensor:
    """``inputs`` with the ``removed`` pixels imputed from their neighbours, plus noise.

    Parameters
    ----------
    inputs : (B, C, H, W) tensor
    removed : (B, 1, H, W) bool tensor
        Pixels to impute (every channel). An image needs at least one kept pixel.
    noise : float
        Standard deviation of the Gaussian noise added to the imputed pixels (model-input units).
    generator : torch.Generator, optional
        Source of the noise (on the input's device), one draw of shape (C, H, W) per image in order;
        required when ``noise > 0``.
    tolerance : float
        Stop when every system's residual is below this fraction of its right-hand side.
    """
    if noise > 0 and generator is None:
        raise DeepscopeError("noisy imputation needs a seeded torch.Generator (generator=...), or noise=0.")
    b, c, h, w = inputs.shape
    exact = wide_dtype(inputs.device)
    mask = removed.to(exact).repeat_interleave(c, dim=0)  # one system per image and channel
    values = inputs.detach().to(exact).reshape(b * c, 1, h, w)
    known = values * (1 - mask)
    solution = _conjugate_gradients(mask, mask * _neighbours(known), tolerance, max_iterations)
    imputed = (known + solution).view(b, c, h, w).to(inputs.dtype)
    if noise > 0:
        imputed = imputed + noise * row_draws(generator, b, inputs) * removed
    return imputed


def _neighbours(v: torch.Tensor) -> torch.Tensor:
    """The weighted sum of each pixel's eight neighbours (zero outside the image) of (B, 1, H, W) ``v``: the
    [1, 2, 1] x [1, 2, 1] / 12 filter gives the edges 1/6, the corners 1/12 and the centre 1/3, taken off."""
    return _binomial(v).div_(12).sub_(v, alpha=1 / 3)


def _binomial(v: torch.Tensor) -> torch.Tensor:
    """``v`` filtered by [1, 2, 1] along both axes (zero outside): 12 times the neighbour weights, plus 4 times
    the centre."""
    vertical = v * 2
    vertical[..., 1:, :] += v[..., :-1, :]
    vertical[..., :-1, :] += v[..., 1:, :]
    both = vertical * 2
    both[..., 1:] += vertical[..., :-1]
    both[..., :-1] += vertical[..., 1:]
    return both


class _Level:
    """The system on one grid: ``A v = mask * (degree * v - neighbours(v))`` for ``v`` zero outside the mask."""

    def __init__(self, mask: torch.Tensor, degree: torch.Tensor | None = None):
        self.mask = mask
        self.size = tuple(mask.shape[-2:])
        # the weights of the neighbours inside the image
        self.degree = _neighbours(torch.ones_like(mask[:1])) if degree is None else degree
        self.diagonal = self.degree + 1 / 3  # degree * v - neighbours(v) = diagonal * v - binomial(v) / 12
        self.jacobi = mask / self.degree

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        return _binomial(v).mul_(-1 / 12).addcmul_(self.diagonal, v).mul_(self.mask)

    def coarser(self) -> "_Level":
        h, w = self.size
        padded = F.pad(self.mask, (0, w % 2, 0, h % 2))
        return _Level(-F.max_pool2d(-padded, 2))  # a coarse cell is unknown when all its children are

    def select(self, rows: torch.Tensor) -> "_Level":
        return _Level(self.mask[rows], self.degree)


def _multigrid(mask: torch.Tensor, smallest: int = 8) -> list[_Level]:
    levels = [_Level(mask)]
    while min(levels[-1].size) >= 2 * smallest:
        levels.append(levels[-1].coarser())
    return levels


def _interpolate(coarse: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Bilinear doubling along ``dim`` (zero beyond the ends), cropped to ``size``."""
    n = coarse.shape[dim]
    pairs = coarse.unsqueeze(dim + 1).expand(*coarse.shape[:dim + 1], 2, *coarse.shape[dim + 1:]) * 0.75
    pairs.select(dim + 1, 0).narrow(dim, 1, n - 1).add_(coarse.narrow(dim, 0, n - 1), alpha=0.25)
    pairs.select(dim + 1, 1).narrow(dim, 0, n - 1).add_(coarse.narrow(dim, 1, n - 1), alpha=0.25)
    return pairs.flatten(dim, dim + 1).narrow(dim, 0, size)


def _gather(fine: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """The transpose of :func:`_interpolate` along ``dim``: ``size`` coarse values."""
    missing = 2 * size - fine.shape[dim]
    if missing:
        fine = torch.cat([fine, torch.zeros_like(fine.narrow(dim, 0, missing))], dim)
    pairs = fine.reshape(*fine.shape[:dim], size, 2, *fine.shape[dim + 1:])
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    coarse = (even + odd).mul_(0.75)
    coarse.narrow(dim, 1, size - 1).add_(odd.narrow(dim, 0, size - 1), alpha=0.25)
    coarse.narrow(dim, 0, size - 1).add_(even.narrow(dim, 1, size - 1), alpha=0.25)
    return coarse


def _v_cycle(levels: list[_Level], residual: torch.Tensor, depth: int = 0, coarsest_sweeps: int = 20) -> torch.Tensor:
    """One symmetric V-cycle from zero: an approximate inverse of the system, SPD as CG's preconditioner needs."""
    level = levels[depth]
    last = depth == len(levels) - 1
    error = level.jacobi * residual
    for _ in range(coarsest_sweeps - 1 if last else 0):
        error = error + level.jacobi * (residual - level.apply(error))
    if last:
        return error
    below = levels[depth + 1]
    rest = residual - level.apply(error)
    coarse = below.mask * _gather(_gather(rest, below.size[0], 2), below.size[1], 3)
    correction = _v_cycle(levels, coarse, depth + 1, coarsest_sweeps)
    error = error + level.mask * _interpolate(_interpolate(correction, level.size[0], 2), level.size[1], 3)
    return error + level.jacobi * (residual - level.apply(error))


def _conjugate_gradients(mask: torch.Tensor, rhs: torch.Tensor, tolerance: float, max_iterations: int) -> torch.Tensor:
    """Solve every system of the batch (one per row) by multigrid-preconditioned conjugate gradients.

    Systems that have converged leave the batch (when a fifth of it has), so the work follows each
    system's own iteration count.
    """
    cheap = torch.float32
    levels = _multigrid(mask.to(cheap))
    system = _Level(mask)
    tiny = torch.finfo(rhs.dtype).tiny

    def precondition(r):
        return _v_cycle(levels, r.to(cheap)).to(r.dtype)

    def dot(a, b):
        return (a * b).sum(dim=(1, 2, 3))

    solutions = torch.zeros_like(rhs)
    solution = torch.zeros_like(rhs)
    rows = torch.arange(len(rhs), device=rhs.device)  # the systems still in the batch
    residual = rhs.clone()
    z = precondition(residual)
    direction = z.clone()
    rz = dot(residual, z)
    goal = tolerance ** 2 * dot(rhs, rhs)
    for _ in range(max_iterations):
        active = dot(residual, residual) > goal
        remaining = int(active.sum())
        if remaining == 0:
            break
        if remaining <= 0.8 * len(rows):
            solutions[rows[~active]] = solution[~active]
            rows, solution, residual = rows[active], solution[active], residual[active]
            direction, rz, goal = direction[active], rz[active], goal[active]
            levels = [level.select(active) for level in levels]
            system = system.select(active)
        product = system.apply(direction)
        alpha = rz / dot(direction, product).clamp_min(tiny)
        solution += alpha.view(-1, 1, 1, 1) * direction
        residual -= alpha.view(-1, 1, 1, 1) * product
        z = precondition(residual)
        rz_next = dot(residual, z)
        direction = z + (rz_next / rz.clamp_min(tiny)).view(-1, 1, 1, 1) * direction
        rz = rz_next
    solutions[rows] = solution
    return solutions
