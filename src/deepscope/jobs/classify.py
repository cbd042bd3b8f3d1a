"""The ``classify`` job: the top-k classes of every photo, by :func:`deepscope.classify.classify` per shard.

Table ``predictions``: ``index`` (the file's position in ``files``), ``classes`` (k class indices, best
first) and ``probabilities`` (their softmax probabilities), both fixed-size lists, and ``label_rank`` (how many
other classes score at least as high as the photo's label, from the full output; null without a label).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

from deepscope.classify import Classification, classify
from deepscope.errors import DeepscopeError
from deepscope.images import ImageSet
from deepscope.jobs.base import Job, readable_indices
from deepscope.jobs.store import ShardOutput, ShardTask, StoredJob
from deepscope.models.zoo import LoadedModel


@dataclass(frozen=True)
class ClassifyJob(Job):
    """Top-``topk`` predictions of every photo."""

    kind: ClassVar[str] = "classify"
    tables: ClassVar[tuple[str, ...]] = ("predictions",)
    topk: int = 5

    def resolve(self, loaded: LoadedModel, images: ImageSet) -> "ClassifyJob":
        if not isinstance(self.topk, int) or self.topk < 1:
            raise DeepscopeError(f"topk must be a positive integer, got {self.topk!r}.")
        return ClassifyJob(min(self.topk, len(loaded.classes)))

    def compute(self, loaded, state, images, task: ShardTask, batch_size: int) -> ShardOutput:
        result = classify(loaded, images, topk=self.topk, batch_size=batch_size)
        k = self.topk
        columns = [readable_indices(images, task, result.paths),
                   pa.FixedSizeListArray.from_arrays(pa.array(result.topk_indices.flatten().numpy().astype("int32")), k),
                   pa.FixedSizeListArray.from_arrays(pa.array(result.topk_probs.flatten().numpy().astype("float32")), k),
                   pa.array(result.label_ranks or [None] * len(result.paths), pa.int32())]
        return ShardOutput(tables={"predictions": pa.table(columns, schema=predictions_schema(k))},
                           skipped=result.skipped)


def predictions_schema(k: int) -> pa.Schema:
    return pa.schema([("index", pa.int64()), ("classes", pa.list_(pa.int32(), k)),
                      ("probabilities", pa.list_(pa.float32(), k)), ("label_rank", pa.int32())])


def stored_classification(job: StoredJob) -> Classification:
    """The predictions of a complete classify job as a :class:`~deepscope.classify.Classification`."""
    import torch

    files = job.table("files").to_pydict()
    table = job.table("predictions")
    k = job.settings["topk"]
    row_of = {index: i for i, index in enumerate(files["index"])}
    rows = [row_of[index] for index in table.column("index").to_pylist()]
    classes = table.column("classes").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
    probs = table.column("probabilities").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
    return Classification([Path(files["path"][r]) for r in rows], [files["label"][r] for r in rows],
                          torch.from_numpy(classes.astype("int64")), torch.from_numpy(probs.copy()), job.skipped_files(),
                          table.column("label_rank").to_pylist())
