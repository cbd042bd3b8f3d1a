"""SmoothGrad (Smilkov et al., 2017): the mean of a gradient method's maps over noisy copies of the input.

Differs from the protocol: it wraps another method (composition, as captum's NoiseTunnel), e.g.
``SmoothGrad(Gradient(model))`` or ``SmoothGrad(GuidedBackprop(model))``, and returns maps shaped like
that method's. The noise is Gaussian with a standard deviation of ``noise`` times each image's range
``max(x) - min(x)`` in the model's input space, the paper's definition (for input normalised with
std ~0.25 per channel, 0.15 of the range is about 0.15 of the [0, 1] pixel range). Noise comes from a
``torch.Generator`` seeded with ``seed``, so a call repeats exactly; ``noise=0`` gives the wrapped
method's map. The default target (the predicted class) is resolved once on the clean input.
"""

from __future__ import annotations

import torch

from deepscope.attribution.base import Attribution
from deepscope.errors import DeepscopeError
from deepscope.probe import batched_forward
from deepscope.targets import Target, resolve_target, select_target


class SmoothGrad(Attribution):
    """Average ``method``'s maps over ``n`` noisy copies of each input, ``batch_size`` copies per pass."""

    name = "smoothgrad"

    def __init__(self, method: Attribution, n: int = 25, noise: float = 0.15, batch_size: int = 25, seed: int = 0):
        if not isinstance(method, Attribution):
            raise DeepscopeError("SmoothGrad wraps an attribution method such as Gradient(model), "
                                 f"got {type(method).__name__}.")
        super().__init__(method.model)
        if n < 1 or batch_size < 1:
            raise DeepscopeError(f"SmoothGrad needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}.")
        if noise < 0:
            raise DeepscopeError(f"SmoothGrad noise is a fraction of the input range and cannot be negative, got {noise}.")
        self.method = method
        self.n = n
        self.noise = noise
        self.batch_size = batch_size
        self.seed = seed
        self.per_channel = method.per_channel
        self.display = method.display

    def _attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:
        resolved = resolve_target(target, batched_forward(self.model, inputs, self.batch_size))
        generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        sigma = self.noise * (inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1))
        total = None
        # one stream of noisy copies, sample-major: copy j of sample i is row i * n + j
        count = inputs.shape[0] * self.n
        for start in range(0, count, self.batch_size):
            rows = torch.arange(start, min(start + self.batch_size, count), device=inputs.device)
            samples = rows // self.n
            # one draw per copy, so the noise does not depend on batch_size
            noise = torch.stack([torch.randn(inputs.shape[1:], generator=generator, device=inputs.device,
                                             dtype=inputs.dtype) for _ in rows])
            noisy = inputs[samples] + noise * sigma[samples].view(-1, 1, 1, 1)
            maps = self.method.attribute(noisy, target=select_target(resolved, samples))
            if total is None:
                total = maps.new_zeros(inputs.shape[0], *maps.shape[1:])
            total.index_add_(0, samples, maps)
        return total / self.n

