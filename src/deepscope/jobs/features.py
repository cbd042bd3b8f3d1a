"""The ``features`` job: a feature bank at any layer, by :func:`deepscope.features.extract_features` per shard.

Array ``features``: ``(N, D)`` float32, one row per readable file (global-average-pooled activations of
the layer, or the layer's input for ``NAME:input``; see :mod:`deepscope.features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from deepscope.errors import DeepscopeError
from deepscope.features import INPUT_SUFFIX, FeatureBank, default_feature_layer, extract_features
from deepscope.images import ImageSet
from deepscope.jobs.base import Job, check_order, readable_indices, unreadable
from deepscope.jobs.store import ShardOutput, ShardTask, StoredJob
from deepscope.models.zoo import LoadedModel
from deepscope.probe import get_layer


@dataclass(frozen=True)
class FeaturesJob(Job):
    """The feature bank of every photo at ``layer`` (default: the input of the classifier's last linear layer)."""

    kind: ClassVar[str] = "features"
    arrays: ClassVar[tuple[str, ...]] = ("features",)
    layer: str | None = None

    def resolve(self, loaded: LoadedModel, images: ImageSet) -> "FeaturesJob":
        layer = self.layer or default_feature_layer(loaded.model)
        get_layer(loaded.model, layer.removesuffix(INPUT_SUFFIX))
        return FeaturesJob(layer)

    def compute(self, loaded, state, images, task: ShardTask, batch_size: int) -> ShardOutput:
        try:
            bank = extract_features(loaded, images, self.layer, batch_size=batch_size, cache=False)
        except DeepscopeError:
            skipped = unreadable(images, loaded.preprocess, batch_size)
            if skipped is None:
                raise
            return ShardOutput(arrays={"features": np.zeros((0, 0), np.float32)}, skipped=skipped)
        check_order(readable_indices(images, task, bank.paths), task, bank.skipped)
        features = bank.features.float().numpy()
        return ShardOutput(arrays={"features": features}, skipped=bank.skipped,
                           info={"dimensions": int(features.shape[1])})


def stored_feature_bank(job: StoredJob) -> FeatureBank:
    """The feature bank of a complete features job (in memory)."""
    files = job.readable_files().to_pydict()
    parts = [part for part in job.iter_arrays("features") if len(part)]
    features = torch.from_numpy(np.concatenate(parts)) if parts else torch.empty(0, 0)
    return FeatureBank(features, [Path(p) for p in files["path"]], files["label"], files["folder"],
                       job.settings["layer"], job.manifest["model"]["name"], "features", job.skipped_files(),
                       job.manifest["key"])
