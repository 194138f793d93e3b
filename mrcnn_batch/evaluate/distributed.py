"""Evaluation over Ray: ground truth loaded once on the driver and partitioned; per-image
matching in tasks over groups of shards (or of images); exact merge on the driver.

A task gets its images' ground truth (through the object store) and either the shards it reads
itself from the run directory, or its slice of a results file's detections. It returns only
:class:`~mrcnn_batch.evaluate.match.MatchResult` arrays (a score, a rank and two bits per area
range and IoU threshold per detection), so the driver holds no Python object per detection.
Matching is per image and accumulation sorts by (category, image id, rank) before pycocotools'
stable score sort, so the numbers do not depend on how images were split into shards or tasks.
``workers=0`` runs the same groups in this process, without Ray. Either way a group of shards is
read once per IoU type, shard after shard, and matched in units of at most ``_IMAGES_PER_UNIT``
images (or one larger shard), each unit's detections let go before the next's are read (so what a task holds is its
ground truth, one unit's detections and the matches); a results file's detections, held whole,
are matched a part at a time.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from typing import Any

import numpy as np

from mrcnn_batch.arrays import is_word, to_numpy
from mrcnn_batch.evaluate.errors import EvalInputError, IncompleteRunError
from mrcnn_batch.evaluate.evaluator import COCOEvaluator, EvalResult, EvalSetup
from mrcnn_batch.evaluate.groundtruth import GroundTruth
from mrcnn_batch.evaluate.match import MatchResult, match_images
from mrcnn_batch.evaluate.params import EvalParams
from mrcnn_batch.evaluate.predictions import (
    Detections,
    check_ids,
    detections_from_tables,
)
from mrcnn_batch.ray_session import ray_address, ray_session

log = logging.getLogger(__name__)

_TABLE_COLUMNS = {
    "bbox": ("instances", ["image_id", "instance_id", "category_id", "score", "bbox"]),
    "segm": ("instances", ["image_id", "instance_id", "category_id", "score", "bbox", "mask", "area"]),
    "boundary": ("instances", ["image_id", "instance_id", "category_id", "score", "bbox", "mask", "area"]),
    "keypoints": ("keypoints", ["image_id", "instance_id", "category_id", "score", "bbox", "keypoints"]),
}
_IMAGES_PER_TASK = 50_000  # bound on one task's images
_IMAGES_PER_UNIT = 256  # the most images whose detections a task holds at once, unless one shard has more


@dataclass(frozen=True)
class ShardGroup:
    """Shards of a run directory that one task reads and matches."""

    url: str
    shards: tuple[int, ...]
    storage_options: dict[str, Any] = field(default_factory=dict)
    id_map: IdMap | None = None  # run image ids -> ground-truth ids (matching by file name)
    units: tuple[tuple[tuple[int, ...], np.ndarray], ...] = ()  # (shards, image ids) matched in turn: see _units

    def load(self, iou_type: str) -> Detections:
        """Every shard's detections of ``iou_type`` at once (one unit of all of them; eight files
        read ahead, nothing to overlap them with)."""
        from mrcnn_batch.run.layout import RunDir

        run = RunDir(self.url, dict(self.storage_options))
        (_, dets), = _unit_detections(run, ((self.shards, np.zeros(0, np.int64)),), iou_type, self.id_map, ahead=8)
        return dets


@dataclass(frozen=True)
class IdMap:
    """Run image ids to ground-truth image ids, as two sorted-by-run-id arrays."""

    run_ids: np.ndarray
    gt_ids: np.ndarray

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self.gt_ids[np.searchsorted(self.run_ids, ids)]


MATCH_BY = ("image_id", "file_name")


def _restrict(id_map: IdMap | None, gt_ids: np.ndarray) -> IdMap | None:
    """The part of ``id_map`` onto these ground-truth images (what one task needs)."""
    if id_map is None:
        return None
    keep = np.isin(id_map.gt_ids, gt_ids)
    return IdMap(id_map.run_ids[keep], id_map.gt_ids[keep])


def file_name_map(run_ids: np.ndarray, uris: list[str], gt: GroundTruth, *, run_url: str) -> IdMap:
    """Pair a run's images with the ground truth's by file name (the URI's last part against
    ``file_name``'s), for runs planned from a folder or manifest rather than the COCO JSON."""
    if gt.file_names is None:
        raise EvalInputError(f"ground truth {gt.source}: file names were not loaded")
    by_name: dict[str, int] = {}
    for image_id, name in zip(gt.image_ids.tolist(), gt.file_names):
        if name is None:
            continue
        base = name.rsplit("/", 1)[-1]
        if base in by_name:
            raise EvalInputError(f"ground truth {gt.source}: file name {base!r} is used by images {by_name[base]} and {image_id}")
        by_name[base] = image_id
    names = [u.rsplit("/", 1)[-1] for u in uris]
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        raise EvalInputError(f"run {run_url}: file names {twice[:5]} occur more than once; they cannot be matched by name")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise EvalInputError(
            f"run {run_url}: {len(unknown)} of its {len(names)} images have a file name absent from the ground "
            f"truth {gt.source} (e.g. {unknown[:5]})"
        )
    gt_ids = np.array([by_name[n] for n in names], np.int64)
    order = np.argsort(run_ids, kind="stable")
    return IdMap(np.asarray(run_ids, np.int64)[order], gt_ids[order])


@dataclass(frozen=True)
class RunScope:
    """Which images of a run are evaluated, and how complete the run is."""

    image_ids: np.ndarray  # ground-truth images evaluated
    groups: tuple[tuple[tuple[int, ...], np.ndarray], ...]  # (shards, their evaluated image ids)
    missing_images: int  # ground-truth images the run never processed
    failed_images: int  # processed images whose status is not "ok" (evaluated without detections)
    uncommitted_shards: int
    id_map: IdMap | None = None  # with match_by="file_name"
    shard_images: Mapping[int, np.ndarray] = field(default_factory=dict)  # each committed shard's evaluated images


def match_group(
    gt_part: GroundTruth,
    source: ShardGroup | dict[str, Detections],
    setup: EvalSetup,
    image_ids: np.ndarray,
    unknown_categories: str,
) -> dict[str, list[MatchResult]]:
    """One task: the detections of ``source`` matched against ``gt_part`` on ``image_ids`` (a
    group of shards read and matched a unit at a time, :func:`_stream_matches`; without units, as
    one), the matches of each IoU type in parts (merged once, by the evaluator)."""
    got: dict[str, list[MatchResult]] = {t: [] for t in setup.iou_types}
    if isinstance(source, ShardGroup):
        from mrcnn_batch.run.layout import RunDir

        run = RunDir(source.url, dict(source.storage_options))
        for t, m in _stream_matches(run, source.units or ((source.shards, image_ids),), gt_part, setup,
                                    source.id_map, unknown_categories):
            got[t].append(m)
    else:
        for t in setup.iou_types:
            got[t].append(_match(gt_part, source[t], setup, t, image_ids, unknown_categories, "predictions"))
    return got


def _match(gt_part: GroundTruth, dets: Detections, setup: EvalSetup, iou_type: str, image_ids: np.ndarray,
           unknown_categories: str, source: str) -> MatchResult:
    """``dets`` on ``image_ids``, their categories checked, matched against ``gt_part``."""
    return match_images(gt_part, _checked(dets, image_ids, gt_part, source, unknown_categories),
                        params=setup.params[iou_type], category_ids=setup.category_ids[iou_type], sigmas=setup.sigmas,
                        image_ids=image_ids)


def _checked(dets: Detections, image_ids: np.ndarray, gt: GroundTruth, source: str, unknown_categories: str) -> Detections:
    """``dets`` of ``image_ids``, their categories checked against ``gt`` (``check_ids``: refused,
    or dropped with ``unknown_categories="drop"``)."""
    dets = dets.subset(image_ids)
    keep = check_ids(dets.image_id, dets.category_id, gt=gt, source=source, unknown_categories=unknown_categories)
    return dets if keep is None else dets.take(keep)


def run_scope(
    run: Any, gt: GroundTruth, *, allow_partial: bool, shards_per_task: int | None, workers: int,
    match_by: str = "image_id",
) -> RunScope:
    """Compare the run's committed images with the ground truth; refuse an incomplete run."""
    if match_by not in MATCH_BY:
        raise ValueError(f"match_by must be one of {MATCH_BY}, got {match_by!r}")
    committed = run.committed_shards()
    planned = set(to_numpy(run.read_plan(["shard"])["shard"]).tolist()) if run.exists("_plan/plan.parquet") else set(committed)
    uncommitted = len(planned - set(committed))
    columns = ["image_id", "shard", "status"] + (["uri"] if match_by == "file_name" else [])
    images = run.read_shards("images", committed, columns) if committed else None
    ids = to_numpy(images["image_id"]) if images is not None else np.zeros(0, np.int64)
    id_map = None
    if match_by == "file_name":
        id_map = file_name_map(ids, images["uri"].to_pylist() if images is not None else [], gt, run_url=run.url)
        ids = id_map(ids)
    shard_of = to_numpy(images["shard"]) if images is not None else np.zeros(0, np.int32)
    failed = len(ids) - int(is_word(images["status"], "ok").sum()) if images is not None else 0
    extra = np.setdiff1d(ids, gt.image_ids)
    if len(extra):
        raise EvalInputError(
            f"run {run.url}: {len(extra)} of its {len(ids)} images are not in the ground truth {gt.source} "
            f"(e.g. image ids {extra[:5].tolist()}); image ids must be the ground truth's: plan the run "
            "from the COCO annotations JSON, or match the images by file name (--match-by file_name)"
        )
    missing = np.setdiff1d(gt.image_ids, ids)
    if len(missing) and not allow_partial:
        raise IncompleteRunError(
            f"run {run.url} is incomplete: {len(missing)} of the {len(gt.image_ids)} ground-truth images "
            f"were never processed ({uncommitted} planned shards have no commit marker; e.g. image ids "
            f"{missing[:5].tolist()}). Their objects would count as missed or, left out, inflate AP. "
            "Finish the run, or pass --allow-partial to evaluate the processed images only"
        )
    if failed:
        log.warning("run %s: %d processed images failed (not status ok); evaluated as images without detections", run.url, failed)
    evaluated = np.setdiff1d(gt.image_ids, missing)
    per_shard = max(1, math.ceil(len(ids) / max(1, len(committed))))
    if shards_per_task is None:
        shards_per_task = max(1, min(math.ceil(len(committed) / max(1, 4 * workers)), _IMAGES_PER_TASK // per_shard))
    # each shard's images from one sort of all of them by (shard, image id), not a pass over every
    # image per shard (thousands of them)
    order = np.lexsort((ids, shard_of))
    sh, im = shard_of[order], ids[order]
    first = np.ones(len(sh), bool)  # (an image listed twice counts once)
    first[1:] = (sh[1:] != sh[:-1]) | (im[1:] != im[:-1])
    first &= np.isin(sh, committed)  # (a row naming a shard that is not committed: in none)
    sh, im = sh[first], im[first]
    bounds = np.searchsorted(sh, np.asarray(committed + [np.iinfo(np.int64).max], np.int64))
    shard_images = {s: im[bounds[n]:bounds[n + 1]] for n, s in enumerate(committed)}
    groups = []
    for i in range(0, len(committed), shards_per_task):
        shards = tuple(committed[i:i + shards_per_task])
        groups.append((shards, np.unique(np.concatenate([shard_images[s] for s in shards]))))
    return RunScope(evaluated, tuple(groups), len(missing), failed, uncommitted, id_map, shard_images)


def evaluate_run(
    url: str,
    gt: GroundTruth,
    *,
    iou_types: Sequence[str],
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    kpt_sigmas: Sequence[float] | None = None,
    unknown_categories: str = "error",
    workers: int | None = None,
    shards_per_task: int | None = None,
    match_by: str = "image_id",
    params: Mapping[str, EvalParams] | None = None,
) -> tuple[dict[str, EvalResult], RunScope]:
    """Evaluate a run directory's committed tables against ``gt``.

    ``match_by="file_name"`` pairs the run's images with the ground truth's by file name, for a
    run planned from a folder or manifest (whose ids are hashes of the keys)."""
    ev, scope = match_run(
        url, gt, iou_types=iou_types, storage_options=storage_options, allow_partial=allow_partial,
        kpt_sigmas=kpt_sigmas, unknown_categories=unknown_categories, workers=workers,
        shards_per_task=shards_per_task, match_by=match_by, params=params,
    )
    return ev.evaluate(allow_partial=allow_partial), scope


def match_run(
    url: str,
    gt: GroundTruth,
    *,
    iou_types: Sequence[str],
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    kpt_sigmas: Sequence[float] | None = None,
    unknown_categories: str = "error",
    workers: int | None = None,
    shards_per_task: int | None = None,
    match_by: str = "image_id",
    params: Mapping[str, EvalParams] | None = None,
) -> tuple[COCOEvaluator, RunScope]:
    """:func:`evaluate_run` up to the matching: the evaluator holds every evaluated image's
    matches (``matches(iou_type)``), ready to ``evaluate``."""
    from mrcnn_batch.run.layout import open_run

    run = open_run(url, storage_options=storage_options)
    model_meta = run.run_meta().model
    workers = _workers(workers)
    scope = run_scope(run, gt, allow_partial=allow_partial, shards_per_task=shards_per_task, workers=workers,
                      match_by=match_by)
    ev = COCOEvaluator(gt, iou_types=iou_types, params=params, kpt_sigmas=kpt_sigmas, model_metadata=model_meta,
                       unknown_categories=unknown_categories)
    covered = np.concatenate([ids for _, ids in scope.groups]) if scope.groups else np.zeros(0, np.int64)
    rest = np.setdiff1d(scope.image_ids, covered)  # none expected; kept for safety
    jobs = chain(  # (taken one at a time in this process: each group's ground truth as it is matched)
        ((part, ShardGroup(url, shards, dict(storage_options or {}), _restrict(scope.id_map, img_ids),
                           _units(shards, scope.shard_images)), img_ids)
         for (shards, img_ids), part in zip(scope.groups, gt.parts(ids for _, ids in scope.groups))),
        [(gt.subset(rest), {t: _no_detections(t) for t in ev.iou_types}, rest)] if len(rest) else [],
    )
    _run_jobs(ev, jobs, unknown_categories=unknown_categories, workers=workers)
    return ev, scope


def _units(shards: Sequence[int], shard_images: Mapping[int, np.ndarray]) -> tuple[tuple[tuple[int, ...], np.ndarray], ...]:
    """``shards`` in runs of at most ``_IMAGES_PER_UNIT`` images (a larger shard is a unit of its
    own), with their images: what a task reads, matches and lets go before the next."""
    units, part, held, count = [], [], [], 0
    for s in shards:
        ids = shard_images.get(s, np.zeros(0, np.int64))
        if part and count + len(ids) > _IMAGES_PER_UNIT:
            units.append((tuple(part), np.unique(np.concatenate(held))))
            part, held, count = [], [], 0
        part.append(s)
        held.append(ids)
        count += len(ids)
    if part:
        units.append((tuple(part), np.unique(np.concatenate(held))))
    return tuple(units)


def _stream_matches(run: Any, units: Sequence[tuple[tuple[int, ...], np.ndarray]], gt: GroundTruth, setup: EvalSetup,
                    id_map: IdMap | None, unknown_categories: str) -> Iterator[tuple[str, MatchResult]]:
    """``(iou_type, matches)`` of each unit in turn (:func:`_unit_detections`), each matched
    against its part of ``gt`` — so what is held is the ground truth, one unit's detections and
    the matches."""
    # from object storage eight files in flight hide its latency; from a local disk one, read while
    # the last unit is matched, is as fast, and each file more in flight is its table and buffers more
    ahead = 1 if run.is_local else 8
    for t in setup.iou_types:
        for (img_ids, dets), gt_part in zip(_unit_detections(run, units, t, id_map, ahead=ahead),
                                            gt.parts(ids for _, ids in units)):
            yield t, _match(gt_part, dets, setup, t, img_ids, unknown_categories, run.url)
            del dets  # (before the next unit's are converted)


def _unit_detections(run: Any, units: Sequence[tuple[tuple[int, ...], np.ndarray]], iou_type: str,
                     id_map: IdMap | None, *, ahead: int) -> Iterator[tuple[np.ndarray, Detections]]:
    """``(image ids, detections)`` of each unit in turn: the ``iou_type`` table of the units'
    shards read once, shard after shard (``ahead`` files read ahead, across the units), a unit's
    detections converted (run ids mapped to the ground truth's by ``id_map``) and let go before
    the next's."""
    table_name, columns = _TABLE_COLUMNS[iou_type]
    shards = [s for unit, _ in units for s in unit]
    with closing(run.iter_shards(table_name, shards, columns, ahead=ahead)) as tables:  # (closed: buffers given back)
        for unit, img_ids in units:
            dets = detections_from_tables(islice(tables, len(unit)), count=len(unit), iou_type=iou_type,
                                          source=f"{run.url} shards {unit[0]}..{unit[-1]}")
            yield img_ids, dets if id_map is None else replace(dets, image_id=id_map(dets.image_id))
            del dets


def evaluate_detections(
    dets: dict[str, Detections],
    gt: GroundTruth,
    *,
    kpt_sigmas: Sequence[float] | None = None,
    unknown_categories: str = "error",
    workers: int | None = None,
    images_per_task: int | None = None,
    params: Mapping[str, EvalParams] | None = None,
) -> dict[str, EvalResult]:
    """Evaluate in-memory detections (e.g. a results file) on every ground-truth image."""
    workers = _workers(workers)
    ev = COCOEvaluator(gt, iou_types=tuple(dets), params=params, kpt_sigmas=kpt_sigmas,
                       unknown_categories=unknown_categories)
    n = len(gt.image_ids)
    per_task = images_per_task or max(1, min(_IMAGES_PER_TASK, math.ceil(n / max(1, 4 * workers))))
    groups = [gt.image_ids[i:i + per_task] for i in range(0, n, per_task)]
    # in this process each part's detections are taken as it is matched, not every part at once
    jobs = ((part, dets if workers == 0 else {t: d.subset(ids) for t, d in dets.items()}, ids)
            for ids, part in zip(groups, gt.parts(groups)))
    _run_jobs(ev, jobs, unknown_categories=unknown_categories, workers=workers)
    return ev.evaluate()


def _run_jobs(ev: COCOEvaluator, jobs: Iterable[tuple], *, unknown_categories: str, workers: int) -> None:
    """``(ground truth part, source, image ids)`` jobs matched by :func:`match_group`: one after
    another in this process (``workers=0``, or a single job), taken from ``jobs`` as they go;
    else as Ray tasks."""
    if workers:
        jobs = list(jobs)
    if workers == 0 or len(jobs) <= 1:
        for gt_part, source, img_ids in jobs:
            _add(ev, match_group(gt_part, source, ev.setup, img_ids, unknown_categories))
        return
    import ray

    ensure_ray(workers)
    remote = ray.remote(num_cpus=1)(match_group)
    setup_ref = ray.put(ev.setup)
    pending = [remote.remote(ray.put(g), s, setup_ref, i, unknown_categories) for g, s, i in jobs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            _add(ev, ray.get(done[0]))
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, (EvalInputError, IncompleteRunError)):
                raise cause from None
            raise


def _add(ev: COCOEvaluator, results: dict[str, list[MatchResult]]) -> None:
    for t in ev.iou_types:
        for part in results[t]:
            ev.add(t, part)


def ensure_ray(workers: int | None = None, *, address: str | None = None) -> str:
    """A Ray for the matching tasks, by the one rule of ``mrcnn_batch.ray_session`` (a private
    local Ray sized ``workers`` unless ``address`` or RAY_ADDRESS names a cluster); what was
    done, in words."""
    return ray_session(address, num_cpus=workers)


def _workers(workers: int | None) -> int:
    """Tasks in parallel. Unset: in this process (0) on a single machine — Ray's start-up costs
    more than it saves there — unless Ray is initialised here or RAY_ADDRESS names a cluster,
    whose CPUs are used."""
    if workers is not None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        return workers
    ray = sys.modules.get("ray")
    if (ray is not None and ray.is_initialized()) or ray_address() is not None:
        import ray

        ensure_ray()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return 0


def _no_detections(iou_type: str) -> Detections:
    from mrcnn_batch.evaluate.predictions import empty_detections

    return empty_detections(iou_type)


def run_detections(
    url: str,
    gt: GroundTruth,
    *,
    iou_types: Sequence[str],
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    unknown_categories: str = "error",
    match_by: str = "image_id",
):
    """A run directory's committed detections in this process, one group of shards at a time:
    ``(image_ids, {iou_type: Detections})`` for the images :func:`evaluate_run` evaluates, their
    categories checked against ``gt`` as there; evaluated images of no committed shard (none
    expected) come last, with no detections. For analyses that match in their own way (TIDE, LVIS)."""
    from mrcnn_batch.evaluate.predictions import empty_detections
    from mrcnn_batch.run.layout import open_run

    run = open_run(url, storage_options=storage_options)
    scope = run_scope(run, gt, allow_partial=allow_partial, shards_per_task=None, workers=1, match_by=match_by)
    for shards, img_ids in scope.groups:
        group = ShardGroup(url, shards, dict(storage_options or {}), scope.id_map)
        yield img_ids, {t: _checked(group.load(t), img_ids, gt, url, unknown_categories) for t in iou_types}
    done = np.concatenate([g[1] for g in scope.groups]) if scope.groups else np.zeros(0, np.int64)
    rest = np.setdiff1d(scope.image_ids, done)
    if len(rest):
        yield rest, {t: empty_detections(t) for t in iou_types}
