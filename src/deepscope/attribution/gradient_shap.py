"""GradientSHAP (Lundberg and Lee, 2017) and Expected Gradients (Erion et al., 2021): gradients at random
points between the input and baselines drawn from a reference set of photos, times the difference.

For each of ``n`` samples per input: a baseline ``b`` drawn uniformly, with replacement, from the reference
set, a point ``a ~ U(0, 1)`` on the path, and optionally Gaussian noise on the input (``noise``, SmoothGrad's
fraction of the image's range); the attribution is the mean over the samples of
``(x' - b) * d score / d x (b + a (x' - b))`` with ``x' = x + noise``, as captum's ``GradientShap`` computes it.
With ``noise=0`` (the default) this is Expected Gradients, a Monte-Carlo estimate of Integrated Gradients
averaged over the reference distribution: the attributions add up to ``score(x) - E[score(b)]`` in expectation.

Differs from the protocol: per input channel (N, C, H, W), shown summed over channels with the sign, as
Integrated Gradients. It is SmoothGrad's loop over noisy copies (:class:`~deepscope.attribution.smoothgrad.SmoothGrad`)
around the plain gradient. The draws come from a generator seeded with ``seed``: first the ``N * n``
baseline indices, then the ``N * n`` path points, then the noise as SmoothGrad draws it, all sample-major
(sample ``j`` of input ``i`` is draw ``i * n + j``), so a call repeats exactly whatever the batch size;
:meth:`GradientSHAP.draws` returns them.

Baselines: a (M, C, H, W) tensor of model inputs, or a callable ``baselines(inputs)`` returning one. The
catalogue (command line, report, trust table) draws them from reference photos, :class:`ReferencePhotos`:
by default the built-in sample photos (:mod:`deepscope.sample_images`: five photos that install with
scikit-image and matplotlib, so it works offline, and a photo's map does not depend on the other photos of
its batch), or any folder of photos with ``--option gradientshap.baselines=FOLDER``. Photos from the model's
training distribution make the better reference (Erion et al. draw from the training set).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.attribution.gradient import Gradient
from deepscope.attribution.smoothgrad import SmoothGrad
from deepscope.errors import DeepscopeError
from deepscope.images import load_inputs, scan_images
from deepscope.maps import Display

Baselines = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
#: reference photos decoded at most: a larger folder contributes this many, spread evenly over its sorted list
MAX_REFERENCE_PHOTOS = 64


class ReferencePhotos:
    """Baselines from photos, preprocessed as the model's inputs: ``ReferencePhotos(source)(inputs)`` is (M, C, H, W).

    Parameters
    ----------
    source : str
        ``builtin`` (the built-in sample photos) or a folder (or file) of photos. A missing or empty folder
        raises a :class:`~deepscope.errors.DeepscopeError` here, before any work.
    preprocess : Preprocess, optional
        The model's preprocessing (crop, then normalisation); default: ImageNet's at 224 px.
    limit : int
        At most this many photos, spread evenly over the sorted list.

    The photos are decoded once, at the first call; when the inputs have another size than the crop,
    the photos are resized to it (bilinear, antialiased) before the normalisation.
    """

    def __init__(self, source: str = "builtin", preprocess=None, limit: int = MAX_REFERENCE_PHOTOS):
        from deepscope.models.preprocess import Preprocess

        self.source = source
        self.preprocess = preprocess if preprocess is not None else Preprocess()
        self.paths = _reference_paths(source, limit)
        self._pixels: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._pixels is None:
            self._pixels = load_inputs(self.paths, self.preprocess.crop)
        pixels = self._pixels.to(device=inputs.device, dtype=inputs.dtype)
        if pixels.shape[-2:] != inputs.shape[-2:]:
            pixels = F.interpolate(pixels, size=tuple(inputs.shape[-2:]), mode="bilinear", align_corners=False,
                                   antialias=True)
        return self.preprocess.normalize(pixels)

    def __repr__(self) -> str:
        return f"ReferencePhotos({self.source!r}, {len(self.paths)} photos, {self.preprocess.describe()})"


def _reference_paths(source: str, limit: int) -> list[Path]:
    if source == "builtin":
        from deepscope.sample_images import builtin_images

        paths = builtin_images().paths
    else:
        if not Path(source).exists():
            raise DeepscopeError(f"baselines: no such folder {source!r}; give a folder of reference photos or builtin.")
        paths = scan_images(source).paths
    if len(paths) > limit:
        paths = [paths[i * len(paths) // limit] for i in range(limit)]
    return list(paths)


class GradientSHAP(SmoothGrad):
    """GradientSHAP / Expected Gradients, see the module docstring.

    Parameters
    ----------
    baselines : tensor or callable
        (M, C, H, W) model inputs, or ``baselines(inputs)`` returning them (:class:`ReferencePhotos`).
    n : int
        Samples per input (forward and backward passes).
    noise : float
        Standard deviation of the Gaussian noise added to the input, as a fraction of its range (0:
        Expected Gradients).
    batch_size : int
        Samples per forward/backward pass.
    seed : int
        Seed of the baseline, path-point and noise draws.
    """

    name = "gradientshap"
    per_channel = True
    #: signed, summed over colour channels: the attributions add up to a score difference (in expectation)
    display = Display("sum", signed=True)

    def __init__(self, model: nn.Module, baselines: Baselines, n: int = 50, noise: float = 0.0,
                 batch_size: int = 50, seed: int = 0):
        super().__init__(Gradient(model, absolute=False), n=n, noise=noise, batch_size=batch_size, seed=seed)
        if not (isinstance(baselines, torch.Tensor) or callable(baselines)):
            raise DeepscopeError("GradientSHAP needs baselines: a (M, C, H, W) tensor of model inputs or a callable "
                                 f"such as ReferencePhotos('builtin'), got {type(baselines).__name__}.")
        self.baselines = baselines
        self.display = GradientSHAP.display

    def baseline_images(self, inputs: torch.Tensor) -> torch.Tensor:
        """The (M, C, H, W) reference set for ``inputs``, on their device, checked."""
        references = self.baselines(inputs) if callable(self.baselines) else self.baselines
        if not isinstance(references, torch.Tensor) or references.ndim != 4 or len(references) == 0 \
                or references.shape[1:] != inputs.shape[1:]:
            shape = tuple(references.shape) if isinstance(references, torch.Tensor) else type(references).__name__
            raise DeepscopeError(f"baselines must be a (M, C, H, W) batch shaped like the inputs "
                                 f"(M, {', '.join(map(str, inputs.shape[1:]))}), got {shape}.")
        return references.detach().to(device=inputs.device, dtype=inputs.dtype)

    def draws(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every random draw of a call on ``inputs``, sample-major: ``index`` (N * n,) of the baseline,
        ``alpha`` (N * n,) the path point, ``noise`` (N * n, C, H, W) added to the input (zeros if ``noise=0``)."""
        generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        _, index, alpha = self._draw(inputs, generator)
        noise = torch.cat([noisy - inputs[samples] for _, samples, noisy in self.noisy_copies(inputs, generator)])
        return {"index": index, "alpha": alpha, "noise": noise}

    def _draw(self, inputs: torch.Tensor, generator: torch.Generator):
        references = self.baseline_images(inputs)
        count = inputs.shape[0] * self.n
        index = torch.randint(len(references), (count,), generator=generator, device=inputs.device)
        alpha = torch.rand(count, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return references, index, alpha

    def _copy_maps(self, noisy: torch.Tensor, rows: torch.Tensor, target, draws) -> torch.Tensor:
        references, index, alpha = draws
        baseline = references[index[rows]]
        a = alpha[rows].view(-1, 1, 1, 1)
        point = a * noisy + (1 - a) * baseline
        return (noisy - baseline) * self.method.attribute(point, target=target)
