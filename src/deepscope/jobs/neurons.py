"""The ``neurons`` job: the top-k (image, position) pairs of every channel of a layer, merged exactly over shards.

Each shard runs :func:`deepscope.neurons.top_activations` over its photos and keeps its own top-k per
channel (table ``candidates``); when every shard is in, the candidates are merged with
:func:`deepscope.neurons.merge_top`. The merge is exact: a pair in the top k of the whole dataset is in the
top k of its own shard. Each image counts once per channel, at its strongest position (Zeiler and Fergus
2014); ties in value are broken as ``torch.topk`` breaks them.

Tables ``candidates`` (per shard) and ``topk`` (merged): ``channel``, ``rank`` (0 = strongest), ``value``,
``index`` (the file's position in ``files``), ``y``, ``x`` (the neuron in the feature map); ``topk`` also
has ``path``. The manifest's ``summary`` gives ``map_size`` (side of the feature map) and ``channels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deepscope.errors import DeepscopeError, TargetError, UnsupportedModelError
from deepscope.fileio import atomic_path
from deepscope.images import ImageSet
from deepscope.jobs.base import Job, unreadable
from deepscope.jobs.store import ShardOutput, ShardTask, StoredJob
from deepscope.models.zoo import LoadedModel
from deepscope.neurons import TopActivations, merge_top, top_activations
from deepscope.probe import Probe, get_layer, model_device

CANDIDATES_SCHEMA = pa.schema([("channel", pa.int32()), ("rank", pa.int32()), ("value", pa.float32()),
                               ("index", pa.int64()), ("y", pa.int32()), ("x", pa.int32())])


@dataclass(frozen=True)
class NeuronsJob(Job):
    """Top-``k`` images per channel of ``layer`` (``channels``: all when None; ``neuron``: rank by one position)."""

    kind: ClassVar[str] = "neurons"
    tables: ClassVar[tuple[str, ...]] = ("candidates",)
    results: ClassVar[tuple[str, ...]] = ("topk.parquet",)
    layer: str = ""
    channels: tuple[int, ...] | None = None
    k: int = 9
    neuron: tuple[int, int] | None = None

    def resolve(self, loaded: LoadedModel, images: ImageSet) -> "NeuronsJob":
        if not self.layer:
            raise DeepscopeError("the neurons job needs a layer (see `deepscope layers MODEL`).")
        if not isinstance(self.k, int) or self.k < 1:
            raise DeepscopeError(f"k (--top) must be at least 1, got {self.k!r}.")
        get_layer(loaded.model, self.layer)
        shape = _layer_shape(loaded, self.layer)
        if len(shape) != 4:
            raise UnsupportedModelError(f"layer {self.layer!r} gives shape {shape}; the neurons job needs an "
                                        "(N, C, H, W) feature map.")
        channels = None if self.channels is None else tuple(int(c) for c in self.channels)
        for channel in channels or ():
            if not 0 <= channel < shape[1]:
                raise TargetError(f"channel {channel} is out of range: layer {self.layer!r} has {shape[1]} channels.")
        neuron = None if self.neuron is None else tuple(int(v) for v in self.neuron)
        if neuron is not None and (len(neuron) != 2 or not all(0 <= v < s for v, s in zip(neuron, shape[2:]))):
            raise TargetError(f"neuron position {neuron} is outside the {shape[2]}x{shape[3]} feature map.")
        return NeuronsJob(self.layer, channels, self.k, neuron)

    def compute(self, loaded, state, images, task: ShardTask, batch_size: int) -> ShardOutput:
        try:
            top = top_activations(loaded.model, images, loaded.preprocess, self.layer,
                                  None if self.channels is None else list(self.channels), self.k,
                                  neuron=self.neuron, batch_size=batch_size, progress=False)
        except DeepscopeError:
            skipped = unreadable(images, loaded.preprocess, batch_size)
            if skipped is None:
                raise
            return ShardOutput(tables={"candidates": CANDIDATES_SCHEMA.empty_table()}, skipped=skipped)
        count, n = top.values.shape
        channels = torch.tensor(top.channels, dtype=torch.int32).repeat_interleave(n)
        indices = torch.tensor(task.indices)[top.image_indices.flatten().cpu()]
        columns = [channels, torch.arange(n, dtype=torch.int32).repeat(count), top.values.flatten().float().cpu(),
                   indices, top.positions[..., 0].flatten().int().cpu(), top.positions[..., 1].flatten().int().cpu()]
        table = pa.table([c.numpy() for c in columns], schema=CANDIDATES_SCHEMA)
        return ShardOutput(tables={"candidates": table}, skipped=top.skipped,
                           info={"map_size": int(top.map_size), "channels": top.channels})

    def finish(self, job: StoredJob) -> dict:
        infos = [info for info in job.shard_infos() if info]
        if not infos:
            raise DeepscopeError("no readable image to scan.")
        map_size, channels = infos[0]["map_size"], infos[0]["channels"]
        best = None
        for table in job.shard_tables("candidates"):
            if not table.num_rows:
                continue
            values, images, flat = _candidates(table, len(channels), map_size)
            best = merge_top(best, values, images, flat, self.k)
        values, images, flat = best
        k = values.shape[1]
        paths = job.shard_tables("files")
        path_of = {}
        wanted = set(images.flatten().tolist())
        for table in paths:
            for index, path in zip(table.column("index").to_pylist(), table.column("path").to_pylist()):
                if index in wanted:
                    path_of[index] = path
        flat_images = images.flatten().tolist()
        table = pa.table({
            "channel": pa.array(torch.tensor(channels, dtype=torch.int32).repeat_interleave(k).numpy()),
            "rank": pa.array(torch.arange(k, dtype=torch.int32).repeat(len(channels)).numpy()),
            "value": pa.array(values.flatten().numpy()),
            "index": pa.array(images.flatten().numpy()),
            "path": pa.array([path_of[i] for i in flat_images], pa.string()),
            "y": pa.array((flat // map_size).flatten().int().numpy()),
            "x": pa.array((flat % map_size).flatten().int().numpy()),
        })
        with atomic_path(job.path / "topk.parquet") as tmp:
            pq.write_table(table, tmp)
        return {"map_size": map_size, "channels": channels, "k": k}


def _layer_shape(loaded: LoadedModel, layer: str) -> tuple[int, ...]:
    size = loaded.preprocess.input_size
    with Probe(loaded.model, [layer], detach=True) as probe, torch.inference_mode():
        probe(torch.zeros(1, 3, size, size, device=model_device(loaded.model)))
        if layer not in probe.activations:
            raise DeepscopeError(f"layer {layer!r} did not run in the forward pass; choose another layer.")
        return tuple(probe.activations[layer].shape)


def _candidates(table: pa.Table, channels: int, map_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A shard's candidates as (C, n) tensors of values, image indices and flat positions (rank order)."""
    columns = {name: _column(table, name) for name in ("value", "index", "y", "x")}
    shape = (channels, -1)
    flat = columns["y"].long() * map_size + columns["x"].long()
    return columns["value"].view(shape), columns["index"].view(shape), flat.view(shape)


def stored_top_activations(job: StoredJob) -> TopActivations:
    """The merged top-k of a complete neurons job; ``image_indices`` are positions in the job's file list."""
    table = job.table("topk")
    summary = job.summary
    channels, k = summary["channels"], summary["k"]
    shape = (len(channels), k)
    positions = torch.stack([_column(table, "y").long().view(shape), _column(table, "x").long().view(shape)], dim=-1)
    return TopActivations(job.settings["layer"], list(channels), _column(table, "value").view(shape),
                          _column(table, "index").view(shape), positions, summary["map_size"], job.skipped_files())


def _column(table: pa.Table, name: str) -> torch.Tensor:
    return torch.from_numpy(table.column(name).to_numpy().copy())
