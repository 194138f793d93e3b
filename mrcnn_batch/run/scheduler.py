"""Which shard runs on which worker, and when: the Ray executor's decisions, without Ray.

A pure object: no Ray, no I/O, no clock of its own (every call that depends on time is given
``now``). The Ray adapter (``run/ray_executor.py``) starts actors and sends shards as the
scheduler decides, and tells it what happened; tests drive it with fake workers and a fake
clock (``tests/test_scheduler.py``). Workers are opaque keys chosen by the adapter.

The rules:

* a ready worker runs up to ``per_worker`` shards at once; shards are handed out in queue
  order, skipping those whose retry is not yet due, one per free worker before a second each;
* a shard that raised is retried after ``retry_delay_s * 2 ** (attempt - 1)`` seconds, on any
  worker; a shard whose worker died is retried at once, elsewhere;
* a shard is tried at most ``max_attempts`` times in all (worker deaths included), then it is
  failed with its last reason and the others go on;
* a worker that dies is replaced while ``replacements`` last;
* with no worker left and none starting, or none ready for ``start_timeout_s`` while shards
  wait, every waiting shard fails with the reason.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

Worker = Hashable


@dataclass
class _WorkerState:
    ready: bool = False
    running: set[int] = field(default_factory=set)


class Scheduler:
    """The state of one executor call: the queue, attempts, due times, workers, failures."""

    def __init__(
        self,
        pending: Iterable[int],
        *,
        now: float,
        per_worker: int,
        max_attempts: int,
        retry_delay_s: float,
        replacements: int,
        start_timeout_s: float,
        on_retry: Callable[[int, str], None] | None = None,
    ) -> None:
        if per_worker < 1 or max_attempts < 1:
            raise ValueError("per_worker and max_attempts must be >= 1")
        self.queue: deque[int] = deque(pending)
        self.per_worker = per_worker
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self.replacements_left = replacements
        self.start_timeout_s = start_timeout_s
        self.on_retry = on_retry  # (shard, reason), each time a shard is queued again
        self.workers: dict[Worker, _WorkerState] = {}
        self.attempts: dict[int, int] = {}
        self.due: dict[int, float] = {}  # shard -> not before
        self.failed: dict[int, str] = {}  # shard -> reason, once it is given up
        self.workers_lost = 0
        self._idle_since = now

    # -- what the adapter asks

    @property
    def done(self) -> bool:
        """Nothing waits and nothing runs."""
        return not self.queue and not self.running()

    def running(self) -> dict[int, Worker]:
        return {s: w for w, st in self.workers.items() for s in st.running}

    def assign(self, now: float) -> list[tuple[Worker, int]]:
        """The shards to send now, each with its worker (attempts counted as they are sent)."""
        out: list[tuple[Worker, int]] = []
        for _ in range(self.per_worker):  # one shard per free worker, then a second each
            for w, st in self.workers.items():
                if not st.ready or len(st.running) >= self.per_worker:
                    continue
                shard = next((s for s in self.queue if self.due.get(s, 0.0) <= now), None)
                if shard is None:
                    return out
                self.queue.remove(shard)
                self.attempts[shard] = self.attempts.get(shard, 0) + 1
                st.running.add(shard)
                out.append((w, shard))
        return out

    def wait_timeout(self, now: float) -> float:
        """How long the adapter may wait for news before asking :meth:`assign` again."""
        free = any(st.ready and len(st.running) < self.per_worker for st in self.workers.values())
        due = [self.due.get(s, now) - now for s in self.queue]
        return max(0.05, min(due)) if due and free else 1.0

    def stalled(self, now: float) -> str | None:
        """Fail every waiting shard, and say why, when no worker can take them; else None."""
        if not self.queue:
            return None
        if self.running() or any(st.ready for st in self.workers.values()):
            self._idle_since = now
            return None
        if not self.workers:
            reason = "no worker left: every actor died and the replacements are used up"
        elif now - self._idle_since > self.start_timeout_s:
            reason = f"no worker started within {self.start_timeout_s:.0f}s (cluster out of resources?)"
        else:
            return None
        for shard in self.queue:
            self.failed[shard] = self.failed.get(shard, reason)
        self.queue.clear()
        return reason

    # -- what the adapter tells

    def worker_started(self, w: Worker) -> None:
        self.workers[w] = _WorkerState()

    def worker_ready(self, w: Worker) -> None:
        self.workers[w].ready = True

    def worker_lost(self, w: Worker, reason: str, now: float) -> bool:
        """A worker died (while starting or running): its shards are retried at once elsewhere.
        Returns whether to start a replacement (False: already reported, or none left)."""
        st = self.workers.pop(w, None)
        if st is None:
            return False
        self.workers_lost += 1
        for shard in sorted(st.running):
            self._again(shard, f"worker lost: {reason}", now, delay=0.0)
        if self.replacements_left > 0:
            self.replacements_left -= 1
            return True
        return False

    def shard_done(self, w: Worker, shard: int) -> None:
        self.workers[w].running.discard(shard)
        self.failed.pop(shard, None)

    def shard_raised(self, w: Worker, shard: int, reason: str, now: float) -> None:
        """The shard raised on a live worker (e.g. storage down): retried after the backoff."""
        self.workers[w].running.discard(shard)
        self._again(shard, reason, now, delay=self.retry_delay_s * 2 ** (self.attempts[shard] - 1))

    def _again(self, shard: int, reason: str, now: float, *, delay: float) -> None:
        if self.attempts[shard] >= self.max_attempts:
            self.failed[shard] = f"{reason} (after {self.attempts[shard]} attempts)"
            return
        self.due[shard] = now + delay
        self.queue.append(shard)
        if self.on_retry is not None:
            self.on_retry(shard, reason)
