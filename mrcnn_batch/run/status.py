"""The state of a run directory: shards committed / pending / failed, images by status.

Read from the run itself, so it works from any machine and while the job runs: the plan says
what is planned, the commit markers what is done. Failed shards are those the last ``infer``
gave up on; it records them in ``_failed.json`` (rewritten at the end of every ``infer``, and
dropped once the run is complete).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from mrcnn_batch.run.layout import CommitRecord, RunDir
from mrcnn_batch.run.lease import read_lease


@dataclass(frozen=True)
class RunStatus:
    output: str
    run_id: str
    model: str
    planned_images: int
    shards_done: list[int]
    shards_pending: list[int]  # no marker, not failed (not started yet, or running now)
    shards_failed: dict[int, str]  # no marker; the last infer gave up on them, with the reason
    images_by_status: dict[str, int]  # committed images only
    images_pending: int  # planned images of shards without a marker
    instances: int
    keypoints: int
    complete: bool
    driver: dict[str, Any] | None = None  # the lease of the driver running it now, if any
    shards_rejected: dict[int, str] = field(default_factory=dict)  # markers that are no commit, and why
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["shards_failed"] = {str(k): v for k, v in self.shards_failed.items()}
        d["shards_rejected"] = {str(k): v for k, v in self.shards_rejected.items()}
        return d


def run_status(url: str, *, storage_options: dict[str, Any] | None = None) -> RunStatus:
    run = RunDir(url, dict(storage_options or {}))
    meta = run.run_meta()
    plan = run.read_plan()
    planned = sorted(pc.unique(plan.column("shard")).to_pylist())
    commits = run.commits(run_id=meta.run_id)
    done = set(commits)
    failed = {k: v for k, v in run.failures().items() if k not in done}
    by_status, n_inst, n_kp = commit_totals(commits.values())
    not_done = [s for s in planned if s not in done]
    images_pending = images_in(plan, not_done)
    return RunStatus(
        output=url,
        run_id=meta.run_id,
        model=meta.identity.get("model", "?"),
        planned_images=plan.num_rows,
        shards_done=sorted(done),
        shards_pending=[s for s in not_done if s not in failed],
        shards_failed=dict(sorted(failed.items())),
        images_by_status=by_status,
        images_pending=images_pending,
        instances=n_inst,
        keypoints=n_kp,
        complete=not not_done,
        driver=read_lease(run),
        shards_rejected=dict(sorted(run.rejected.items())),
    )


def commit_totals(commits: Iterable[CommitRecord]) -> tuple[dict[str, int], int, int]:
    """Images by status, instance rows and keypoint rows of the given commits."""
    by_status: dict[str, int] = {}
    n_inst = n_kp = 0
    for rec in commits:
        for k, v in rec.status_counts.items():
            by_status[k] = by_status.get(k, 0) + v
        n_inst += rec.rows["instances"]
        n_kp += rec.rows["keypoints"]
    return dict(sorted(by_status.items())), n_inst, n_kp


def images_in(plan: pa.Table, shards: list[int]) -> int:
    """How many planned images the given shards hold."""
    if not shards:
        return 0
    mask = pc.is_in(plan.column("shard"), pa.array(shards, plan.column("shard").type))
    return int(pc.sum(mask.cast(pa.int64())).as_py() or 0)
