"""What a job is, and :func:`run_job`, which plans its shards, skips finished ones and hands the rest to an engine.

A job (:class:`Job`) is a frozen dataclass of settings with four steps: :meth:`Job.resolve` fills in defaults
and checks the settings against the model before any work; :meth:`Job.prepare` builds what a worker keeps
between shards (a method, say); :meth:`Job.compute` turns one shard's photos into tables and arrays by calling
the library's own function on them (``classify``, ``extract_features``, ``top_activations``, a catalogue
method, the faithfulness metrics); :meth:`Job.finish` merges the shards (exact top-k, aggregates) when every
shard is in. The settings, with the model's digest and the file list, name the job in the store.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from deepscope.errors import DeepscopeError
from deepscope.images import ImageSet, Skip, iter_batches
from deepscope.jobs.store import (FORMAT, FORMAT_VERSION, JobFolder, ShardOutput, ShardTask, StoredJob, check_outputs,
                                  digests, job_key, now, shard_key, versions)
from deepscope.models.zoo import LoadedModel


@dataclass(frozen=True)
class Job:
    """Settings of one kind of job; subclasses add fields and the steps below."""

    kind: ClassVar[str] = ""
    #: photos per shard unless the caller chooses
    shard_size: ClassVar[int] = 256
    #: the per-shard tables, written as one file each when the job completes
    tables: ClassVar[tuple[str, ...]] = ()
    #: the per-shard arrays
    arrays: ClassVar[tuple[str, ...]] = ()
    #: files :meth:`finish` writes into the job's folder
    results: ClassVar[tuple[str, ...]] = ()

    def resolve(self, loaded: LoadedModel, images: ImageSet) -> "Job":
        """The job with defaults filled in (so the store names what was computed); raises before any work."""
        return self

    def settings(self) -> dict:
        """The settings as JSON values (part of the job's key)."""
        return {f.name: _json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def prepare(self, loaded: LoadedModel) -> Any:
        """What a worker builds once and keeps for every shard (default: nothing)."""
        return None

    def compute(self, loaded: LoadedModel, state: Any, images: ImageSet, task: ShardTask,
                batch_size: int) -> ShardOutput:
        """Tables and arrays of one shard; ``images`` are the shard's files (``task.indices`` their positions)."""
        raise NotImplementedError

    def finish(self, job: StoredJob) -> dict:
        """Write what needs every shard (merged top-k, aggregates) into ``job.path``; returns the summary
        (by default the facts the first shard with readable photos recorded, e.g. the feature dimensions)."""
        return next((info for info in job.shard_infos() if info), {})


def _json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return value


def freeze(options: dict | None) -> tuple:
    """Method options as a sorted tuple of pairs (jobs are frozen dataclasses)."""
    return tuple(sorted((options or {}).items()))


@dataclass
class JobRun:
    """What one run of a job did.

    Attributes
    ----------
    path : Path
        The job's folder in the store.
    shards, computed, reused : int
        Shards in the job, computed by this run, found finished (and intact) in the store.
    files, skipped : int
        Files in the job, and files that could not be read.
    seconds : float
        Wall time of the run.
    engine : str
    """

    path: Path
    kind: str
    shards: int
    computed: int
    reused: int
    files: int
    skipped: int
    seconds: float
    engine: str

    def open(self) -> StoredJob:
        """The job's results (tables and arrays)."""
        return StoredJob(self.path)

    def describe(self) -> str:
        done = "all reused" if not self.computed else f"{self.computed} computed, {self.reused} reused"
        skipped = f", {self.skipped} unreadable" if self.skipped else ""
        return (f"{self.kind}: {self.files} file(s){skipped} in {self.shards} shard(s) ({done}) with the "
                f"{self.engine} engine in {self.seconds:.1f} s -> {self.path}")


def run_job(job: Job, loaded: LoadedModel, images: ImageSet, store: str | Path, *, engine: str | Any = "local",
            workers: int | None = None, address: str | None = None, shard_size: int | None = None,
            batch_size: int = 32, progress: bool = False) -> JobRun:
    """Run ``job`` over ``images`` in shards and keep the results in ``store``; finished shards are reused.

    Parameters
    ----------
    job : Job
        A :class:`~deepscope.jobs.ClassifyJob`, :class:`~deepscope.jobs.FeaturesJob`, ... with its settings.
    loaded : LoadedModel
        The model (left unchanged) and its preprocessing.
    images : ImageSet
        The photos, e.g. from :func:`deepscope.images.scan_images`; any number.
    store : path
        The store folder; the job gets its own sub-folder (see :mod:`deepscope.jobs.store`).
    engine : ``"local"``, ``"ray"`` or an engine object
        ``local`` computes in this process; ``ray`` on a Ray cluster (see :mod:`deepscope.jobs.engines`).
    workers, address
        Ray only: actors in the pool (default: one per GPU, else one per node); the cluster to join
        (default: a running one in this process, else a new local instance).
    shard_size : int, optional
        Photos per shard (default: the job's); the unit of resumption and of work handed to a worker.
    batch_size : int
        Photos per forward pass.
    progress : bool
        One progress bar over the shards.
    """
    from tqdm.auto import tqdm

    from deepscope.jobs.engines import make_engine

    shard_size = job.shard_size if shard_size is None else shard_size
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise DeepscopeError(f"{name} must be a positive integer, got {value!r}.")
    if not len(images):
        raise DeepscopeError(f"no image files to run the {job.kind} job on.")
    runner = make_engine(engine, workers=workers, address=address)
    job = job.resolve(loaded, images)
    started = time.perf_counter()
    model_digest, _ = digests(loaded)
    settings = job.settings()
    paths = [str(p) for p in images.paths]
    key = job_key(job.kind, model_digest, settings, paths, images.labels)
    count = math.ceil(len(paths) / shard_size)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "kind": job.kind, "key": key,
        "model": {"name": loaded.name, "source": loaded.source, "digest": model_digest,
                  "preprocess": dataclasses.asdict(loaded.preprocess), "classes": len(loaded.classes)},
        "settings": settings,
        "images": {"root": str(images.root), "files": len(paths),
                   "left_out_by_scan": [[str(p), reason] for p, reason in images.skipped]},
        "shard_size": shard_size, "shards": count, "tables": ["files", *job.tables], "arrays": list(job.arrays),
        "results": list(job.results),
        "versions": versions(), "created": now(),
    }
    name = f"{job.kind}-{_safe(loaded.name)}-{key[:12]}"
    folder = JobFolder(Path(store) / name)
    counts = {"computed": 0, "reused": 0}
    with folder.lock():
        previous = folder.read_manifest() or {}
        folder = JobFolder.create(store, name, manifest)
        folder.tidy(count)
        bar = tqdm(total=count, desc=f"{job.kind} shards", unit="shard", disable=not progress)

        def tasks() -> Iterator[ShardTask]:
            for shard in range(count):
                task = _task(shard, shard_size, key, images)
                if folder.is_done(task):
                    counts["reused"] += 1
                    bar.update()
                else:
                    yield task

        def commit(task: ShardTask, output: ShardOutput, run: dict) -> None:
            folder.write_shard(task, output, run)
            counts["computed"] += 1
            bar.update()

        with bar:
            runner.run(job, loaded, images.root, tasks(), commit, batch_size)
        manifest = folder.read_manifest()
        if not counts["computed"] and previous.get("complete") and check_outputs(folder.path, previous["outputs"]) is None:
            for entry in ("summary", "outputs", "finished"):  # nothing changed: the final step's files stand
                manifest[entry] = previous[entry]
            manifest["complete"] = True
            folder.write_manifest(manifest)
        else:
            manifest["summary"] = job.finish(StoredJob(folder.path, verify=False))
            folder.complete(manifest, job.tables, job.results)
    stored = StoredJob(folder.path, verify=False)
    skipped = stored.table("files").column("status").to_pylist().count("skipped")
    return JobRun(folder.path, job.kind, count, counts["computed"], counts["reused"], len(paths), skipped,
                  time.perf_counter() - started, runner.name)


def _task(shard: int, size: int, key: str, images: ImageSet) -> ShardTask:
    """Shard ``shard`` of the file list, with the content digest of each of its files."""
    indices = range(shard * size, min((shard + 1) * size, len(images)))
    paths = [str(images.paths[i]) for i in indices]
    labels = [images.labels[i] for i in indices]
    _, contents = digests(paths=paths)
    return ShardTask(shard, shard_key(key, paths, labels, contents), tuple(indices), tuple(paths),
                     tuple(images.folders[i] for i in indices), tuple(labels), tuple(contents))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]


def run_shard(job: Job, loaded: LoadedModel, state: Any, task: ShardTask, root: str | Path,
              batch_size: int) -> ShardOutput:
    """Compute one shard (in whichever process the engine chose); its unreadable files become indices."""
    images = ImageSet(Path(root), [Path(p) for p in task.paths], list(task.folders), list(task.labels))
    output = job.compute(loaded, state, images, task, batch_size)
    position = {Path(p): i for p, i in zip(task.paths, task.indices)}
    output.skipped = {position[Path(p)]: reason for p, reason in output.skipped if Path(p) in position}
    return output


def unreadable(images: ImageSet, preprocess, batch_size: int) -> list[Skip] | None:
    """The skips of a shard none of whose files could be read (the library functions then raise without
    them); None when some file can be read."""
    skipped = []
    for batch in iter_batches(images, preprocess, batch_size):
        if batch.indices:
            return None
        skipped += batch.skipped
    return skipped


def readable_indices(images: ImageSet, task: ShardTask, paths: list) -> list[int]:
    """Positions in the job's file list of ``paths`` (files of this shard, as a library function returned them)."""
    position = {p: i for p, i in zip(images.paths, task.indices)}
    return [position[Path(p)] for p in paths]


def check_order(indices: list[int], task: ShardTask, skipped: list[Skip]) -> None:
    """The rows a library function returned must be the shard's readable files in order (the store relies on it)."""
    left_out = {Path(p) for p, _ in skipped}
    expected = [i for i, p in zip(task.indices, task.paths) if Path(p) not in left_out]
    if indices != expected:
        raise RuntimeError(f"shard {task.shard}: rows came back out of file order")
