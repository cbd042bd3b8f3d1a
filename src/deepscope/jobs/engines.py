"""Engines that compute a job's shards: in this process (``local``) or on a Ray cluster (``ray``).

Both call the same :func:`~deepscope.jobs.base.run_shard` on the same shards and hand each result to the
process that started the job, which alone writes the store: the results do not depend on the engine, and a
shard is written once however often it was computed.

``local`` computes shard after shard in this process; inside a shard, photos are decoded in background
threads while the model runs (:func:`deepscope.images.iter_batches`).

``ray`` keeps a pool of actors, each holding the model (shipped once through Ray's object store) and the
job's prepared state between shards. Where the cluster has GPUs, each actor takes one GPU and the default
pool has one actor per GPU; otherwise one actor per node. Actors are spread over the nodes and each reserves
at most one CPU, while running torch with its share of the cluster's CPUs as threads; an actor reads and
decodes its own photos in threads too. So no Ray task waits for a CPU an actor holds (a Ray Data pipeline
whose actors reserve every CPU starves its read tasks: two such actors on two CPUs deadlocked), and other
pools on the same cluster still find room. When an actor or its node dies, the shards it held go back in the queue and the other
actors take them; a replacement actor is started and joins when the cluster can place it. Photos and the
store are read by path: on a cluster of several machines they must be on a file system every node sees
(the store only on the machine that started the job).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from deepscope.errors import DeepscopeError
from deepscope.evaluation.randomization import copy_model
from deepscope.probe import model_device

ENGINES = ("local", "ray")
#: how often one shard may lose its worker before the job gives up
MAX_ATTEMPTS = 3
#: seconds to wait for a first actor to start before giving up
START_TIMEOUT = 300.0


def make_engine(engine: str | Any, *, workers: int | None = None, address: str | None = None):
    """An engine object from its name (``local`` or ``ray``), or ``engine`` itself if it is one."""
    if not isinstance(engine, str):
        return engine
    if engine not in ENGINES:
        raise DeepscopeError(f"engine {engine!r}: use local or ray.")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise DeepscopeError(f"workers must be a positive integer, got {workers!r}.")
    if engine == "local":
        if address is not None or workers not in (None, 1):
            raise DeepscopeError("--address and --workers need --engine ray; the local engine is one process.")
        return LocalEngine()
    return RayEngine(address=address, workers=workers)


def run_info(engine: str, started: float) -> dict:
    """Where and how fast a shard was computed (kept in its index)."""
    return {"engine": engine, "host": socket.gethostname(), "pid": os.getpid(),
            "seconds": round(time.perf_counter() - started, 3)}


class LocalEngine:
    """Every shard in this process, one after the other."""

    name = "local"

    def run(self, job, loaded, root: Path, tasks: Iterable, commit, batch_size: int) -> None:
        from deepscope.jobs.base import run_shard

        state = None
        for task in tasks:
            if state is None:
                state = job.prepare(loaded)
            started = time.perf_counter()
            output = run_shard(job, loaded, state, task, root, batch_size)
            commit(task, output, run_info(self.name, started))


def denormals_flushed() -> bool:
    """Whether this process flushes denormal floats to zero (read off a denormal product; torch has no getter)."""
    return bool(torch.tensor([1e-39]).mul(1.0).item() == 0.0)


class ShardWorker:
    """A Ray actor: the model, loaded once, and each job's prepared state; computes shards on request.

    The actor's process belongs to the job, so it takes the settings deepscope's console script takes for
    its own process: freed memory kept for reuse (:func:`deepscope.cli.keep_freed_memory`), denormals
    flushed as in the process that started the job, and ``threads`` torch threads.
    """

    def __init__(self, loaded, threads: int, gpu: bool, flush_denormal: bool):
        from deepscope.cli import keep_freed_memory

        keep_freed_memory()
        torch.set_num_threads(max(1, threads))
        torch.set_flush_denormal(flush_denormal)
        if gpu:
            loaded.model.to("cuda")
        self.loaded = loaded
        self.states: dict[str, Any] = {}

    def ready(self) -> dict:
        import ray

        return {"host": socket.gethostname(), "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def compute(self, job, task, root, batch_size: int):
        import json

        from deepscope.jobs.base import run_shard

        started = time.perf_counter()
        key = json.dumps([job.kind, job.settings()], sort_keys=True)
        if key not in self.states:
            self.states[key] = job.prepare(self.loaded)
        output = run_shard(job, self.loaded, self.states[key], task, root, batch_size)
        return output, {**run_info("ray", started), **self.ready()}


class RayEngine:
    """A pool of :class:`ShardWorker` actors on a Ray cluster.

    Parameters
    ----------
    address : str, optional
        The cluster to join (``auto``, ``HOST:6379``, ``ray://HOST:10001``). Default: the Ray instance
        this process is connected to, else a new local instance (stopped again by :meth:`close`).
    workers : int, optional
        Actors in the pool (default: one per GPU, else one per node).
    init_options : dict, optional
        More keyword arguments for ``ray.init`` when this engine starts or joins Ray.

    Use it as a context manager (or call :meth:`close`) to reuse one pool for several jobs of the same model;
    :func:`~deepscope.jobs.run_job` with ``engine="ray"`` makes one for the job and closes it afterwards.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, init_options: dict | None = None):
        self.address = address
        self.workers = workers
        self.init_options = dict(init_options or {})
        self.started_ray = False
        self.start_seconds = 0.0
        self._owned = False
        self._pool: dict = {}  # model id -> (loaded, [actors], {ready ref: actor}, spawn)
        self.log: list[str] = []

    # -- connection --------------------------------------------------------------------------------------
    def start(self) -> "RayEngine":
        """Join (or start) Ray; returns the engine."""
        try:
            import ray
        except ImportError:
            raise DeepscopeError("the ray engine needs Ray: pip install 'deepscope[ray]' (or ray[default]).") from None
        started = time.perf_counter()
        if not ray.is_initialized():
            import logging

            options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
            if self.address is None:  # a local instance: its workers import the deepscope this process runs
                import deepscope

                path = os.pathsep.join(filter(None, [str(Path(deepscope.__file__).parents[1]),
                                                     os.environ.get("PYTHONPATH")]))
                options["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
            options.update(self.init_options)
            try:
                ray.init(address=self.address, **options)
            except ConnectionError as error:
                raise DeepscopeError(f"--address {self.address}: cannot join a Ray cluster there ({error}).") from None
            self.started_ray = self.address is None
        self.start_seconds = time.perf_counter() - started
        return self

    def close(self) -> None:
        """Stop the actors, and Ray itself if this engine started it."""
        import ray

        for _, actors, starting, _ in self._pool.values():
            for actor in [*actors, *starting.values()]:
                ray.kill(actor, no_restart=True)
        self._pool.clear()
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
        self.started_ray = False

    def __enter__(self) -> "RayEngine":
        self._owned = True
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the pool ---------------------------------------------------------------------------------------
    def plan(self) -> tuple[int, float, int, int]:
        """(actors, CPUs each reserves, torch threads each runs, GPUs each takes) for the cluster as it is now.

        An actor reserves at most one CPU (so pools of other jobs and Ray's own tasks still find room) and
        the actors are spread over the nodes; each runs torch with its share of the cluster's CPUs.
        """
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 1))
        nodes = sum(1 for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0)
        workers = self.workers or (gpus if gpus else max(1, nodes))
        return workers, min(1.0, cpus / workers), max(1, int(cpus // workers)), 1 if gpus else 0

    def pool(self, loaded):
        """The actors holding ``loaded`` (started on first use): (loaded, live actors, {ready ref: starting
        actor}, a function that starts one more)."""
        key = id(loaded.model)
        if key not in self._pool:
            import ray

            workers, cpus, threads, gpus = self.plan()
            if model_device(loaded.model).type != "cpu":  # actors put the model on their own device
                loaded = dataclasses.replace(loaded, model=copy_model(loaded.model).cpu())
            model = ray.put(loaded)
            worker = ray.remote(ShardWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                                     scheduling_strategy="SPREAD")
            flush = denormals_flushed()
            starting: dict = {}

            def spawn() -> None:
                actor = worker.remote(model, threads, bool(gpus), flush)
                starting[actor.ready.remote()] = actor

            for _ in range(workers):
                spawn()
            self.log.append(f"{workers} actor(s), {cpus:g} CPU and {gpus} GPU each, {threads} torch thread(s)")
            self._pool[key] = (loaded, [], starting, spawn)
        return self._pool[key]

    def warm_up(self, loaded, timeout: float = START_TIMEOUT) -> float:
        """Start the pool for ``loaded`` and wait until every actor holds the model; returns the seconds taken."""
        import ray

        started = time.perf_counter()
        _, actors, starting, _ = self.pool(loaded)
        ready, _ = ray.wait(list(starting), num_returns=len(starting), timeout=timeout)
        for ref in ready:
            ray.get(ref)
            actors.append(starting.pop(ref))
        return time.perf_counter() - started

    # -- running a job ----------------------------------------------------------------------------------
    def run(self, job, loaded, root: Path, tasks: Iterable, commit, batch_size: int) -> None:
        import itertools

        import ray
        from ray.exceptions import RayError, RayTaskError

        tasks = iter(tasks)
        first = next(tasks, None)
        if first is None:  # every shard is done: no need for Ray
            return
        if not ray.is_initialized():
            self.start()
        try:
            self._run(job, loaded, root, itertools.chain([first], tasks), commit, batch_size, ray, RayError,
                      RayTaskError)
        finally:
            if not self._owned:
                self.close()

    def _run(self, job, loaded, root, tasks, commit, batch_size, ray, RayError, RayTaskError) -> None:
        _, actors, starting, spawn = self.pool(loaded)
        idle = list(actors)
        busy: dict = {}           # result ref -> (actor, task)
        retry: collections.deque = collections.deque()
        attempts: collections.Counter = collections.Counter()  # losses per shard, and failed actor starts
        exhausted = False
        waiting_since = time.perf_counter()

        def next_task():
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            task = next(tasks, None)
            exhausted = task is None
            return task

        while True:
            while idle:
                task = next_task()
                if task is None:
                    break
                actor = idle.pop()
                busy[actor.compute.remote(job, task, str(root), batch_size)] = (actor, task)
            if not busy and (exhausted and not retry):
                break
            if not busy and not starting:
                spawn()  # every actor is gone: start another where the cluster has room
            if not busy and time.perf_counter() - waiting_since > START_TIMEOUT:
                raise DeepscopeError(f"no Ray actor could start within {START_TIMEOUT:.0f} s; check the cluster's "
                                     "free CPUs and GPUs (`ray status`), or lower --workers.")
            ready, _ = ray.wait([*busy, *starting], num_returns=1, timeout=10.0)
            for ref in ready:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                    except RayError as error:  # died while starting: the node went, or the model did not load
                        attempts["start"] += 1
                        if attempts["start"] >= MAX_ATTEMPTS * max(1, len(actors) + len(starting) + 1):
                            first = str(error).strip().splitlines()[-1][:300]
                            raise DeepscopeError(f"Ray actors keep failing to start ({type(error).__name__}: "
                                                 f"{first}); is deepscope installed on every node?") from None
                        self.log.append(f"an actor failed to start ({type(error).__name__})")
                        continue
                    actors.append(actor)
                    idle.append(actor)
                    continue
                actor, task = busy.pop(ref)
                try:
                    output, info = ray.get(ref)
                except RayTaskError as error:
                    raise error.cause if isinstance(error.cause, DeepscopeError) else error
                except RayError as error:  # the actor, its node or the result was lost: another actor retries
                    attempts[task.shard] += 1
                    if attempts[task.shard] >= MAX_ATTEMPTS:
                        raise DeepscopeError(f"shard {task.shard} lost its Ray worker {attempts[task.shard]} times "
                                             f"(last: {type(error).__name__}); see the Ray logs.") from None
                    retry.append(task)
                    if actor in actors:
                        actors.remove(actor)
                        ray.kill(actor, no_restart=True)
                        spawn()
                    self.log.append(f"shard {task.shard}: worker lost ({type(error).__name__}), queued again")
                    waiting_since = time.perf_counter()
                    continue
                commit(task, output, info)
                idle.append(actor)
                waiting_since = time.perf_counter()
