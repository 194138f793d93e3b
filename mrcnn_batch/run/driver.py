"""The driver of ``infer``: plan (or resume), execute pending shards, mark success.

0. Lease: take the run directory's lease (``_driver.json``), so that one driver runs it.
1. Plan: on a new output, list the input into the shard plan and write it with ``_run.json``
   before any work starts. On an existing output with the same settings, reuse both (resume);
   with other settings, refuse (``RunRefused``) unless ``overwrite``.
2. Execute: hand the shards without a commit marker to an executor (in-process, or Ray actors).
3. Commit: when every planned shard has a marker, write ``_SUCCESS``.

While shards commit, the commit index (``_commits/_index.json``, see ``RunDir.commits``) is
refreshed in the background at most every ``INDEX_EVERY_S``, so that a resume after a crash
reads only the markers written since the last refresh, not every marker of the run.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import fsspec
import pyarrow as pa

from mrcnn_batch import __version__
from mrcnn_batch.config import RunConfig, same_identity
from mrcnn_batch.errors import RunDamaged, RunRefused, UsageError
from mrcnn_batch.models.loaded import check_fit, effective_spec, resolve_weights
from mrcnn_batch.models.registry import get_spec
from mrcnn_batch.models.weights import Weights
from mrcnn_batch.plan import build_plan, shard_ids
from mrcnn_batch.run.layout import LEASE, PLAN_FILE, RUN_JSON, SUCCESS, RunDir, RunMeta
from mrcnn_batch.run.lease import DEFAULT_TTL_S, Fence, FencedOut, Lease, LeaseHeld
from mrcnn_batch.run.preflight import settings_refusal
from mrcnn_batch.run.status import commit_totals
from mrcnn_batch.schemas import SCHEMA_VERSION
from mrcnn_batch.write.tables import table_bytes

log = logging.getLogger(__name__)

INDEX_EVERY_S = 60.0  # the commit index is at most this far behind a running driver's commits


@dataclass
class RunSummary:
    output: str
    run_id: str
    planned_shards: int
    planned_images: int
    executed_shards: list[int]
    failed_shards: dict[int, str]
    images_by_status: dict[str, int]
    instances: int
    keypoints: int
    seconds: float
    resumed: bool
    complete: bool
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)


class Executor(Protocol):
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
        """Run the pending shards; return the failed ones with their reason. Check ``fence``
        before dispatching each shard, and have workers check it before they commit."""


def prepare(config: RunConfig, *, overwrite: bool = False) -> tuple[RunDir, RunMeta, pa.Table, Weights, bool]:
    """The run directory, its metadata and plan, and the weights: new, or resumed."""
    spec = get_spec(config.predict.model)
    weights = resolve_weights(spec, config.predict.weights, storage_options=config.input.storage_options)
    check_fit(config.predict.model, weights)  # before any plan is written or worker started
    # Fail here, before any worker starts, on class names the weights do not know.
    effective_spec(spec, weights).keep_labels(config.predict.classes)  # an unknown name fails here
    identity = config.identity(weights_sha256=weights.sha256)
    run = RunDir(config.output, config.output_storage_options)
    if run.exists(RUN_JSON):
        try:
            meta = run.run_meta()
        except RunDamaged:
            if not overwrite:
                raise
            meta = None
        if meta is not None and same_identity(meta.identity, identity) and run.exists(PLAN_FILE):
            return run, meta, run.read_plan(), weights, True
        if not overwrite:
            raise RunRefused(settings_refusal(config.output, meta.identity if meta else {}, identity))
        log.warning("overwriting the run in %s", config.output)
    if overwrite:
        check_overwrite(run, config.input.url, input_storage_options=config.input.storage_options)
        run.remove_own(keep=(LEASE,))  # this driver's own lease stays
    plan = build_plan(config.input, shard_size=config.shard_size)
    _write_plan(run, plan)
    meta = _run_meta(config, identity, weights, plan)
    run.write_run_meta(meta)
    return run, meta, plan, weights, False


def execute(
    config: RunConfig,
    executor: Executor,
    *,
    overwrite: bool = False,
    on_plan: Callable[[RunMeta, pa.Table, list[int]], None] | None = None,
    on_commit: Callable[[dict[str, Any]], None] | None = None,
    lease_ttl_s: float = DEFAULT_TTL_S,
) -> RunSummary:
    """Plan or resume ``config``'s run and execute its pending shards, holding the run's lease
    (one driver per output; see :mod:`mrcnn_batch.run.lease`)."""
    try:
        lease = Lease(RunDir(config.output, config.output_storage_options), ttl_s=lease_ttl_s).acquire()
    except LeaseHeld as e:
        raise RunRefused(str(e)) from None
    with lease:
        return _execute(config, executor, lease, overwrite=overwrite, on_plan=on_plan, on_commit=on_commit)


def _execute(config: RunConfig, executor: Executor, lease: Lease, *, overwrite: bool, on_plan, on_commit) -> RunSummary:
    start = time.perf_counter()
    run, meta, plan, weights, resumed = prepare(config, overwrite=overwrite)
    fence = lease.fence(meta.run_id)
    all_shards = shard_ids(plan)
    done = set(run.committed_shards())
    pending = [s for s in all_shards if s not in done]
    if on_plan:
        on_plan(meta, plan, pending)
    records: list[dict[str, Any]] = []
    index = IndexRefresher(config, meta.run_id, fence)

    def committed(record: dict[str, Any]) -> None:
        records.append(record)
        index.committed()
        if on_commit:
            on_commit(record)

    try:
        failed = dict(executor(pending, plan, config=config, run_id=meta.run_id, weights=weights, on_commit=committed,
                               fence=fence)) if pending else {}
    finally:
        index.close()  # the last refresh lands before the final index below (or before a crash goes on)
    fence.check(run)  # a driver that lost its run writes neither _failed.json nor _SUCCESS
    commits = run.commits(run_id=meta.run_id)  # one view of the markers for all that follows
    try:
        run.write_commit_index(commits, run_id=meta.run_id)  # the next scan reads only newer markers
    except OSError as e:
        log.warning("could not write the commit index of %s: %s", config.output, e)
    complete = set(commits) >= set(all_shards)
    for shard in set(pending) - set(commits) - set(failed):
        failed[shard] = run.rejected.get(shard) or "the executor returned without committing it"
    try:
        run.record_failures({s: r for s, r in failed.items() if s not in commits})
    except OSError as e:  # the storage that failed the shards may refuse this too
        log.warning("could not record the failed shards in %s: %s", config.output, e)
    if complete:
        run.write_json(SUCCESS, {"run_id": meta.run_id, "completed_at": time.time()})
    by_status, n_inst, n_kp = commit_totals(commits.values())
    return RunSummary(
        output=config.output,
        run_id=meta.run_id,
        planned_shards=len(all_shards),
        planned_images=plan.num_rows,
        executed_shards=sorted(r["shard"] for r in records),
        failed_shards=failed,
        images_by_status=by_status,
        instances=n_inst,
        keypoints=n_kp,
        seconds=time.perf_counter() - start,
        resumed=resumed,
        complete=complete,
        records=records,
    )


class IndexRefresher:
    """Rewrites the commit index in a background thread as shards commit, one refresh at a time
    and at most every ``INDEX_EVERY_S`` (or ten times the last refresh's duration, so that on a
    run of very many shards the scans take at most a tenth of the driver's time): a scan of the
    run (its own ``RunDir``, so the driver's is untouched) and the index of what it found.
    Advisory like the index itself: a refresh that fails is logged and costs only reads at the
    next scan; a driver that lost its lease writes none."""

    def __init__(self, config: RunConfig, run_id: str, fence: Fence):
        self.config, self.run_id, self.fence = config, run_id, fence
        self._last = time.monotonic()
        self._took = 0.0  # the last refresh's seconds
        self._thread: threading.Thread | None = None

    def committed(self) -> None:
        """A shard committed: refresh if the last refresh is old enough and none is under way."""
        now = time.monotonic()
        if now - self._last < max(INDEX_EVERY_S, 10 * self._took) or (self._thread is not None and self._thread.is_alive()):
            return
        self._last = now
        self._thread = threading.Thread(target=self._refresh, name="commit-index", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        start = time.monotonic()
        run = RunDir(self.config.output, self.config.output_storage_options)
        try:
            self.fence.check(run)
            run.write_commit_index(run.commits(run_id=self.run_id, quiet=True), run_id=self.run_id)
        except FencedOut:
            pass  # the driver finds out itself, at its next check
        except Exception as e:  # noqa: BLE001 - advisory: never the run's failure
            log.warning("could not refresh the commit index of %s: %s", self.config.output, e)
        self._took = time.monotonic() - start

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()


def check_overwrite(run: RunDir, input_url: str, *, input_storage_options: dict[str, Any]) -> None:
    """Refuse ``--overwrite`` where it could remove what a run did not write: an output holding
    anything but a run's own names (symbolic links included), or one that contains the input."""
    if _contains(run, input_url, input_storage_options):
        raise UsageError(
            f"--overwrite refused: the output {run.url} contains the input {input_url}; "
            "choose an output outside the input"
        )
    foreign = run.foreign_entries()
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise UsageError(
            f"--overwrite refused: {run.url} holds what no run wrote ({shown}). Overwrite removes only a "
            "run's own files; use an empty or new output, or move those away first"
        )


def _contains(run: RunDir, input_url: str, storage_options: dict[str, Any]) -> bool:
    """Whether the input lies inside the output (on the same file system)."""
    try:
        fs, path = fsspec.core.url_to_fs(input_url.split("::")[-1], **storage_options)
    except Exception:  # noqa: BLE001 - an input we cannot resolve is reported by planning
        return False
    if type(fs) is not type(run.fs):
        return False
    out = run.root
    if run.is_local:
        path, out = os.path.realpath(path), os.path.realpath(out)
    path, out = path.rstrip("/"), out.rstrip("/")
    return path == out or path.startswith(out + "/") or out == ""


def _write_plan(run: RunDir, plan: pa.Table) -> None:
    run.write_bytes(PLAN_FILE, table_bytes(plan))


def _run_meta(config: RunConfig, identity: dict, weights: Weights, plan: pa.Table) -> RunMeta:
    import pyarrow
    import torch
    import torchvision

    spec = effective_spec(get_spec(config.predict.model), weights)
    return RunMeta(
        run_id=uuid.uuid4().hex,
        created_at=time.time(),
        schema_version=SCHEMA_VERSION,
        identity=identity,
        config=config.public_dict(),
        model=spec.metadata(),
        weights={"source": weights.source, "sha256": weights.sha256},
        plan={"images": plan.num_rows, "shards": len(shard_ids(plan))},
        versions={
            "mrcnn_batch": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pyarrow": pyarrow.__version__,
            "python": platform.python_version(),
        },
    )
