"""SmoothGrad (Smilkov et al., 2017) and VarGrad (Adebayo et al., 2018): the mean, or the variance, of a
gradient method's maps over noisy copies of the input.

Differs from the protocol: each wraps another method (composition, as captum's NoiseTunnel), e.g.
``SmoothGrad(Gradient(model))``, ``SmoothGrad(GuidedBackprop(model))`` or
``VarGrad(Gradient(model, absolute=False))``, and returns maps shaped like that method's. The noise is
Gaussian with a standard deviation of ``noise`` times each image's range ``max(x) - min(x)`` in the model's
input space, the paper's definition (for input normalised with std ~0.25 per channel, 0.15 of the range is
about 0.15 of the [0, 1] pixel range). Noise comes from a ``torch.Generator`` seeded with ``seed``, one draw
per noisy copy in sample-major order (copy ``j`` of sample ``i`` is draw ``i * n + j``), so a call repeats
exactly whatever the batch size; ``noise=0`` draws nothing and gives the wrapped method's map (SmoothGrad)
or zero (VarGrad). The default target (the predicted class) is resolved once on the clean input.

VarGrad is ``mean(m^2) - mean(m)^2`` over the copies, per pixel and channel, accumulated in float64 so
that the difference does not cancel to noise; it is unsigned.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from deepscope.attribution.base import Attribution
from deepscope.errors import DeepscopeError
from deepscope.maps import Display
from deepscope.probe import batched_forward
from deepscope.targets import Target, resolve_target, select_target


class SmoothGrad(Attribution):
    """Average ``method``'s maps over ``n`` noisy copies of each input, ``batch_size`` copies per pass."""

    name = "smoothgrad"

    def __init__(self, method: Attribution, n: int = 25, noise: float = 0.15, batch_size: int = 25, seed: int = 0):
        if not isinstance(method, Attribution):
            raise DeepscopeError(f"{type(self).__name__} wraps an attribution method such as Gradient(model), "
                                 f"got {type(method).__name__}.")
        super().__init__(method.model)
        if n < 1 or batch_size < 1:
            raise DeepscopeError(f"{type(self).__name__} needs n >= 1 and batch_size >= 1, got n={n}, "
                                 f"batch_size={batch_size}.")
        if noise < 0:
            raise DeepscopeError(f"{type(self).__name__} noise is a fraction of the input range and cannot be "
                                 f"negative, got {noise}.")
        self.method = method
        self.n = n
        self.noise = noise
        self.batch_size = batch_size
        self.seed = seed
        self.per_channel = method.per_channel
        self.display = method.display

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        total, _ = self._sums(inputs, target, squares=False)
        return total / self.n

    def _sums(self, inputs: torch.Tensor, target: Target, squares: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sums over the noisy copies of each sample's maps (and of their squares, in float64)."""
        generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        draws = self._draw(inputs, generator)
        resolved = resolve_target(target, batched_forward(self.model, inputs, self.batch_size))
        total = total_squares = None
        for rows, samples, noisy in self.noisy_copies(inputs, generator):
            maps = self._copy_maps(noisy, rows, select_target(resolved, samples), draws)
            if total is None:
                total = maps.new_zeros(inputs.shape[0], *maps.shape[1:])
                total_squares = maps.new_zeros(total.shape, dtype=torch.float64) if squares else None
            total.index_add_(0, samples, maps)
            if squares:
                total_squares.index_add_(0, samples, maps.double().square())
        return total, total_squares

    def noisy_copies(self, inputs: torch.Tensor, generator: torch.Generator
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(rows, samples, noisy)`` per batch: the copies' row numbers (sample-major, ``i * n + j``), the
        sample each copy belongs to, and the (batch, C, H, W) noisy copies, the noise drawn from ``generator``."""
        sigma = self.noise * (inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1))
        count = inputs.shape[0] * self.n
        for start in range(0, count, self.batch_size):
            rows = torch.arange(start, min(start + self.batch_size, count), device=inputs.device)
            samples = rows // self.n
            if self.noise == 0:
                yield rows, samples, inputs[samples]
                continue
            # one draw per copy, so the noise does not depend on batch_size
            noise = torch.stack([torch.randn(inputs.shape[1:], generator=generator, device=inputs.device,
                                             dtype=inputs.dtype) for _ in rows])
            yield rows, samples, inputs[samples] + noise * sigma[samples].view(-1, 1, 1, 1)

    def _draw(self, inputs: torch.Tensor, generator: torch.Generator):
        """What a subclass draws per call before the noise (SmoothGrad: nothing), passed to :meth:`_copy_maps`."""
        return None

    def _copy_maps(self, noisy: torch.Tensor, rows: torch.Tensor, target, draws) -> torch.Tensor:
        """The wrapped method's maps of a batch of noisy copies."""
        return self.method.attribute(noisy, target=target)


class VarGrad(SmoothGrad):
    """The variance of ``method``'s maps over ``n`` noisy copies of each input (Adebayo et al., 2018)."""

    name = "vargrad"

    def __init__(self, method: Attribution, n: int = 25, noise: float = 0.15, batch_size: int = 25, seed: int = 0):
        super().__init__(method, n=n, noise=noise, batch_size=batch_size, seed=seed)
        self.display = Display(method.display.reduction, signed=False)

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        total, total_squares = self._sums(inputs, target, squares=True)
        mean = total.double() / self.n
        return (total_squares / self.n - mean.square()).clamp_min(0).to(total.dtype)
