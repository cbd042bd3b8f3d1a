"""The ``explain`` job: the maps of one catalogue method for every photo, at a chosen resolution and dtype.

The method is built once per worker with :func:`deepscope.catalogue.build_method`; each batch of photos is
explained for its target (each photo's predicted class, its folder's class, or one class for all) and the
raw maps are turned into what the metrics rank and the figures colour by
:func:`deepscope.maps.saliency` (channels reduced as the method's display says, resized bilinearly to
``size``), then stored as ``dtype``. :func:`deepscope.maps.display_maps` of a stored map gives the picture.

Array ``maps``: ``(N, C, size, size)`` (C is 1, or 3 for a method shown with its colour channels).
Table ``targets``: ``index`` (the file's position in ``files``) and ``target`` (the class explained).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch

from deepscope.catalogue import build_method, get_method
from deepscope.errors import DeepscopeError
from deepscope.images import ImageSet, iter_batches
from deepscope.jobs.base import Job, check_order, freeze
from deepscope.jobs.store import ShardOutput, ShardTask
from deepscope.maps import saliency
from deepscope.models.zoo import LoadedModel
from deepscope.probe import batched_forward, model_device

DTYPES = ("float16", "float32")
TARGETS_SCHEMA = pa.schema([("index", pa.int64()), ("target", pa.int64())])


@dataclass(frozen=True)
class ExplainJob(Job):
    """Maps of ``method`` (with ``options``) for ``target`` (``"pred"``, ``"label"`` or a class), ``size`` px
    square (default: the model input's side), as ``dtype``."""

    kind: ClassVar[str] = "explain"
    shard_size: ClassVar[int] = 64
    tables: ClassVar[tuple[str, ...]] = ("targets",)
    arrays: ClassVar[tuple[str, ...]] = ("maps",)
    method: str = "gradient"
    options: tuple = ()
    target: str | int = "pred"
    size: int | None = None
    dtype: str = "float16"

    def resolve(self, loaded: LoadedModel, images: ImageSet) -> "ExplainJob":
        options = dict(self.options)
        get_method(self.method).check_options(options)
        build_method(self.method, loaded.model, preprocess=loaded.preprocess, **options)  # fits this model?
        target = self.target
        if target == "label":
            if not images.labelled:
                raise DeepscopeError("target 'label' needs class folders (named by WordNet id or class name) for "
                                     "every photo; use pred or a class.")
        elif target != "pred":
            target = loaded.classes.index(target)
        size = loaded.preprocess.input_size if self.size is None else self.size
        if not isinstance(size, int) or size < 1:
            raise DeepscopeError(f"map size must be a positive integer, got {size!r}.")
        if self.dtype not in DTYPES:
            raise DeepscopeError(f"map dtype {self.dtype!r}: use {' or '.join(DTYPES)}.")
        return ExplainJob(self.method, freeze(options), target, size, self.dtype)

    def prepare(self, loaded: LoadedModel):
        return build_method(self.method, loaded.model, preprocess=loaded.preprocess, **dict(self.options))

    def compute(self, loaded, method, images, task: ShardTask, batch_size: int) -> ShardOutput:
        device = model_device(loaded.model)
        indices, targets, maps, skipped = [], [], [], []
        for batch in iter_batches(images, loaded.preprocess, batch_size):
            skipped += batch.skipped
            if not batch.indices:
                continue
            inputs = batch.inputs.to(device)
            if self.target == "pred":
                target = batched_forward(loaded.model, inputs, batch_size).argmax(1)
            elif self.target == "label":
                target = torch.tensor(batch.labels, device=device)
            else:
                target = torch.full((len(inputs),), int(self.target), device=device)
            raw = method.attribute(inputs, target=target)
            maps.append(saliency(raw, self.size, method.display.reduction).cpu().numpy().astype(self.dtype))
            targets += target.tolist()
            indices += [task.indices[i] for i in batch.indices]
        check_order(indices, task, skipped)
        table = pa.table([pa.array(indices, pa.int64()), pa.array(targets, pa.int64())], schema=TARGETS_SCHEMA)
        shape = (0, 1, self.size, self.size)
        array = np.concatenate(maps) if maps else np.zeros(shape, self.dtype)
        display = method.display
        return ShardOutput(tables={"targets": table}, arrays={"maps": array}, skipped=skipped,
                           info={"signed": display.signed, "reduction": display.reduction})
