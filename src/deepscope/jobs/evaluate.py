"""The ``evaluate`` job: faithfulness metrics of one catalogue method for every photo, aggregated at the end.

Per photo (table ``metrics``), for the map of its predicted class: the deletion and insertion AUC
(:func:`deepscope.evaluation.deletion_insertion.deletion_curve` and ``insertion_curve``, Petsiuk et al.
2018) and, unless ``randomization=False``, the rank correlation and SSIM of the map with the map of a copy of
the model whose top block was randomised (the first step of
:func:`deepscope.evaluation.randomization.cascading_randomization`, Adebayo et al. 2018). The grid pointing
game scores mosaics of several photos, not single photos, so it is left to the trust table.

Table ``summary`` (and the manifest's ``summary``): for each metric, the number of photos, mean, standard
deviation, standard error and a 95 % confidence interval of the mean (Student's t).

Differs from the trust table (:mod:`deepscope.trust_table`): every photo rather than a few per class; the
randomisation check on every photo rather than the first few.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepscope.catalogue import build_method, get_method
from deepscope.errors import DeepscopeError
from deepscope.evaluation.deletion_insertion import deletion_curve, insertion_curve
from deepscope.evaluation.randomization import cascading_randomization
from deepscope.fileio import atomic_path
from deepscope.images import ImageSet, iter_batches
from deepscope.jobs.base import Job, check_order, freeze
from deepscope.jobs.store import ShardOutput, ShardTask, StoredJob
from deepscope.models.zoo import LoadedModel
from deepscope.probe import model_device

METRICS = ("deletion_auc", "insertion_auc", "randomization_spearman", "randomization_ssim")
METRICS_SCHEMA = pa.schema([("index", pa.int64()), ("target", pa.int64())] + [(m, pa.float64()) for m in METRICS])
SUMMARY_SCHEMA = pa.schema([("metric", pa.string()), ("n", pa.int64()), ("mean", pa.float64()), ("std", pa.float64()),
                            ("sem", pa.float64()), ("ci95_low", pa.float64()), ("ci95_high", pa.float64())])


@dataclass(frozen=True)
class EvaluateJob(Job):
    """Per-photo faithfulness of ``method`` (with ``options``): deletion/insertion with ``steps`` steps, and
    top-block randomisation (blocks of ``cascade_depth`` dotted name parts, seeded by ``seed``)."""

    kind: ClassVar[str] = "evaluate"
    shard_size: ClassVar[int] = 32
    tables: ClassVar[tuple[str, ...]] = ("metrics",)
    results: ClassVar[tuple[str, ...]] = ("summary.parquet",)
    method: str = "gradient"
    options: tuple = ()
    steps: int = 50
    randomization: bool = True
    cascade_depth: int = 2
    seed: int = 0

    def resolve(self, loaded: LoadedModel, images: ImageSet) -> "EvaluateJob":
        options = dict(self.options)
        get_method(self.method).check_options(options)
        build_method(self.method, loaded.model, preprocess=loaded.preprocess, **options)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise DeepscopeError(f"steps must be a positive integer, got {self.steps!r}.")
        return EvaluateJob(self.method, freeze(options), self.steps, bool(self.randomization), self.cascade_depth,
                           self.seed)

    def prepare(self, loaded: LoadedModel):
        return build_method(self.method, loaded.model, preprocess=loaded.preprocess, **dict(self.options))

    def compute(self, loaded, method, images, task: ShardTask, batch_size: int) -> ShardOutput:
        model, device = loaded.model, model_device(loaded.model)
        reduction = method.display.reduction
        columns: dict[str, list] = {name: [] for name in METRICS_SCHEMA.names}
        skipped = []
        for batch in iter_batches(images, loaded.preprocess, batch_size):
            skipped += batch.skipped
            if not batch.indices:
                continue
            inputs = batch.inputs.to(device)
            maps = method.attribute(inputs)
            curve = {"steps": self.steps, "batch_size": batch_size, "reduction": reduction}
            deletion = deletion_curve(model, inputs, maps, **curve)
            insertion = insertion_curve(model, inputs, maps, deletion.targets, **curve)
            columns["index"] += [task.indices[i] for i in batch.indices]
            columns["target"] += deletion.targets.tolist()
            columns["deletion_auc"] += deletion.auc.tolist()
            columns["insertion_auc"] += insertion.auc.tolist()
            if self.randomization:
                options = dict(self.options)
                result = cascading_randomization(
                    lambda m: build_method(self.method, m, preprocess=loaded.preprocess, **options), model, inputs,
                    deletion.targets, depth=self.cascade_depth, max_steps=1, seed=self.seed, reduction=reduction)
                columns["randomization_spearman"] += result.spearman[1].tolist()
                columns["randomization_ssim"] += result.ssim[1].tolist()
            else:
                columns["randomization_spearman"] += [math.nan] * len(inputs)
                columns["randomization_ssim"] += [math.nan] * len(inputs)
        check_order(columns["index"], task, skipped)
        return ShardOutput(tables={"metrics": pa.table(columns, schema=METRICS_SCHEMA)}, skipped=skipped)

    def finish(self, job: StoredJob) -> dict:
        values = {name: [] for name in METRICS}
        for table in job.shard_tables("metrics"):
            for name in METRICS:
                values[name].append(table.column(name).to_numpy())
        rows = [aggregate(name, np.concatenate(parts) if parts else np.zeros(0)) for name, parts in values.items()]
        with atomic_path(job.path / "summary.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA), tmp)
        return {row["metric"]: {k: v for k, v in row.items() if k != "metric"} for row in rows}


def aggregate(name: str, values: np.ndarray) -> dict:
    """Count, mean, standard deviation, standard error and 95 % t-interval of the finite ``values``."""
    from scipy import stats

    values = values[np.isfinite(values)]
    n = len(values)
    nan = math.nan
    if n == 0:
        return {"metric": name, "n": 0, "mean": nan, "std": nan, "sem": nan, "ci95_low": nan, "ci95_high": nan}
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else nan
    sem = std / math.sqrt(n) if n > 1 else nan
    half = float(stats.t.ppf(0.975, n - 1)) * sem if n > 1 else nan
    return {"metric": name, "n": n, "mean": mean, "std": std, "sem": sem, "ci95_low": mean - half,
            "ci95_high": mean + half}
