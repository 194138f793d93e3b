"""The Ray executor: a pool of actors, each a :class:`ShardProcessor`, fed shards by the driver.

What runs where and when is decided by :class:`~mrcnn_batch.run.scheduler.Scheduler` (pure,
unit-tested); this module is its Ray side: actors, object refs, ``ray.wait``.

Resources: one GPU per actor by default (``gpus_per_worker`` may be fractional); on a cluster
without GPUs, CPU actors (``cpus_per_worker`` each, the worker's torch threads). The weights
are resolved once on the driver, put once in the object store, and loaded once per actor. The
plan's image ids and URIs are put there once too; each shard is sent as its row range (the plan
is contiguous by shard), so the driver builds no per-image list.

Faults (the commit protocol of ``run.layout`` makes every retry safe: a retried shard
overwrites its own files and only its marker makes it exist):

* an actor that dies (process killed, node lost, out of memory) has its shard handed to another
  actor and is itself replaced; a replacement that cannot be placed (the node is gone) stays
  pending without holding up the others; the replacements are bounded;
* an exception raised by a shard (storage down: per-image errors never reach here, they
  become ``images`` rows) is retried after a delay, on any actor;
* a shard is tried at most ``max_attempts`` times in all; then it is reported failed with
  its last reason and the other shards go on;
* an actor whose ``__init__`` raises (weights that do not fit the model) fails the run at once:
  every other actor would raise the same.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mrcnn_batch.config import RunConfig
from mrcnn_batch.errors import WorkerStartError
from mrcnn_batch.models.weights import Weights
from mrcnn_batch.plan import shard_ranges
from mrcnn_batch.ray_session import ray_session
from mrcnn_batch.run.layout import RunDir
from mrcnn_batch.run.lease import Fence, FencedOut
from mrcnn_batch.run.processor import SHARDS_IN_FLIGHT, ShardProcessor, shard_images
from mrcnn_batch.run.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How the actor pool is sized and placed, and how failures are retried."""

    address: str | None = None  # None: RAY_ADDRESS if set, else an embedded local Ray
    workers: int | None = None  # None: the GPUs of the cluster / gpus_per_worker, or 1 CPU worker
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float | None = None  # None: 1 with GPUs; without, the CPUs shared out
    max_attempts: int = 3  # tries of one shard, actor deaths included
    retry_delay_s: float = 2.0  # before retrying a shard that raised (doubles per attempt)
    max_replacements: int | None = None  # actors started to replace dead ones; None: 2 x workers
    start_timeout_s: float = 600.0  # how long pending shards wait for any worker to start
    verbose: bool = False  # forward the workers' logs to the driver


def plan_pool(options: RayOptions, resources: dict[str, float]) -> tuple[int, float, float]:
    """(workers, gpus per worker, cpus per worker) for a cluster with these resources."""
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    gpw = options.gpus_per_worker
    if gpw is None:
        gpw = 1.0 if gpus > 0 else 0.0
    if gpw < 0 or (options.cpus_per_worker is not None and options.cpus_per_worker < 0):
        raise ValueError("gpus_per_worker and cpus_per_worker must be >= 0")
    workers = options.workers
    if workers is None:
        workers = max(1, int(gpus // gpw)) if gpw > 0 and gpus > 0 else 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cpw = options.cpus_per_worker
    if cpw is None:
        cpw = 1.0 if gpw > 0 else max(1.0, math.floor(cpus / workers))
    return workers, gpw, cpw


class _ShardActor(ShardProcessor):
    """The Ray actor: a shard processor that also says where it runs."""

    def __init__(self, config: RunConfig, *, run_id: str, weights: Weights, threads: int, fence: Fence | None = None):
        import torch

        torch.set_num_threads(threads)
        super().__init__(config, run_id=run_id, weights=weights, fence=fence)

    def where(self) -> dict[str, Any]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        return {"host": socket.gethostname(), "pid": os.getpid(), "node_id": node, "device": str(self.device)}

    def process(self, shard: int, plan: pa.Table, offset: int, length: int) -> dict[str, Any]:
        """One shard, sent as its row range of the plan (put in the object store once)."""
        return self(shard, shard_images(plan.slice(offset, length)))


class RayExecutor:
    """An :class:`~mrcnn_batch.run.driver.Executor` running shards on a pool of Ray actors.

    ``on_retry(shard, reason)`` is called each time a shard is queued again; ``on_session(words)``
    once, saying which Ray is used (see ``mrcnn_batch.ray_session``)."""

    def __init__(self, options: RayOptions = RayOptions(), *, on_retry: Callable[[int, str], None] | None = None,
                 on_session: Callable[[str], None] | None = None):
        self.options = options
        self.on_retry = on_retry
        self.on_session = on_session
        self.workers_seen: list[dict[str, Any]] = []  # where each started actor ran
        self.workers_lost = 0  # actors that died (killed, node lost) during the last run

    def __call__(
        self,
        pending: list[int],
        plan: pa.Table,
        *,
        config: RunConfig,
        run_id: str,
        weights: Weights,
        on_commit: Callable[[dict[str, Any]], None],
        fence: Fence | None = None,
    ) -> dict[int, str]:
        import ray

        o = self.options
        said = ray_session(o.address, verbose=o.verbose)
        log.info("%s", said)
        if self.on_session is not None:
            self.on_session(said)
        workers, gpw, cpw = plan_pool(o, ray.cluster_resources())
        workers = min(workers, len(pending))
        log.info("starting %d worker(s): %s GPU, %s CPU each", workers, gpw, cpw)
        actor_cls = ray.remote(_ShardActor).options(
            num_gpus=gpw, num_cpus=cpw, max_restarts=0, max_task_retries=0, max_concurrency=SHARDS_IN_FLIGHT
        )
        weights_ref = ray.put(weights)  # once; each actor loads it once
        ranges = shard_ranges(plan)
        plan_ref = ray.put(plan.select(["image_id", "uri"]))  # once; each call sends its range
        fenced_run = RunDir(config.output, config.output_storage_options) if fence else None
        scheduler = Scheduler(
            pending, now=time.monotonic(), per_worker=SHARDS_IN_FLIGHT, max_attempts=o.max_attempts,
            retry_delay_s=o.retry_delay_s, replacements=o.max_replacements if o.max_replacements is not None else 2 * workers,
            start_timeout_s=o.start_timeout_s, on_retry=self.on_retry,
        )
        pool = _ActorPool(
            scheduler,
            start=lambda: actor_cls.remote(config, run_id=run_id, weights=weights_ref, threads=max(1, int(cpw)), fence=fence),
            work={s: (plan_ref, *ranges[s]) for s in pending},
            on_commit=on_commit,
            on_worker=self.workers_seen.append,
            check_fence=(lambda: fence.check(fenced_run)) if fence else None,
        )
        try:
            for _ in range(workers):
                pool.start_worker()
            return pool.run()
        finally:
            self.workers_lost = scheduler.workers_lost
            pool.shutdown()


class _ActorPool:
    """The Ray side of a :class:`Scheduler`: starts actors and sends shards as it decides, and
    tells it what came back (a record, an exception, a dead actor)."""

    def __init__(self, scheduler: Scheduler, *, start, work, on_commit, on_worker, check_fence=None):
        self.scheduler = scheduler
        self.start = start  # () -> a new actor handle
        self.work = work  # shard -> (plan ref, offset, length)
        self.on_commit = on_commit
        self.on_worker = on_worker  # where a started actor runs
        self.check_fence = check_fence  # before each shard is sent: a driver that lost its run stops
        self.actors: dict[int, Any] = {}  # worker key -> actor handle
        self.starting: dict[Any, int] = {}  # where() ref -> worker key
        self.inflight: dict[Any, tuple[int, int]] = {}  # process() ref -> (worker key, shard)
        self._keys = itertools.count()

    def start_worker(self) -> None:
        key = next(self._keys)
        self.actors[key] = actor = self.start()
        self.scheduler.worker_started(key)
        self.starting[actor.where.remote()] = key

    def run(self) -> dict[int, str]:
        import ray

        s = self.scheduler
        while not s.done:
            now = time.monotonic()
            for key, shard in s.assign(now):
                if self.check_fence is not None:
                    self.check_fence()
                self.inflight[self.actors[key].process.remote(shard, *self.work[shard])] = (key, shard)
            stalled = s.stalled(now)
            if stalled:
                log.error("%s; the shards left fail", stalled)
                break
            refs = list(self.inflight) + list(self.starting)
            if not refs:  # only shards waiting for their retry delay
                time.sleep(s.wait_timeout(now))
                continue
            done, _ = ray.wait(refs, num_returns=1, timeout=s.wait_timeout(now))
            for ref in done:
                if ref in self.starting:
                    self._started(ref)
                else:
                    self._finished(ref)
        return s.failed

    def _started(self, ref) -> None:
        import ray

        key = self.starting.pop(ref)
        try:
            where = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            if getattr(e, "actor_init_failed", False):
                raise WorkerStartError(f"a worker could not load the model: {_reason(e)}") from None
            log.warning("a worker died while starting: %s", _reason(e))
            self._lost(key, _reason(e))
            return
        self.scheduler.worker_ready(key)
        self.on_worker(where)
        log.info("worker ready on %s pid %s (%s)", where["host"], where["pid"], where["device"])

    def _finished(self, ref) -> None:
        import ray

        key, shard = self.inflight.pop(ref)
        if key not in self.actors:  # its actor was lost and its shards already queued again
            return
        try:
            record = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as e:
            log.warning("shard %d: worker lost (%s); retrying elsewhere", shard, _reason(e))
            self._lost(key, _reason(e))
            self._log_if_failed(shard)
            return
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, FencedOut):
                raise e.cause from None
            log.debug("shard %d raised:\n%s", shard, e)  # with the worker's traceback
            log.warning("shard %d attempt %d/%d failed: %s", shard, self.scheduler.attempts[shard],
                        self.scheduler.max_attempts, _reason(e))
            self.scheduler.shard_raised(key, shard, _reason(e), time.monotonic())
            self._log_if_failed(shard)
            return
        self.scheduler.shard_done(key, shard)
        self.on_commit(record)

    def _lost(self, key: int, reason: str) -> None:
        import ray

        actor = self.actors.pop(key)
        with contextlib.suppress(Exception):  # already gone
            ray.kill(actor, no_restart=True)
        if self.scheduler.worker_lost(key, reason, time.monotonic()):
            self.start_worker()

    def _log_if_failed(self, shard: int) -> None:
        if shard in self.scheduler.failed:
            log.error("shard %d failed: %s", shard, self.scheduler.failed[shard])

    def shutdown(self) -> None:
        import ray

        for actor in self.actors.values():
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors.clear()


def _reason(e: BaseException) -> str:
    """The root cause of a Ray error, on one line."""
    import ray

    cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None else e
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:500]
