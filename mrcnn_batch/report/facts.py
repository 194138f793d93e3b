"""What a report says about a run, gathered from its committed tables, markers and ``eval/``.

Only columns are read (``status``, ``category``, ``score``), never whole rows, so a report of a
run with millions of images stays cheap; failed images are listed up to a limit.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mrcnn_batch.arrays import from_numpy, is_word, to_numpy
from mrcnn_batch.run.layout import EVAL_DIR, CommitRecord, RunDir, RunMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Throughput:
    shards: int
    images: int
    workers: int
    worker_seconds: float  # sum over shards of their processing time
    model_seconds: float  # of which in the model's forward passes
    wall_seconds: float | None  # run creation to last commit (None: unknown)
    shard_seconds: tuple[float, ...]  # per shard, in shard order
    shard_images: tuple[int, ...]

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.wall_seconds if self.wall_seconds else None

    @property
    def images_per_worker_second(self) -> float | None:
        return self.images / self.worker_seconds if self.worker_seconds else None


@dataclass(frozen=True)
class RunFacts:
    url: str
    meta: RunMeta
    complete: bool
    planned_shards: int
    committed_shards: int
    status_counts: dict[str, int]
    instances_per_category: dict[str, int]
    keypoints_per_category: dict[str, int]
    scores: dict[str, np.ndarray]  # instance scores by category
    failures: tuple[dict[str, Any], ...]  # non-ok images (image_id, uri, status, error), first ones
    num_failures: int
    throughput: Throughput
    metrics: dict[str, Any] | None  # eval/metrics.json
    pr_curves: dict[str, bytes] = field(default_factory=dict)  # iou type -> PNG bytes


def gather(run: RunDir, *, max_failures: int = 100) -> RunFacts:
    meta = run.run_meta()
    commits = run.commits(run_id=meta.run_id)  # one view: completeness and tables both from it
    shards = sorted(commits)
    planned = meta.planned_shards or len(shards)
    # Parquet's own reader (read_shards), not pyarrow.dataset, whose import brings pandas
    images = run.read_shards("images", shards, ["image_id", "uri", "status", "error"])
    status = pc.cast(images["status"], pa.string())
    status_counts = {str(k): int(v) for k, v in _counts(status).items()}
    bad = images.filter(from_numpy(~is_word(images["status"], "ok"))).sort_by("image_id")
    inst = run.read_shards("instances", shards, ["category", "score"])
    kps = run.read_shards("keypoints", shards, ["category"])
    names, codes = category_codes(inst["category"])
    scores = scores_by_category(names, codes, to_numpy(inst["score"]) if inst.num_rows else np.zeros(0, np.float32))
    kp_names, kp_codes = category_codes(kps["category"])
    metrics, curves = _eval_outputs(run)
    return RunFacts(
        url=run.url,
        meta=meta,
        complete=len(shards) >= planned,
        planned_shards=planned,
        committed_shards=len(shards),
        status_counts=dict(sorted(status_counts.items(), key=lambda kv: (kv[0] != "ok", kv[0]))),
        instances_per_category={name: len(v) for name, v in scores.items()},
        keypoints_per_category=counts_by_category(kp_names, kp_codes),
        scores=scores,
        failures=tuple(bad.slice(0, max_failures).to_pylist()),
        num_failures=bad.num_rows,
        throughput=_throughput([commits[s] for s in shards], meta),
        metrics=metrics,
        pr_curves=curves,
    )


def category_codes(column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """The names of a dictionary-encoded category column and every row's index into them.

    The shards' files each have their own dictionary; they are unified, and only the int32
    indices are read out: 10 million instances cost 40 MB, not 10 million Python strings."""
    unified = column.unify_dictionaries()
    if unified.num_chunks == 0:
        return [], np.zeros(0, np.int32)
    names = [str(n) for n in unified.chunk(0).dictionary.to_pylist()]
    codes = np.concatenate([to_numpy(c.indices) for c in unified.chunks])
    return names, codes.astype(np.int32, copy=False)


def counts_by_category(names: list[str], codes: np.ndarray) -> dict[str, int]:
    counts = np.bincount(codes, minlength=len(names))
    return {name: int(counts[i]) for i, name in sorted(enumerate(names), key=lambda x: x[1]) if counts[i]}


def scores_by_category(names: list[str], codes: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Each present category's scores, in row order, by name."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(names))
    ends = np.cumsum(counts)
    starts = ends - counts
    return {name: scores[order[starts[i] : ends[i]]] for i, name in sorted(enumerate(names), key=lambda x: x[1])
            if ends[i] > starts[i]}


def _counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    vc = pc.value_counts(column)
    pairs = [(str(d["values"]), int(d["counts"])) for d in vc.to_pylist()]
    return dict(sorted(pairs))


def _throughput(records: list[CommitRecord], meta: RunMeta) -> Throughput:
    seconds = [r.seconds for r in records]
    images = [r.rows["images"] for r in records]
    committed = [r.committed_at for r in records if r.committed_at]
    created = meta.created_at
    wall = (max(committed) - float(created)) if committed and created else None
    return Throughput(
        shards=len(records),
        images=sum(images),
        workers=len({r.worker for r in records}),
        worker_seconds=sum(seconds),
        model_seconds=sum(r.model_seconds for r in records),
        wall_seconds=wall if wall is None or wall > 0 else None,
        shard_seconds=tuple(seconds),
        shard_images=tuple(images),
    )


def _eval_outputs(run: RunDir) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
    if not run.exists(f"{EVAL_DIR}/metrics.json"):
        return None, {}
    metrics = run.read_json(f"{EVAL_DIR}/metrics.json")
    curves = {}
    for t in (metrics.get("iou_types") or {}):
        rel = posixpath.join(EVAL_DIR, f"pr_{t}.png")
        if run.exists(rel):
            curves[t] = run.fs.cat_file(run.path(rel))
    return metrics, curves
