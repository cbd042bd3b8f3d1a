"""Model workers: one thread owns a model and runs, one at a time, the jobs queued to it.

The web server's event loop never runs a model. It hands each job to a worker (:meth:`ModelWorker.submit`)
under a key that names the result (photo, method, target, layer) and awaits the returned future
(:func:`wait`), so the loop stays free to answer other requests while maps are computed. For each key

- a result computed before comes from the worker's bounded LRU cache (:class:`ResultCache`);
- a result being computed, or waiting in the queue, is shared: every request for it gets the same future,
  so duplicate requests cost one computation;
- anything else is queued, first come first served; a full queue refuses new work (:class:`QueueFullError`).

Errors are not cached: the requests waiting for a failed job all get its exception, the next request retries.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from deepscope.errors import DeepscopeError

#: jobs waiting in one worker's queue at most; more are refused (a client gets "busy, retry")
MAX_QUEUED = 2000
_MISSING = object()


class QueueFullError(DeepscopeError):
    """The worker has more jobs waiting than it accepts."""


class ResultCache:
    """Results by key, least recently used first out, bounded by total size and count.

    ``size`` is what :meth:`put` is told (bytes of a PNG, an estimate for a dict); an entry larger than
    the whole budget is not stored.
    """

    def __init__(self, max_bytes: int, max_entries: int = 4096):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self.hits = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key not in self._entries:
                return default
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key][0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: Hashable, value: Any, size: int) -> None:
        with self._lock:
            if key in self._entries:
                self.bytes -= self._entries.pop(key)[1]
            if size > self.max_bytes:
                return
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
                self.bytes -= self._entries.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _Job:
    key: Hashable | None
    fn: Callable[[], Any]
    label: str
    future: Future
    size: Callable[[Any], int] | None


class ModelWorker:
    """A thread that runs queued jobs one at a time; the only thread that touches its model.

    Parameters
    ----------
    name : str
        Shown in the status (``interactive``, ``background``).
    cache : ResultCache, optional
        Where results of keyed jobs are kept (None: nothing is kept, duplicates in flight are still shared).
    setup : callable, optional
        Run once on the worker's thread before its first job (per-thread settings such as flushing denormals).
    """

    def __init__(self, name: str, cache: ResultCache | None = None, setup: Callable[[], None] | None = None,
                 max_queued: int = MAX_QUEUED):
        self.name = name
        self.cache = cache
        self.max_queued = max_queued
        self._setup = setup
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running: tuple[str, float] | None = None
        self._counter = itertools.count()
        self.computed = 0
        self.shared = 0
        self.from_cache = 0
        self.failed = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"deepscope-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Finish the running job, drop the queued ones (their futures are cancelled) and end the thread."""
        if self._thread is None:
            return
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
                self._forget(job)
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, key: Hashable | None, fn: Callable[[], Any], label: str = "",
               size: Callable[[Any], int] | None = None) -> Future:
        """The future result of ``fn()``, computed on this worker (or cached, or shared; see the module docstring).

        ``key`` None: always computed, never cached or shared. ``size(result)`` is the result's size for the
        cache (default: not cached).
        """
        with self._lock:
            if key is not None:
                cached = self.cache.get(key, _MISSING) if self.cache is not None else _MISSING
                if cached is not _MISSING:
                    self.from_cache += 1
                    future: Future = Future()
                    future.set_result(cached)
                    return future
                if key in self._pending:
                    self.shared += 1
                    return self._pending[key]
            if self._queue.qsize() >= self.max_queued:
                raise QueueFullError(f"the {self.name} worker has {self._queue.qsize()} jobs waiting; retry later.")
            future = Future()
            job = _Job(key if key is not None else ("unkeyed", next(self._counter)), fn, label, future, size)
            self._pending[job.key] = future
        self._queue.put(job)
        return future

    def _forget(self, job: _Job) -> None:
        with self._lock:
            if self._pending.get(job.key) is job.future:
                del self._pending[job.key]

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                self._forget(job)
                continue
            self._running = (job.label, time.monotonic())
            try:
                result = job.fn()
            except BaseException as error:  # handed to every waiting request
                self.failed += 1
                self._forget(job)
                job.future.set_exception(error)
            else:
                self.computed += 1
                if self.cache is not None and job.size is not None:
                    self.cache.put(job.key, result, job.size(result))
                self._forget(job)
                job.future.set_result(result)
            finally:
                self._running = None

    def status(self) -> dict:
        """What the worker is doing: the running job and for how long, jobs waiting, counters."""
        running = self._running
        return {"name": self.name, "running": running[0] if running else None,
                "running_seconds": round(time.monotonic() - running[1], 1) if running else None,
                "queued": self._queue.qsize(), "computed": self.computed, "shared": self.shared,
                "from_cache": self.from_cache, "failed": self.failed,
                "cached": len(self.cache) if self.cache is not None else 0,
                "cache_hits": self.cache.hits if self.cache is not None else 0,
                "cache_megabytes": round(self.cache.bytes / 1e6, 1) if self.cache is not None else 0.0}


async def wait(future: Future) -> Any:
    """Await a worker's future on the running event loop.

    Each caller gets its own waiter, so a request that is cancelled (the browser went away) does not cancel
    the shared job the other requests wait for (``asyncio.wrap_future`` would).
    """
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def copy(done: Future) -> None:
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
        elif done.exception() is not None:
            waiter.set_exception(done.exception())
        else:
            waiter.set_result(done.result())

    def hand_over(done: Future) -> None:
        try:
            loop.call_soon_threadsafe(copy, done)
        except RuntimeError:  # the loop has closed (the server stopped)
            pass

    future.add_done_callback(hand_over)
    return await waiter
