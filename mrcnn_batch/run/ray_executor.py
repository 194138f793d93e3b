"""The Ray executor: a pool of actors, each a :class:`ShardProcessor`, fed shards by the driver.

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

import logging
import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from mrcnn_batch.config import RunConfig
from mrcnn_batch.models.weights import Weights
from mrcnn_batch.plan import shard_ranges
from mrcnn_batch.ray_session import ray_session
from mrcnn_batch.run.layout import RunDir
from mrcnn_batch.run.lease import Fence, FencedOut
from mrcnn_batch.run.processor import SHARDS_IN_FLIGHT, ShardProcessor, shard_images

log = logging.getLogger(__name__)


class WorkerStartError(RuntimeError):
    """A worker could not load the model: every worker would fail the same way."""


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


@dataclass
class _Slot:
    actor: Any
    ready: bool = False
    running: int = 0  # shards in flight on it, up to SHARDS_IN_FLIGHT

    @property
    def free(self) -> bool:
        return self.ready and self.running < SHARDS_IN_FLIGHT


class RayExecutor:
    """An :class:`~mrcnn_batch.run.driver.Executor` running shards on a pool of Ray actors."""

    def __init__(self, options: RayOptions = RayOptions()):
        self.options = options
        self.workers_seen: list[dict[str, Any]] = []  # where each started actor ran
        self.workers_lost = 0  # actors that died (killed, node lost) during the last run
        self.on_retry: Callable[[int, str], None] | None = None  # (shard, reason) per retry
        self.on_session: Callable[[str], None] | None = None  # which Ray, in words (see ray_session)

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
        threads = max(1, int(cpw))

        def start() -> _Slot:
            actor = actor_cls.remote(config, run_id=run_id, weights=weights_ref, threads=threads, fence=fence)
            return _Slot(actor)

        ranges = shard_ranges(plan)
        plan_ref = ray.put(plan.select(["image_id", "uri"]))  # once; each call sends its range
        work = {s: (plan_ref, *ranges[s]) for s in pending}
        check = (lambda run=RunDir(config.output, config.output_storage_options): fence.check(run)) if fence else None
        pool = _Pool(self, start, work, on_commit, replacements=o.max_replacements if o.max_replacements is not None else 2 * workers,
                     check_fence=check)
        try:
            for _ in range(workers):
                pool.add(start())
            return pool.run(deque(pending))
        finally:
            pool.shutdown()


class _Pool:
    """The scheduling loop: idle actors take the next due shard; results and deaths come back."""

    def __init__(self, executor: RayExecutor, start, work, on_commit, *, replacements: int, check_fence=None):
        self.o = executor.options
        self.check_fence = check_fence  # before each dispatch: a driver that lost its run stops
        self.executor = executor
        self.start = start
        self.work = work  # shard -> (plan ref, offset, length)
        self.on_commit = on_commit
        self.replacements_left = replacements
        self.slots: list[_Slot] = []
        self.starting: dict[Any, _Slot] = {}  # ready() ref -> slot
        self.inflight: dict[Any, tuple[_Slot, int]] = {}  # process() ref -> (slot, shard)
        self.attempts: dict[int, int] = {}
        self.due: dict[int, float] = {}  # shard -> not before (monotonic)
        self.failed: dict[int, str] = {}

    def add(self, slot: _Slot) -> None:
        self.slots.append(slot)
        self.starting[slot.actor.where.remote()] = slot

    def run(self, queue: deque[int]) -> dict[int, str]:
        import ray

        idle_since = time.monotonic()
        while queue or self.inflight:
            self._dispatch(queue)
            if self.inflight or any(s.ready for s in self.slots):
                idle_since = time.monotonic()
            elif not self.starting:
                self._fail_all(queue, "no worker left: every actor died and the replacements are used up")
                break
            elif time.monotonic() - idle_since > self.o.start_timeout_s:
                self._fail_all(queue, f"no worker started within {self.o.start_timeout_s:.0f}s (cluster out of resources?)")
                break
            refs = list(self.inflight) + list(self.starting)
            if not refs:  # only shards waiting for their retry delay
                time.sleep(self._wait_timeout(queue))
                continue
            done, _ = ray.wait(refs, num_returns=1, timeout=self._wait_timeout(queue))
            for ref in done:
                if ref in self.starting:
                    self._started(ref)
                else:
                    self._finished(ref, queue)
        return self.failed

    def _wait_timeout(self, queue: deque[int]) -> float:
        now = time.monotonic()
        due = [self.due.get(s, now) - now for s in queue]
        return max(0.05, min(due)) if due and any(s.free for s in self.slots) else 1.0

    def _dispatch(self, queue: deque[int]) -> None:
        now = time.monotonic()
        for _ in range(SHARDS_IN_FLIGHT):  # one shard per free actor, then a second each
            for slot in self.slots:
                if not slot.free or not queue:
                    continue
                shard = next((s for s in queue if self.due.get(s, 0) <= now), None)
                if shard is None:
                    return
                if self.check_fence is not None:
                    self.check_fence()
                queue.remove(shard)
                self.attempts[shard] = self.attempts.get(shard, 0) + 1
                slot.running += 1
                self.inflight[slot.actor.process.remote(shard, *self.work[shard])] = (slot, shard)

    def _started(self, ref) -> None:
        import ray

        slot = self.starting.pop(ref)
        try:
            where = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            if getattr(e, "actor_init_failed", False):
                raise WorkerStartError(f"a worker could not load the model: {_reason(e)}") from None
            log.warning("a worker died while starting: %s", _reason(e))
            self.executor.workers_lost += 1
            self._replace(slot)
            return
        slot.ready = True
        self.executor.workers_seen.append(where)
        log.info("worker ready on %s pid %s (%s)", where["host"], where["pid"], where["device"])

    def _finished(self, ref, queue: deque[int]) -> None:
        import ray

        slot, shard = self.inflight.pop(ref)
        slot.running -= 1
        try:
            record = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as e:
            reason = f"worker lost: {_reason(e)}"
            log.warning("shard %d: %s; retrying elsewhere", shard, reason)
            self.executor.workers_lost += 1
            self._replace(slot)
            self._retry(shard, reason, queue, delay=0.0)
            return
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, FencedOut):
                raise e.cause from None
            reason = _reason(e)
            log.debug("shard %d raised:\n%s", shard, e)  # with the worker's traceback
            log.warning("shard %d attempt %d/%d failed: %s", shard, self.attempts[shard], self.o.max_attempts, reason)
            self._retry(shard, reason, queue, delay=self.o.retry_delay_s * 2 ** (self.attempts[shard] - 1))
            return
        self.failed.pop(shard, None)
        self.on_commit(record)

    def _retry(self, shard: int, reason: str, queue: deque[int], *, delay: float) -> None:
        if self.attempts[shard] >= self.o.max_attempts:
            self.failed[shard] = f"{reason} (after {self.attempts[shard]} attempts)"
            log.error("shard %d failed: %s", shard, self.failed[shard])
            return
        self.due[shard] = time.monotonic() + delay
        queue.append(shard)
        if self.executor.on_retry is not None:
            self.executor.on_retry(shard, reason)

    def _replace(self, slot: _Slot) -> None:
        import ray

        if slot not in self.slots:  # its other shard in flight came back first: replaced already
            return
        self.slots.remove(slot)
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self.add(self.start())

    def _fail_all(self, queue: deque[int], reason: str) -> None:
        log.error("%s; %d shard(s) left", reason, len(queue))
        for shard in queue:
            self.failed[shard] = self.failed.get(shard, reason)
        queue.clear()

    def shutdown(self) -> None:
        import ray

        for slot in self.slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.slots.clear()


def _reason(e: BaseException) -> str:
    """The root cause of a Ray error, on one line."""
    import ray

    cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None else e
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:500]
