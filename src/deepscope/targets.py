"""What a map explains: which score of the model's output.

A target is one of
- ``None``: the predicted class of each sample (the default);
- an ``int``: the same class for every sample;
- a sequence or 1-D tensor of ints: one class per sample;
- a callable ``f(output) -> (N,) scores``: anything else (a sum of classes, a probability, a margin).

Scores are logits (before softmax) unless the callable says otherwise, as in Simonyan et al. 2014.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from deepscope.errors import TargetError

Target = None | int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def resolve_target(target: Target, output: torch.Tensor) -> torch.Tensor | Callable[[torch.Tensor], torch.Tensor]:
    """Turn ``target`` into a (N,) long tensor of class indices (or keep a callable), checked against ``output``.

    Parameters
    ----------
    output : (N, classes) tensor
        The model's output for the batch being explained.
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    if output.ndim != 2:
        raise TargetError(f"class targets need a (batch, classes) model output; got shape {tuple(output.shape)}. "
                          "Pass a callable target that returns one score per sample.")
    n, classes = output.shape
    if target is None:
        return output.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index, got {target!r}.")
    if isinstance(target, str):
        raise TargetError(f"target must be a class index, got the name {target!r}; look it up with "
                          f"loaded.classes.index({target!r}).")
    if isinstance(target, int):
        indices = torch.full((n,), target, dtype=torch.long, device=output.device)
    else:
        indices = torch.as_tensor(target, device=output.device)
        if indices.ndim == 0:
            indices = indices.expand(n)
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TargetError(f"target must hold integer class indices, got dtype {indices.dtype}.")
        if indices.shape != (n,):
            raise TargetError(f"got {indices.numel()} targets for a batch of {n}; give one class per sample or one for all.")
        indices = indices.long()
    if n and (int(indices.min()) < 0 or int(indices.max()) >= classes):
        raise TargetError(f"target class out of range: the model has {classes} outputs (0..{classes - 1}), "
                          f"got {indices.tolist() if n <= 8 else 'indices up to ' + str(int(indices.max()))}.")
    return indices.clone() if indices.is_inference() else indices  # targets made under inference_mode work too


def target_scores(output: torch.Tensor, target: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The (N,) scores of a resolved target (see :func:`resolve_target`)."""
    if callable(target) and not isinstance(target, torch.Tensor):
        scores = target(output)
        if scores.ndim != 1 or scores.shape[0] != output.shape[0]:
            raise TargetError(f"a target callable must return one score per sample, shape ({output.shape[0]},); "
                              f"got {tuple(scores.shape)}.")
        return scores
    return output.gather(1, target.view(-1, 1)).squeeze(1)


def repeat_target(target: torch.Tensor | Callable, repeats: int) -> torch.Tensor | Callable:
    """The target of a batch in which each sample is repeated ``repeats`` times consecutively."""
    if isinstance(target, torch.Tensor):
        return target.repeat_interleave(repeats)
    return target


def select_target(target: torch.Tensor | Callable, samples: torch.Tensor) -> torch.Tensor | Callable:
    """The resolved target of a batch made of the given rows (sample indices) of the original batch."""
    return target[samples] if isinstance(target, torch.Tensor) else target


def layer_scores(activation: torch.Tensor, target: int | Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(N,) scores of an intermediate layer's activation, for explaining a channel or a neuron.

    ``target`` is a channel index (score: that channel's largest activation over space) or a callable
    ``f(activation) -> (N,)`` (for one spatial neuron: ``lambda a: a[:, c, y, x]``).
    """
    if callable(target) and not isinstance(target, torch.Tensor):
        scores = target(activation)
    elif isinstance(target, int) and not isinstance(target, bool):
        if not 0 <= target < activation.shape[1]:
            raise TargetError(f"channel {target} is out of range: the layer has {activation.shape[1]} channels.")
        scores = activation[:, target].flatten(1).amax(dim=1)
    else:
        raise TargetError("a layer target must be a channel index or a callable f(activation) -> (N,) scores; "
                          f"got {target!r}.")
    if scores.ndim != 1 or scores.shape[0] != activation.shape[0]:
        raise TargetError(f"a layer target must give one score per sample; got shape {tuple(scores.shape)}.")
    return scores
