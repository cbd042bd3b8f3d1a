"""The results store: one directory per job, in files that pyarrow and numpy read without deepscope.

A store is a folder (``--store DIR``) holding one sub-folder per job, named ``KIND-MODEL-KEY``, where ``KEY``
starts the job's digest: the kind, the model (the bytes of every weight), its preprocessing, the job's
settings and the list of files. Re-running the same job finds the same folder.

Layout of a job folder
----------------------
======================================  ==============================================================
``manifest.json``                       what the job is: ``kind``, ``key``, ``model`` (name, source,
                                        digest, preprocessing), ``settings``, ``images`` (root, number
                                        of files, files the scan left out), ``shard_size``, ``shards``,
                                        ``versions`` (deepscope, torch, pyarrow, ...), ``complete``
                                        (true once every shard is in and the tables below are written),
                                        ``summary`` (kind-specific results, e.g. a feature map's size)
``shards/000012/``                      shard 12 (files ``12 * shard_size`` onwards), renamed into place
                                        complete: a shard folder is there in full or not at all
``shards/000012/index.json``            the shard's key (job key + each file's path, label and content
                                        digest) and the byte size and BLAKE2b digest of every file below
``shards/000012/files.parquet``         one row per file of the shard (see ``FILES_SCHEMA``)
``shards/000012/NAME.parquet``          the job's tables for this shard (predictions, topk, metrics, ...)
``shards/000012/NAME.npy``              the job's arrays for this shard (``features``, ``maps``): row ``r``
                                        belongs to the file whose ``row`` column is ``r``
``files.parquet``, ``NAME.parquet``     every shard's table in one file (written when the job completes)
======================================  ==============================================================

``files.parquet`` columns: ``index`` (position in the job's sorted file list), ``path``, ``folder`` (class
folder or null), ``label`` (class index from the folder, or null), ``digest`` (SHA-256 of the file's
bytes), ``status`` (``ok`` or ``skipped``), ``reason`` (why a file was skipped), ``shard``, ``row`` (row in
the shard's arrays, -1 when skipped). Read without deepscope::

    import glob, json, numpy as np, pyarrow.parquet as pq
    files = pq.read_table("STORE/features-.../files.parquet").to_pandas()
    bank = np.concatenate([np.load(f, mmap_mode="r") for f in sorted(glob.glob("STORE/features-.../shards/*/features.npy"))])
    # bank[i] belongs to files[files.status == "ok"].iloc[i]

Safety: every file is written under a temporary name and renamed; a shard is assembled in a hidden
folder (``shards/.000012.*``) and renamed into place, so a reader (or a resumed run) never sees half a
shard. A re-run skips every shard whose ``index.json`` has the planned key and whose files have the
recorded sizes and digests; a missing, truncated or altered shard is computed again. One run at a time
may write a job (a lock file, ``.lock``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deepscope.errors import DeepscopeError
from deepscope.fileio import atomic_path, write_text

FORMAT = "deepscope-job"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.json"
SHARDS = "shards"
FILES = "files"

#: columns of ``files.parquet`` (per shard and for the whole job)
FILES_SCHEMA = pa.schema([
    ("index", pa.int64()), ("path", pa.string()), ("folder", pa.string()), ("label", pa.int64()),
    ("digest", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("shard", pa.int32()),
    ("row", pa.int64()),
])


# -- digests --------------------------------------------------------------------------------------------
def digests(loaded=None, paths: Sequence[str | Path] = ()) -> tuple[str | None, list[str]]:
    """The model's digest (None without ``loaded``) and the content digest of each file in ``paths``.

    The one place the jobs compute digests, with the cache's functions: the model's class, weights,
    preprocessing and class names (:func:`deepscope.cache.model_digest`), and each file's bytes
    (:func:`deepscope.cache.file_digest`; ``"unreadable"`` for a file that cannot be read, which the job then
    reports as skipped).
    """
    from deepscope.cache import file_digest, model_digest

    return (None if loaded is None else model_digest(loaded)), [file_digest(p) for p in paths]


def _hash(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=20).hexdigest()


def file_hash(path: Path) -> str:
    """BLAKE2b-128 of a file's bytes, read in blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def job_key(kind: str, model_digest: str, settings: dict, paths: Sequence[str], labels: Sequence[int | None]) -> str:
    """The digest that names a job: kind, model (weights and preprocessing), settings and the file list."""
    return _hash(FORMAT, FORMAT_VERSION, kind, model_digest, settings, _hash(list(map(str, paths)), list(labels)))


def shard_key(key: str, paths: Sequence[str], labels: Sequence[int | None], contents: Sequence[str]) -> str:
    """The digest of one shard: the job's key and each file's path, label and content digest."""
    return _hash(key, [[str(p), label, digest] for p, label, digest in zip(paths, labels, contents)])


def versions() -> dict[str, str]:
    """Versions of what computed a job (written to the manifest)."""
    import torch
    import torchvision

    import deepscope

    return {"deepscope": deepscope.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "pyarrow": pa.__version__, "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}"}


# -- what a shard holds ---------------------------------------------------------------------------------
@dataclass
class ShardOutput:
    """What a job computed for one shard.

    Attributes
    ----------
    tables : dict of str to pyarrow.Table
        The job's tables (an ``index`` column gives each row's file).
    arrays : dict of str to numpy.ndarray
        One row per readable file, in file order.
    skipped : list of (Path, str), then dict of int to str
        Files that could not be read, and why: as a job's step returns them, then by index in the job's file
        list (:func:`~deepscope.jobs.base.run_shard` turns the one into the other).
    info : dict
        Facts for the job's summary (e.g. the size of a feature map); JSON values.
    """

    tables: dict[str, pa.Table] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list | dict = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ShardTask:
    """One shard to compute: its number, key and files (positions in the job's list, paths, folders, labels)."""

    shard: int
    key: str
    indices: tuple[int, ...]
    paths: tuple[str, ...]
    folders: tuple[str | None, ...]
    labels: tuple[int | None, ...]
    digests: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.indices)


def files_table(task: ShardTask, skipped: dict[int, str]) -> pa.Table:
    """The ``files`` rows of a shard: readable files numbered in order, skipped ones with their reason."""
    rows, status, reasons, next_row = [], [], [], 0
    for index in task.indices:
        if index in skipped:
            rows.append(-1)
            status.append("skipped")
            reasons.append(skipped[index])
        else:
            rows.append(next_row)
            status.append("ok")
            reasons.append(None)
            next_row += 1
    columns = [list(task.indices), list(task.paths), list(task.folders), list(task.labels), list(task.digests),
               status, reasons, [task.shard] * len(task), rows]
    return pa.table(columns, schema=FILES_SCHEMA)


# -- the job folder, written by one run at a time ------------------------------------------------------
class JobFolder:
    """A job's folder in a store: manifest, shards written atomically, checks, tables assembled at the end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.shards = self.path / SHARDS

    @classmethod
    def create(cls, store: str | Path, name: str, manifest: dict) -> "JobFolder":
        """The job's folder under ``store`` (made if new); its manifest is (re)written, marked incomplete
        until :meth:`complete`. A folder holding another job (a different key) is an error."""
        store = Path(store)
        if store.exists() and not store.is_dir():
            raise DeepscopeError(f"--store {store}: not a folder; give a folder for the results store.")
        folder = cls(store / name)
        existing = folder.read_manifest()
        if existing is not None and existing.get("key") != manifest["key"]:
            raise DeepscopeError(f"{folder.path} holds another job (key {existing.get('key')}); remove it or "
                                 "use another --store.")
        folder.shards.mkdir(parents=True, exist_ok=True)
        if existing is not None:
            manifest = {**existing, **manifest, "created": existing.get("created", manifest.get("created"))}
        folder.write_manifest({**manifest, "complete": False})
        return folder

    def read_manifest(self) -> dict | None:
        try:
            return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: dict) -> None:
        write_text(self.path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the job's lock file while writing; a second run on the same job gets a DeepscopeError."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DeepscopeError(f"{self.path}: another deepscope run is writing this job; wait for it to "
                                     "finish (or stop it) and run again.") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def shard_path(self, shard: int) -> Path:
        return self.shards / f"{shard:06d}"

    def tidy(self, count: int) -> None:
        """Remove what an interrupted run left (hidden staging folders) and shards beyond ``count``."""
        for entry in self.shards.iterdir():
            if entry.name.startswith("."):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_dir() and (not entry.name.isdigit() or int(entry.name) >= count):
                shutil.rmtree(entry, ignore_errors=True)

    def is_done(self, task: ShardTask) -> bool:
        """Whether shard ``task.shard`` is stored with ``task.key`` and every file has its recorded size and digest."""
        return check_shard(self.shard_path(task.shard), task.key) is None

    def write_shard(self, task: ShardTask, output: ShardOutput, run: dict | None = None) -> None:
        """Write one shard in a hidden folder, then rename it into place (replacing an old one)."""
        staging = Path(tempfile.mkdtemp(prefix=f".{task.shard:06d}.", dir=self.shards))
        try:
            files = {}
            tables = {FILES: files_table(task, output.skipped), **output.tables}
            for name, table in tables.items():
                pq.write_table(table, staging / f"{name}.parquet")
                files[f"{name}.parquet"] = staging / f"{name}.parquet"
            for name, array in output.arrays.items():
                np.save(staging / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
                files[f"{name}.npy"] = staging / f"{name}.npy"
            index = {"shard": task.shard, "key": task.key, "files": len(task), "skipped": len(output.skipped),
                     "outputs": {name: {"bytes": path.stat().st_size, "blake2b": file_hash(path)}
                                 for name, path in files.items()},
                     "info": output.info, "run": run or {}}
            (staging / INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
            for path in staging.iterdir():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            os.chmod(staging, 0o755)
            target = self.shard_path(task.shard)
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{task.shard:06d}.old.", dir=self.shards))
                os.replace(target, old / "shard")
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def complete(self, manifest: dict, tables: Sequence[str], extra: Sequence[str] = ()) -> None:
        """Write each table of every shard into one Parquet file, then mark the manifest complete with the
        size and digest of those files and of the ``extra`` files the job's final step wrote."""
        count = manifest["shards"]
        for name in (FILES, *tables):
            with atomic_path(self.path / f"{name}.parquet") as tmp:
                writer = None
                try:
                    for shard in range(count):
                        table = pq.read_table(self.shard_path(shard) / f"{name}.parquet")
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table)
                finally:
                    if writer is not None:
                        writer.close()
        files = [f"{name}.parquet" for name in (FILES, *tables)] + list(extra)
        manifest["outputs"] = {name: {"bytes": (self.path / name).stat().st_size, "blake2b": file_hash(self.path / name)}
                               for name in files}
        manifest["complete"] = True
        manifest["finished"] = now()
        self.write_manifest(manifest)


def check_shard(path: Path, key: str | None = None) -> str | None:
    """Why the shard folder ``path`` cannot be used (None when it is complete and intact).

    It must hold an ``index.json`` (with ``key``, when given) and every file listed there, with the
    recorded byte size and BLAKE2b digest.
    """
    try:
        index = json.loads((path / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "index.json is unreadable"
    if key is not None and index.get("key") != key:
        return "computed from other files or settings"
    return check_outputs(path, index.get("outputs", {}))


def check_outputs(folder: Path, outputs: dict) -> str | None:
    """Why the files listed in ``outputs`` (name: bytes and digest) cannot be used, or None."""
    for name, entry in outputs.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, {entry['bytes']} were written"
        if file_hash(file) != entry["blake2b"]:
            return f"{name} does not match its digest"
    return None


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# -- reading a store ------------------------------------------------------------------------------------
class StoredJob:
    """A job folder opened for reading: its manifest, tables and arrays.

    Tables and arrays of a complete job are read from the files written when it completed (tables) or
    from its shards in order (arrays); each shard is checked against its index first unless
    ``verify=False``, so a damaged shard raises rather than being read.
    """

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        manifest = JobFolder(self.path).read_manifest()
        if manifest is None or manifest.get("format") != FORMAT:
            raise DeepscopeError(f"{self.path}: not a deepscope job folder (no readable {MANIFEST}).")
        self.manifest = manifest
        self.verify = verify
        self._checked = False

    def __repr__(self) -> str:
        return f"StoredJob({str(self.path)!r}, kind={self.kind!r}, complete={self.complete})"

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def summary(self) -> dict:
        return self.manifest.get("summary", {})

    @property
    def model_digest(self) -> str:
        return self.manifest["model"]["digest"]

    def shard_paths(self) -> list[Path]:
        return [self.path / SHARDS / f"{shard:06d}" for shard in range(self.manifest["shards"])]

    def check(self) -> None:
        """Raise a DeepscopeError if the job is incomplete or a shard is damaged (checked once)."""
        if not self.complete:
            raise DeepscopeError(f"{self.path}: the job is not complete; run the same command again to finish it.")
        if self.verify and not self._checked:
            problem = check_outputs(self.path, self.manifest.get("outputs", {}))
            if problem is not None:
                raise DeepscopeError(f"{self.path}: {problem}; run the same command again to rewrite it.")
            for path in self.shard_paths():
                problem = check_shard(path)
                if problem is not None:
                    raise DeepscopeError(f"{path}: damaged shard ({problem}); run the same command again to "
                                         "recompute it.")
            self._checked = True

    def table(self, name: str = FILES) -> pa.Table:
        """The job's table ``name`` (``files``, ``predictions``, ``topk``, ``metrics``, ``summary``, ...)."""
        self.check()
        file = self.path / f"{name}.parquet"
        if not file.is_file():
            raise DeepscopeError(f"{self.path}: a {self.kind} job has no table {name!r}.")
        return pq.read_table(file)

    def iter_arrays(self, name: str) -> Iterator[np.ndarray]:
        """The array ``name`` of each shard in order, memory-mapped (rows: the shard's readable files)."""
        self.check()
        for path in self.shard_paths():
            file = path / f"{name}.npy"
            if not file.is_file():
                raise DeepscopeError(f"{self.path}: a {self.kind} job has no array {name!r}.")
            yield np.load(file, mmap_mode="r", allow_pickle=False)

    def array(self, name: str) -> np.ndarray:
        """The array ``name`` of the whole job in memory: row ``i`` is the ``i``-th readable file."""
        parts = [part for part in self.iter_arrays(name) if len(part)]  # a shard of unreadable files has none
        return np.concatenate(parts) if parts else np.empty((0,))

    def readable_files(self) -> pa.Table:
        """The rows of ``files`` whose status is ``ok``, in order (the rows of the arrays)."""
        files = self.table(FILES)
        return files.filter(pc.equal(files["status"], "ok"))

    def skipped_files(self) -> list[tuple[Path, str]]:
        """The files the job has no results for, and why: those the scan left out (not images), then those
        that could not be read."""
        files = self.table(FILES)
        skipped = files.filter(pc.equal(files["status"], "skipped")).to_pydict()
        left_out = self.manifest["images"].get("left_out_by_scan", [])
        return [(Path(p), r) for p, r in [*left_out, *zip(skipped["path"], skipped["reason"])]]

    def rows(self, name: str, indices: Sequence[int]) -> np.ndarray:
        """Rows of array ``name`` for the files at ``indices`` (positions in ``files``; each must be readable),
        read from the memory-mapped shards without loading the rest."""
        files = self.table(FILES).to_pydict()
        found = {index: (shard, row) for index, shard, row in zip(files["index"], files["shard"], files["row"])}
        missing = [i for i in indices if found.get(i, (0, -1))[1] < 0]
        if missing:
            raise DeepscopeError(f"{self.path}: no {name} row for file(s) {missing[:5]} (unreadable or not in the job).")
        self.check()
        shards = {}
        parts = []
        for index in indices:
            shard, row = found[index]
            if shard not in shards:
                shards[shard] = np.load(self.shard_paths()[shard] / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            parts.append(np.asarray(shards[shard][row]))
        return np.stack(parts) if parts else np.empty((0,))

    def image_set(self):
        """The job's photos as an :class:`~deepscope.images.ImageSet` (paths, class folders, labels)."""
        from deepscope.images import ImageSet

        files = self.table(FILES).to_pydict()
        left_out = [(Path(p), r) for p, r in self.manifest["images"].get("left_out_by_scan", [])]
        return ImageSet(Path(self.manifest["images"]["root"]), [Path(p) for p in files["path"]], files["folder"],
                        files["label"], left_out)

    def shard_tables(self, name: str) -> Iterator[pa.Table]:
        """Table ``name`` of each shard in order (for a job's final step, before it is complete)."""
        for path in self.shard_paths():
            yield pq.read_table(path / f"{name}.parquet")

    def shard_infos(self) -> Iterator[dict]:
        """The ``info`` each shard's computation recorded in its index."""
        for path in self.shard_paths():
            yield json.loads((path / INDEX).read_text(encoding="utf-8")).get("info", {})


class Store:
    """The jobs in a store folder (or a single job folder)."""

    def __init__(self, root: str | Path, verify: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DeepscopeError(f"--store {self.root}: no such folder.")
        candidates = [self.root] if (self.root / MANIFEST).is_file() else sorted(
            p for p in self.root.iterdir() if (p / MANIFEST).is_file())
        self.jobs = [StoredJob(path, verify) for path in candidates]

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, {len(self.jobs)} job(s))"

    def find(self, kind: str, model_digest: str | None = None, complete: bool = True, **settings) -> list[StoredJob]:
        """Jobs of ``kind`` (for the model with ``model_digest``; whose settings include ``settings``),
        newest first."""
        found = [job for job in self.jobs if job.kind == kind and (not complete or job.complete)
                 and (model_digest is None or job.model_digest == model_digest)
                 and all(job.settings.get(k) == v for k, v in settings.items())]
        return sorted(found, key=lambda job: job.manifest.get("finished", ""), reverse=True)

    def newest(self, model_digest: str | None = None) -> StoredJob | None:
        """The newest complete job of any kind (for the model with ``model_digest``); None if there is none."""
        found = [job for job in self.jobs if job.complete
                 and (model_digest is None or job.model_digest == model_digest)]
        return max(found, key=lambda job: job.manifest.get("finished", ""), default=None)


def open_store(path: str | Path, verify: bool = True) -> Store:
    """Open a results store (or one job folder) for reading; see :class:`Store` and :class:`StoredJob`."""
    return Store(path, verify)
