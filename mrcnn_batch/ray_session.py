"""Which Ray a command uses: one rule for ``infer`` and ``eval``, said on their first line.

1. ``--address`` (or ``RAY_ADDRESS``, as under ``ray job submit``): join that cluster. A cluster
   that cannot be reached or refuses us is a one-line error (exit 2) naming what to check and
   what to set (Ray 2.60 clusters started with ``ray start`` use token authentication).
2. A Ray already initialised in this process (a notebook, a test session): used as it is.
3. Otherwise a private local Ray for this command alone (``address="local"``), stopped when the
   process ends. Never a cluster that ``ray start`` left running on this machine, nor a stopped
   one Ray still remembers in its temporary folder (what ``ray.init()`` without an address joins).

A leaf: imports Ray only when called.
"""

from __future__ import annotations

import json
import logging
import os
import socket

from mrcnn_batch.config import is_relative_path
from mrcnn_batch.errors import Interrupted, UsageError

AUTH_HINT = ("if the cluster was started with `ray start` (Ray 2.60 turns token authentication on there), "
             "set RAY_AUTH_MODE=token and give its token (~/.ray/auth_token on the head, or RAY_AUTH_TOKEN)")


def job_working_dir() -> str | None:
    """Under ``ray job submit`` with a runtime_env ``working_dir``: where Ray uploaded it (the
    driver then runs in a temporary copy of it, so a relative path points into that copy and is
    gone with it). None elsewhere."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray Jobs for the entry point
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return runtime_env.get("working_dir") or None


def check_job_paths(paths: dict[str, str | None]) -> None:
    """Refuse relative local paths in a Ray job with an uploaded working_dir (``paths``: what
    each is, e.g. ``{"OUTPUT": "runs/r1"}``): its run would be written into Ray's temporary copy."""
    if job_working_dir() is None:
        return
    for what, url in paths.items():
        if is_relative_path(url):
            raise UsageError(
                f"{what} {url!r} is a relative path, and this Ray job runs in Ray's temporary copy of its working_dir "
                f"({os.getcwd()}), where it would point and be lost: give an absolute path that the cluster's nodes "
                f"share, or a URL (s3://...)")


def ray_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``, else None (a private local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def ray_session(address: str | None = None, *, num_cpus: int | None = None, verbose: bool = False) -> str:
    """Make sure this process has a Ray by the rule above; returns what was done, in words.

    ``num_cpus`` sizes only a private local Ray (a cluster's resources are its own)."""
    import ray

    if ray.is_initialized():
        return "Ray: the Ray already initialised in this process"
    # Ray's C++ failure-signal handler prints a stack dump for a plain SIGTERM and aborts
    # (exit 134); a driver asked to stop should stop in one line (the caller's choice to keep it)
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    quiet = {"include_dashboard": False, "log_to_driver": verbose,
             "logging_level": logging.INFO if verbose else logging.ERROR, "configure_logging": True}
    target = ray_address(address)
    if target is None:
        ray.init(address="local", num_cpus=num_cpus, **quiet)
        _stop_on_sigterm()
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        return f"Ray: a private local Ray for this command ({cpus} CPUs, {gpus} GPUs; --address or RAY_ADDRESS joins a cluster)"
    check_listening(target)
    try:
        check_token(target)
        ray.init(address=target, **quiet)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, AuthenticationError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if len(first) > 300:
            first = first[:300] + "..."
        raise UsageError(f"could not join the Ray cluster at {target}: {type(e).__name__}: {first}. Check that it runs "
                         f"(`ray status --address {target}`); {AUTH_HINT}") from None
    _stop_on_sigterm()
    return f"Ray: joined the cluster at {target}"


_STOP_SIGNAL: list[int] = []  # the signal that asked this process to stop, once one did


def stop_signal() -> int | None:
    """The signal number that interrupted this process (SIGTERM), if :func:`ray_session`'s
    handler saw one; None for a plain Ctrl-C."""
    return _STOP_SIGNAL[-1] if _STOP_SIGNAL else None


def _stop_on_sigterm() -> None:
    """SIGTERM raises :class:`Interrupted` in the main thread (``ray.init`` installed a handler
    that exits mid-call with ``sys.exit``, which Ray's blocking calls turn into a SystemError), so
    the caller's ``finally`` blocks run and the CLI says what is kept in one line."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        _STOP_SIGNAL.append(signum)
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)


def _host_port(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of an address of the form ``[scheme://]host:port`` (an empty host: this
    machine), or None for other forms (``auto``)."""
    host, sep, port = target.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_token(target: str) -> None:
    """Raise Ray's ``AuthenticationError`` at once where the cluster at a ``host:port`` address
    refuses this process's token (or its lack of one): ``ray.init`` retries such a cluster for 20 s
    before it gives up with a ``ConnectionError``. One handshake with the cluster's GCS (Ray's own
    client) tells; anything else it meets (an older Ray without token authentication, another
    error) is left to ``ray.init``."""
    hp = _host_port(target)
    if hp is None or "://" in target:
        return
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without token authentication
        return
    try:
        GcsClient(address=target)
    except AuthenticationError:
        raise
    except Exception:  # noqa: BLE001 - not this check's to judge: ray.init says what it is
        return


def check_listening(target: str, timeout: float = 5.0) -> None:
    """Fail at once where nothing listens at a ``host:port`` address (Ray itself retries a stopped
    cluster for minutes). Other forms (``auto``) are left to Ray."""
    hp = _host_port(target)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"could not join the Ray cluster at {target}: nothing answers there ({e.strerror or e}). "
                         f"Start it (`ray start --head`) or give the address `ray start` printed "
                         f"(--address or RAY_ADDRESS)") from None
