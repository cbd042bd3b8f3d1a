"""Top-k predictions of a classifier over a set of images, and accuracy when labels are known."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from deepscope.errors import DeepscopeError
from deepscope.images import ImageSet, iter_batches
from deepscope.models.zoo import LoadedModel
from deepscope.probe import Probe, model_device


@dataclass
class Classification:
    """Predictions for the images that could be read.

    Attributes
    ----------
    paths : list of Path
        Images in the order of the rows below.
    labels : list of int or None
        Known class of each image (from its folder), or None.
    topk_indices, topk_probs : (N, k) tensors
        Best classes and their softmax probabilities, best first.
    skipped : list of (Path, str)
        Files of the image set that have no row (not images, or unreadable), and why.
    label_ranks : list of int or None
        For each labelled image, how many other classes score at least as high as its label (0: the label is
        the unique top class); None for unlabelled images. Accuracy is read from these, computed on the full
        output, so it does not depend on how many classes are kept. Ties count against the label, so a model
        that gives every class the same score is not credited with any hit.
    """

    paths: list
    labels: list
    topk_indices: torch.Tensor
    topk_probs: torch.Tensor
    skipped: list = field(default_factory=list)
    label_ranks: list = field(default_factory=list)

    def accuracy(self, k: int = 1) -> float | None:
        """Share of labelled images whose class is among the top ``k``; None without labels."""
        hits = [int(rank < k) for rank in self.label_ranks if rank is not None]
        return sum(hits) / len(hits) if hits else None

    def per_class_accuracy(self, k: int = 1) -> dict[int, tuple[float, int]]:
        """{class index: (top-k accuracy, number of images)} over labelled images."""
        table: dict[int, list[int]] = {}
        for label, rank in zip(self.labels, self.label_ranks):
            if label is not None and rank is not None:
                table.setdefault(label, []).append(int(rank < k))
        return {c: (sum(v) / len(v), len(v)) for c, v in sorted(table.items())}


def classify(loaded: LoadedModel, images: ImageSet, *, topk: int = 5, batch_size: int = 32,
             progress: bool = False) -> Classification:
    """Run ``loaded.model`` over ``images`` (on the model's device) and keep the top-``k`` classes of each
    (accuracy at any k is computed from the full output, see :class:`Classification`)."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise DeepscopeError(f"topk must be a positive integer, got {topk!r}.")
    device = model_device(loaded.model)
    topk = min(topk, len(loaded.classes))
    paths, labels, indices, probs, ranks, skipped = [], [], [], [], [], list(images.skipped)
    with Probe(loaded.model, detach=True), torch.inference_mode():
        for batch in iter_batches(images, loaded.preprocess, batch_size, progress=progress and "classify"):
            skipped += batch.skipped
            if not batch.indices:
                continue
            output = loaded.model(batch.inputs.to(device)).float().softmax(dim=1)
            p, i = output.topk(topk, dim=1)
            indices.append(i.cpu())
            probs.append(p.cpu())
            ranks += label_ranks(output, batch.labels)
            paths += [images.paths[j] for j in batch.indices]
            labels += batch.labels
    if not paths:
        empty = torch.empty(0, topk)
        return Classification([], [], empty.long(), empty, skipped)
    return Classification(paths, labels, torch.cat(indices), torch.cat(probs), skipped, ranks)


def label_ranks(scores: torch.Tensor, labels: list[int | None]) -> list[int | None]:
    """For each row of ``scores`` (N, classes), how many other classes score at least as high as its label."""
    known = torch.tensor([label if label is not None else 0 for label in labels], device=scores.device)
    at_label = scores.gather(1, known[:, None])
    ranks = ((scores >= at_label).sum(dim=1) - 1).tolist()
    return [rank if label is not None else None for rank, label in zip(ranks, labels)]
