"""One driver per run directory: a lease file (``_driver.json``) with a heartbeat.

Two drivers on one output would both run every pending shard; a shard's files and marker could
then come from different writers. So a driver takes the lease before it plans or resumes, keeps
it fresh from a background thread, and removes it when it ends. A second driver finds it and:

* on the same host, with the owner's process alive: is refused at once;
* on the same host, with the owner's process gone (killed, crashed): takes over at once;
* from another host: watches the lease for up to its time-to-live. A heartbeat in that time
  means the owner is alive (refused); none means it is gone (taken over), so that a job
  restarted on another machine after a crash resumes by itself. A lease whose heartbeat is
  older than twice its time-to-live is taken over without waiting.

Fencing: a driver that was paused past its time-to-live (or cut off from storage) may find, when
it resumes, that another driver took its run. It must not commit anything more: the driver checks
its :class:`Fence` before dispatching each shard, and each worker checks it before writing a
shard's files and again before its marker. A fence holds when the lease still carries this
driver's token and ``_run.json`` still names this run; otherwise :class:`FencedOut` (exit 3). A
driver that lost its lease stops beating (it never writes the lease back over the new owner's).

Two drivers that start within the same instant could both see no lease; each re-reads its own
write a moment later and the one that finds the other's token stops. This narrows the window on
storage with read-after-write consistency (S3, local disks); it is not a distributed lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from mrcnn_batch.errors import RunRefused
from mrcnn_batch.run.layout import LEASE, RunDir

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0


class LeaseHeld(RuntimeError):
    """Another live driver holds the run directory."""


class FencedOut(RunRefused):
    """This driver lost the run to another: it commits nothing more."""


@dataclass(frozen=True)
class Fence:
    """What a commit to the run needs to hold: the lease's token and the run's id. Picklable,
    so that workers on other machines check the same fence."""

    token: str
    run_id: str

    def check(self, run: RunDir) -> None:
        """Raise :class:`FencedOut` unless ``run``'s lease and ``_run.json`` are still ours."""
        lease = read_lease(run)
        if lease is None or lease.get("token") != self.token:
            who = f"another driver ({_who(lease)})" if lease is not None else "no driver (its lease is gone)"
            raise FencedOut(f"{run.url}: this driver lost its lease; {who} holds the run now. "
                            "Stopping without committing more")
        run_id = run.run_meta().run_id
        if run_id != self.run_id:
            raise FencedOut(f"{run.url}: the run was replaced (run {run_id}, not {self.run_id}); "
                            "stopping without committing more")


class Lease:
    """This driver's hold on a run directory; ``release()`` (or a ``with`` block) ends it."""

    def __init__(self, run: RunDir, *, ttl_s: float = DEFAULT_TTL_S):
        self.run = run
        self.ttl_s = ttl_s
        self.doc: dict[str, Any] = {
            "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "started_at": time.time(), "ttl_s": ttl_s,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # another driver overwrote the lease while this one ran

    # -- taking and keeping it -----------------------------------------------------------
    def acquire(self, *, settle_s: float = 0.25) -> "Lease":
        other = read_lease(self.run)
        if other is not None:
            self._wait_out(other)
        self._write()
        time.sleep(settle_s)
        now = read_lease(self.run)
        if now is not None and now.get("token") != self.doc["token"]:
            raise LeaseHeld(f"{self.run.url}: another driver ({_who(now)}) took the run at the same moment; "
                            "it runs the job, this one stops")
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _wait_out(self, other: dict[str, Any]) -> None:
        ttl = float(other.get("ttl_s", DEFAULT_TTL_S))
        if other.get("host") == self.doc["host"]:
            if other.get("pid") != self.doc["pid"] and _pid_alive(other.get("pid")):
                raise LeaseHeld(
                    f"{self.run.url} is being run by another driver on this host ({_who(other)}); "
                    "wait for it to finish, or stop it first"
                )
            log.warning("%s: the previous driver (%s) is gone; taking over", self.run.url, _who(other))
            return
        age = time.time() - float(other.get("heartbeat_at", 0))
        if age > 2 * ttl:
            log.warning("%s: the previous driver (%s) last beat %.0fs ago; taking over", self.run.url, _who(other), age)
            return
        log.warning("%s: a driver on another host (%s) beat %.0fs ago; waiting up to %.0fs for its next beat",
                    self.run.url, _who(other), age, ttl)
        deadline = time.monotonic() + ttl
        while time.monotonic() < deadline:
            time.sleep(min(2.0, ttl / 10))
            now = read_lease(self.run)
            if now is None:
                return
            if now.get("token") != other.get("token") or now.get("heartbeat_at") != other.get("heartbeat_at"):
                raise LeaseHeld(
                    f"{self.run.url} is being run by another driver ({_who(now)}), alive: its heartbeat goes "
                    "on. Wait for it to finish, or stop it first"
                )
        log.warning("%s: no heartbeat from %s in %.0fs; taking over", self.run.url, _who(other), ttl)

    def fence(self, run_id: str) -> Fence:
        return Fence(self.doc["token"], run_id)

    def _write(self) -> None:
        self.doc["heartbeat_at"] = time.time()
        self.run.write_json(LEASE, self.doc)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                now = read_lease(self.run)
                if now is not None and now.get("token") != self.doc["token"]:
                    self.lost = True
                    log.error("%s: another driver (%s) took over this run's lease", self.run.url, _who(now))
                    return  # never write it back over the new owner's
                self._write()
            except Exception as e:  # noqa: BLE001 - storage trouble: the next beat tries again
                log.warning("%s: lease heartbeat failed: %s", self.run.url, e)

    # -- giving it back ------------------------------------------------------------------
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            now = read_lease(self.run)
            if now is not None and now.get("token") == self.doc["token"]:
                self.run.remove(LEASE)
        except Exception as e:  # noqa: BLE001 - a stale lease is taken over by the next driver
            log.warning("%s: could not remove the lease: %s", self.run.url, e)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_lease(run: RunDir) -> dict[str, Any] | None:
    """The lease document, or None when there is none (or it is unreadable: being rewritten)."""
    if not run.exists(LEASE):
        return None
    try:
        return run.read_json(LEASE)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _who(doc: dict[str, Any]) -> str:
    return f"{doc.get('host', '?')} pid {doc.get('pid', '?')}"
