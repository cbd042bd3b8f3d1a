"""What the perturbation metrics share: baselines, feature rankings, and scoring many perturbed inputs.

Deletion and insertion, pixel flipping, region perturbation and IROF all

1. rank the features of a map (pixels, patches, superpixels; most relevant first unless said otherwise),
2. replace the first ``k`` of them by a baseline, for several ``k``,
3. run the model on every perturbed input and read the target class's softmax probability.

:func:`perturbed_scores` does step 3 for a list of jobs ``(image, k)``: perturbed inputs are built
``batch_size`` at a time from a rank tensor (memory stays bounded whatever the number of jobs), run in the
fast memory layout (:func:`~deepscope.probe.fast_layout`) under ``torch.inference_mode()`` through the
probe, on the input's device; a job with ``k = 0`` is the unperturbed input, scored once by
:func:`original_scores`. A callable target's value is tracked instead of a probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from deepscope.attribution.base import check_inputs
from deepscope.errors import DeepscopeError
from deepscope.evaluation.common import row_draws, saliency
from deepscope.probe import Probe, fast_layout
from deepscope.targets import Target, resolve_target, target_scores

BASELINES = ("zero", "blur", "min", "mean", "uniform")
#: RISE's blur: an 11x11 Gaussian kernel with sigma 5 (pixels of the model input).
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0

Resolved = torch.Tensor | object  # a (N,) class tensor or a callable target


@dataclass
class PerturbationCurve:
    """Target-class probability as features are removed (or revealed) in order of a map.

    Attributes
    ----------
    kind : str
        What was done (``"deletion"``, ``"insertion"``, ``"pixel flipping"``, ``"region perturbation (morf)"``).
    fractions : (K,) tensor
        Share of the features (pixels, regions) perturbed at each point, from 0.
    probabilities : (N, K) tensor
        Softmax probability of each sample's target class at each point (point 0: the unperturbed input).
    targets : (N,) tensor
        The class tracked for each sample (-1 for a callable target).
    """

    kind: str
    fractions: torch.Tensor
    probabilities: torch.Tensor
    targets: torch.Tensor

    @property
    def auc(self) -> torch.Tensor:
        """(N,) area under each sample's curve (trapezoid rule on the fractions)."""
        return auc(self.probabilities, self.fractions)

    @property
    def aopc(self) -> torch.Tensor:
        """(N,) area over the perturbation curve (Samek et al. 2017): the mean of ``p_0 - p_k`` over the points."""
        return (self.probabilities[:, :1] - self.probabilities).mean(dim=1)


def auc(values: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Area under ``values`` (..., K) by the trapezoid rule; ``x`` defaults to K even points in [0, 1]."""
    if x is None:
        x = torch.linspace(0, 1, values.shape[-1], device=values.device, dtype=values.dtype)
    return torch.trapezoid(values, x.to(values), dim=-1)


def make_baseline(inputs: torch.Tensor, baseline: str | float | torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """What removed features become, per input (model-input units).

    ``zero``: zeros (after the usual normalisation, the dataset's mean colour); ``blur``: the image blurred
    with RISE's kernel; ``min``: each image's smallest value (Quantus's "black"); ``mean``: each image's
    mean colour per channel; ``uniform``: noise drawn uniformly between each image's smallest and largest
    value, one draw per image of ``generator`` (Samek et al. 2017); a number; or a tensor that broadcasts
    to ``inputs``.
    """
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(inputs).expand_as(inputs)
        except RuntimeError:
            raise DeepscopeError(f"baseline of shape {tuple(baseline.shape)} does not fit inputs of shape "
                                 f"{tuple(inputs.shape)}.") from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    low = inputs.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
    match baseline:
        case "zero":
            return torch.zeros_like(inputs)
        case "blur":
            return TF.gaussian_blur(inputs, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
        case "min":
            return low.expand_as(inputs).clone()
        case "mean":
            return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
        case "uniform":
            if generator is None:
                raise DeepscopeError("a uniform baseline needs a seeded generator.")
            high = inputs.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
            return low + row_draws(generator, len(inputs), inputs, "uniform") * (high - low)
    raise DeepscopeError(f"unknown baseline {baseline!r}; choose {', '.join(BASELINES)}, a number or a tensor.")


def check_maps(inputs: torch.Tensor, maps: torch.Tensor) -> None:
    """Raise unless ``inputs`` is a batch and ``maps`` holds one (N, C', h, w) map per input."""
    check_inputs(inputs)
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[0] != inputs.shape[0]:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise DeepscopeError(f"maps must be (N, C, H, W) with one map per input ({inputs.shape[0]}); got {shape}.")
    if not bool(torch.isfinite(maps).all()):
        raise DeepscopeError("maps contain NaN or infinite values, which have no order; check the method's output.")


def check_positive(**values: int) -> None:
    """Raise for the first of ``values`` (name=value) below 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DeepscopeError(f"{name} must be a positive integer, got {value!r}.")


def relevance(maps: torch.Tensor, inputs: torch.Tensor, reduction: str | None) -> torch.Tensor:
    """The map the metrics rank: :func:`~deepscope.maps.saliency` at the input's size, on its device.

    ``reduction=None`` keeps a per-channel map's channels, so each colour value is a feature of its own;
    such a map must have one channel or as many as the input.
    """
    values = saliency(maps.detach().to(inputs.device), tuple(inputs.shape[-2:]), reduction)
    if values.shape[1] not in (1, inputs.shape[1]):
        raise DeepscopeError(f"maps with {values.shape[1]} channels do not fit inputs with {inputs.shape[1]}; "
                             "reduce them (reduction='abs-max').")
    return values


def ranks_of(values: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """Rank (0 = first) of every entry of each sample of ``values`` (N, ...), same shape; ties keep index order."""
    flat = values.flatten(1)
    order = flat.argsort(dim=1, descending=descending, stable=True)
    positions = torch.arange(flat.shape[1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view_as(values)


def original_scores(model: nn.Module, inputs: torch.Tensor, target: Target,
                    batch_size: int) -> tuple[Resolved, torch.Tensor]:
    """The resolved target (default: each input's predicted class) and its probability on the inputs."""
    with Probe(model, detach=True), torch.inference_mode():
        output = torch.cat([model(fast_layout(chunk)) for chunk in inputs.split(batch_size)])
        resolved = resolve_target(target, output)
        scores = target_probability(output, resolved, torch.arange(len(inputs), device=inputs.device))
    if isinstance(resolved, torch.Tensor):
        resolved = resolved.clone()  # a normal tensor (not an inference-mode one) that callers may use in autograd
    return resolved, scores.clone()


def target_probability(output: torch.Tensor, resolved: Resolved, images: torch.Tensor) -> torch.Tensor:
    """(B,) softmax probability of the target of each row's image (a callable target: its value)."""
    if isinstance(resolved, torch.Tensor):
        return target_scores(output.float().softmax(dim=1), resolved[images])
    return target_scores(output, resolved).float()


def targets_of(resolved: Resolved, n: int, device: torch.device) -> torch.Tensor:
    """(N,) classes tracked, -1 for a callable target."""
    return resolved if isinstance(resolved, torch.Tensor) else torch.full((n,), -1, device=device)


def perturbed_scores(model: nn.Module, inputs: torch.Tensor, replacement: torch.Tensor, ranks: torch.Tensor,
                     images: torch.Tensor, counts: torch.Tensor, resolved: Resolved, original: torch.Tensor, *,
                     batch_size: int, progress: bool = False, desc: str = "perturbing") -> torch.Tensor:
    """Target probability of each job: input ``images[j]`` with its features of rank below ``counts[j]``
    taken from ``replacement``.

    Parameters
    ----------
    inputs, replacement : (N, C, H, W) tensors
    ranks : (N, 1 or C, H, W) long tensor
        Each feature's rank (a one-channel rank moves all channels of a pixel together).
    images, counts : (J,) long tensors
        The jobs. A job with count 0 is the unperturbed input: its score is taken from ``original``.
    resolved, original
        From :func:`original_scores`.
    """
    from tqdm.auto import tqdm

    scores = original[images].clone()
    todo = torch.nonzero(counts > 0).flatten()
    bar = tqdm(total=len(todo), desc=desc, unit="eval", disable=not progress, leave=False)
    with Probe(model, detach=True), torch.inference_mode(), bar:
        for chunk in todo.split(batch_size):
            batch = inputs.new_empty(len(chunk), *inputs.shape[1:])
            start = 0
            # jobs of one image: compare its ranks with their counts by broadcasting (no per-job copies)
            for image, count in zip(*[t.tolist() for t in torch.unique_consecutive(images[chunk], return_counts=True)]):
                limits = counts[chunk[start:start + count]].view(-1, 1, 1, 1)
                torch.where(ranks[image] < limits, replacement[image], inputs[image], out=batch[start:start + count])
                start += count
            scores[chunk] = target_probability(model(fast_layout(batch)), resolved, images[chunk])
            bar.update(len(chunk))
    return scores
