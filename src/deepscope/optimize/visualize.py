"""Optimised images: class models (Simonyan et al. 2014; Yosinski et al. 2015; Olah et al. 2017) and Deep Dream.

The model is touched only through :class:`deepscope.probe.Probe` (activations graph-connected,
parameters frozen, everything restored afterwards, also on error). Randomness comes from a seeded
``torch.Generator``, so a run with the same seed repeats exactly on the same machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepscope.errors import DeepscopeError
from deepscope.models.preprocess import Preprocess
from deepscope.optimize.objectives import Objective, Seen, class_logit, deepdream, l2
from deepscope.optimize.parameterizations import ImageParam, fourier_image, pixel_image
from deepscope.optimize.regularizers import YosinskiRegularizer
from deepscope.optimize.transforms import Transform, compose, resize, roll, standard_transforms
from deepscope.probe import Probe, check_hookable, model_device

Regularizer = Callable[[torch.Tensor, torch.Tensor | None, int], None]


@dataclass(frozen=True)
class Preset:
    """A recipe for class models: parameterisation, transforms, objective penalty, regulariser, step size."""

    param: str                                    # "pixels" or "fourier"
    lr: float
    l2_weight: float = 0.0
    transforms: Callable[[int], Transform] | None = None
    regularizer: YosinskiRegularizer | None = None
    description: str = ""


PRESETS: dict[str, Preset] = {
    "simonyan": Preset("pixels", lr=0.01, l2_weight=1.0,
                       description="Simonyan et al. 2014: pixels, max logit - lambda*||I||^2"),
    "yosinski": Preset("pixels", lr=0.01, transforms=lambda size: compose(roll(4)),
                       regularizer=YosinskiRegularizer(decay=0.01, blur_every=4, blur_sigma=0.5,
                                                       norm_percentile=20, contribution_percentile=20),
                       description="Yosinski et al. 2015: pixels with jitter, L2 decay, blur and pixel clipping"),
    "lucid": Preset("fourier", lr=0.05, transforms=standard_transforms,
                    description="Olah et al. 2017 (Lucid): decorrelated Fourier image, transformation robustness"),
}


def optimize_image(model: nn.Module, objective: Objective, preprocess: Preprocess, param: ImageParam, *,
                   steps: int = 256, lr: float = 0.05, transform: Transform | None = None,
                   regularizer: Regularizer | None = None, generator: torch.Generator | None = None,
                   progress: bool = True) -> torch.Tensor:
    """Maximise ``objective`` over the image ``param`` with Adam; returns the [0, 1] pixels (N, 3, H, W).

    Each step renders the pixels, applies the random ``transform``, normalises for the model, and runs
    it through a :class:`Probe` that captures the layers the objective reads.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise DeepscopeError(f"steps must be at least 1, got {steps}.")
    check_step_size(lr)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(param.params, lr=lr)
    with Probe(model, objective.layers) as probe, torch.enable_grad():
        for step in tqdm(range(1, steps + 1), desc=f"optimising {objective}"[:60], disable=not progress, leave=False):
            pixels = param.pixels()
            seen_pixels = transform(pixels, generator) if transform is not None else pixels
            output = probe(preprocess.normalize(seen_pixels))
            score = objective(Seen(output, probe.activations, pixels))
            optimizer.zero_grad(set_to_none=True)
            (-score.sum()).backward()
            optimizer.step()
            param.project()
            if regularizer is not None:
                image = param.params[0]
                regularizer(image.data, image.grad, step)
    with torch.no_grad():
        return param.pixels().detach().clone()


def class_model(model: nn.Module, classes: Sequence[int] | int, preprocess: Preprocess, *, preset: str = "lucid",
                steps: int = 256, seed: int = 0, size: int | None = None, lr: float | None = None,
                progress: bool = True) -> torch.Tensor:
    """Images that maximise each class's logit: one (3, H, W) [0, 1] image per class, as (N, 3, H, W).

    ``preset`` picks the recipe (see :data:`PRESETS`): ``"simonyan"`` (plain pixels minus an L2 penalty),
    ``"yosinski"`` (plus jitter, decay, blur and pixel clipping) or ``"lucid"`` (decorrelated Fourier
    parameterisation with transformation robustness).
    """
    if preset not in PRESETS:
        raise DeepscopeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    recipe = PRESETS[preset]
    classes = [classes] if isinstance(classes, int) else list(classes)
    if not classes:
        raise DeepscopeError("give at least one class.")
    size = size or preprocess.input_size
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    shape = (len(classes), 3, size, size)
    param = (fourier_image(shape, generator, device=device) if recipe.param == "fourier"
             else pixel_image(shape, generator, device=device))
    objective = class_logit(classes)
    if recipe.l2_weight:
        objective = objective - recipe.l2_weight * l2()
    transform = recipe.transforms(preprocess.input_size) if recipe.transforms else None
    if transform is None and size != preprocess.input_size:
        transform = resize(preprocess.input_size)
    return optimize_image(model, objective, preprocess, param, steps=steps, lr=lr or recipe.lr, transform=transform,
                          regularizer=recipe.regularizer, generator=generator, progress=progress)


def deep_dream(model: nn.Module, image: torch.Tensor, layer: str | Objective, preprocess: Preprocess, *,
               octaves: int = 4, octave_scale: float = 1.4, steps: int = 10, lr: float = 0.01, jitter: int = 32,
               seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Deep Dream (Mordvintsev et al. 2015): gradient ascent on a layer's mean squared activation.

    The photo ``image`` ((3, H, W) or (1, 3, H, W), [0, 1]) is processed from the smallest octave up;
    at each octave the detail found so far is upsampled and added. Each step rolls the image by a
    random shift of up to ``jitter`` pixels and moves by ``lr * grad / mean|grad|``.
    ``layer`` may also be any :class:`Objective`. Returns the dreamed (N, 3, H, W) [0, 1] image.
    """
    from tqdm.auto import tqdm

    if octaves < 1 or not 1 < octave_scale < math.inf:
        raise DeepscopeError(f"need octaves >= 1 and a finite octave_scale > 1, got {octaves} and {octave_scale}.")
    if steps < 1 or jitter < 0:
        raise DeepscopeError(f"need steps >= 1 and jitter >= 0, got {steps} and {jitter}.")
    check_step_size(lr)
    objective = deepdream(layer) if isinstance(layer, str) else layer
    if objective.layers:
        check_hookable(model)
    base = (image[None] if image.ndim == 3 else image).detach().to(model_device(model))
    pyramid = [base]
    for _ in range(octaves - 1):
        h, w = (round(s / octave_scale) for s in pyramid[-1].shape[-2:])
        if min(h, w) < 32:
            break
        pyramid.append(F.interpolate(pyramid[-1], size=(h, w), mode="bilinear", align_corners=False, antialias=True))
    generator = torch.Generator().manual_seed(seed)
    detail = torch.zeros_like(pyramid[-1])
    bar = tqdm(total=steps * len(pyramid), desc="dreaming", disable=not progress, leave=False)
    with Probe(model, objective.layers) as probe, torch.enable_grad(), bar:
        for octave in reversed(pyramid):
            detail = F.interpolate(detail, size=octave.shape[-2:], mode="bilinear", align_corners=False)
            x = (octave + detail).clamp(0, 1)
            for _ in range(steps):
                dy, dx = (torch.randint(2 * jitter + 1, (2,), generator=generator) - jitter).tolist()
                rolled = torch.roll(x, (dy, dx), dims=(-2, -1)).requires_grad_(True)
                output = probe(preprocess.normalize(rolled))
                score = objective(Seen(output, probe.activations, rolled))
                (grad,) = torch.autograd.grad(score.sum(), rolled)
                grad = torch.roll(grad, (-dy, -dx), dims=(-2, -1))
                x = (x + lr * grad / (grad.abs().mean() + 1e-8)).clamp(0, 1).detach()
                bar.update(1)
            detail = x - octave
    return x


def check_step_size(lr: float) -> None:
    """Refuse a step size that is not a positive finite number (NaN would give a NaN image)."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise DeepscopeError(f"lr must be a positive finite number, got {lr!r}.")


@torch.inference_mode()
def class_probabilities(model: nn.Module, preprocess: Preprocess, pixels: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, classes) of [0, 1] ``pixels`` (resized to the model's input size)."""
    with Probe(model):
        x = resize(preprocess.input_size)(pixels.to(model_device(model)), None)
        return model(preprocess.normalize(x)).softmax(dim=1)


def robust_probabilities(model: nn.Module, preprocess: Preprocess, pixels: torch.Tensor, classes: Sequence[int],
                         repeats: int = 16, seed: int = 1) -> torch.Tensor:
    """Probability of each image's class under ``repeats`` random jitter/scale/rotations: (N, repeats)."""
    from deepscope.optimize.transforms import robustness_transforms

    generator = torch.Generator().manual_seed(seed)
    transform = robustness_transforms(preprocess.input_size)
    index = torch.as_tensor(list(classes)).view(-1, 1)
    columns = []
    for _ in range(repeats):
        moved = transform(pixels.cpu(), generator)
        columns.append(class_probabilities(model, preprocess, moved).cpu().gather(1, index))
    return torch.cat(columns, dim=1)
