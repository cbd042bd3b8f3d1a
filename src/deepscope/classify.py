"""Top-k predictions of a classifier over a set of images, and accuracy when labels are known."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    """

    paths: list
    labels: list
    topk_indices: torch.Tensor
    topk_probs: torch.Tensor
    skipped: list = field(default_factory=list)

    def accuracy(self, k: int = 1) -> float | None:
        """Share of labelled images whose class is among the top ``k``; None without labels."""
        hits = [int(label in row[:k]) for label, row in zip(self.labels, self.topk_indices.tolist()) if label is not None]
        return sum(hits) / len(hits) if hits else None

    def per_class_accuracy(self, k: int = 1) -> dict[int, tuple[float, int]]:
        """{class index: (top-k accuracy, number of images)} over labelled images."""
        table: dict[int, list[int]] = {}
        for label, row in zip(self.labels, self.topk_indices.tolist()):
            if label is not None:
                table.setdefault(label, []).append(int(label in row[:k]))
        return {c: (sum(v) / len(v), len(v)) for c, v in sorted(table.items())}


def classify(loaded: LoadedModel, images: ImageSet, *, topk: int = 5, batch_size: int = 32,
             progress: bool = False) -> Classification:
    """Run ``loaded.model`` over ``images`` (on the model's device) and keep the top-``k`` classes of each."""
    device = model_device(loaded.model)
    topk = min(topk, len(loaded.classes))
    paths, labels, indices, probs, skipped = [], [], [], [], list(images.skipped)
    with Probe(loaded.model, detach=True), torch.inference_mode():
        for batch in iter_batches(images, loaded.preprocess, batch_size, progress=progress and "classify"):
            skipped += batch.skipped
            if not batch.indices:
                continue
            output = loaded.model(batch.inputs.to(device)).float().softmax(dim=1)
            p, i = output.topk(topk, dim=1)
            indices.append(i.cpu())
            probs.append(p.cpu())
            paths += [images.paths[j] for j in batch.indices]
            labels += batch.labels
    if not paths:
        empty = torch.empty(0, topk)
        return Classification([], [], empty.long(), empty, skipped)
    return Classification(paths, labels, torch.cat(indices), torch.cat(probs), skipped)
