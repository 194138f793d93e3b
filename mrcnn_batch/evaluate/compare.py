"""Two evaluations compared: B - A for every summary number and per-category AP, with paired
bootstrap confidence intervals over images.

The unit resampled is the image. Each replicate draws the compared images with replacement
(as many draws as images), applies the *same* draw to A and B, and recomputes both exactly as
``COCOeval`` would on that image set, an image drawn twice counting twice (see ``bootstrap``).
The interval of a delta is the percentile interval of its replicates: ``(1 - confidence) / 2``
and ``(1 + confidence) / 2`` quantiles (numpy's linear interpolation). A replicate in which a
number cannot be measured (no ground truth left, pycocotools' -1) does not count for that
number; ``replicates`` says how many did. The draws come from ``seed`` alone, so the output is
reproducible, and a run compared with itself gets exactly ``[0, 0]``.

Only images both sides evaluated are compared; the point estimates (``a``, ``b``, ``delta``)
are the pycocotools numbers on those images.
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mrcnn_batch.evaluate.bootstrap import WeightedAccumulator, resample_counts
from mrcnn_batch.evaluate.errors import EvalInputError
from mrcnn_batch.evaluate.evaluator import COCOEvaluator, EvalResult
from mrcnn_batch.evaluate.groundtruth import GroundTruth
from mrcnn_batch.evaluate.match import ground_truth_counts
from mrcnn_batch.evaluate.params import EvalParams

log = logging.getLogger(__name__)

FORMAT = "mrcnn_batch.compare/1"
DEFAULT_REPLICATES = 1000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0


@dataclass(frozen=True)
class BootstrapConfig:
    """How the intervals are drawn."""

    replicates: int = DEFAULT_REPLICATES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if not isinstance(self.replicates, (int, np.integer)) or self.replicates < 1:
            raise EvalInputError(f"bootstrap replicates must be a whole number >= 1, got {self.replicates!r}")
        if not (isinstance(self.confidence, (int, float)) and 0 < self.confidence < 1):
            raise EvalInputError(f"confidence must be between 0 and 1 (exclusive), got {self.confidence!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise EvalInputError(f"seed must be a whole number >= 0, got {self.seed!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"replicates": self.replicates, "confidence": self.confidence, "seed": self.seed,
                "resampled": "images, with replacement, the same draw for A and B",
                "interval": "percentile (numpy quantile, linear)"}


@dataclass(frozen=True)
class Delta:
    """One number of A and B, ``delta = b - a`` and its interval (None: nothing to measure)."""

    name: str  # "AP", "AR100", ... or the category's name
    a: float | None
    b: float | None
    delta: float | None
    low: float | None
    high: float | None
    replicates: int  # replicates in which A and B could both be measured
    category_id: int | None = None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, Any]:
        key = {"category_id": self.category_id, "category": self.name} if self.category_id is not None else {"metric": self.name}
        return {**key, "a": self.a, "b": self.b, "delta": self.delta, "low": self.low, "high": self.high,
                "excludes_zero": self.excludes_zero, "replicates": self.replicates}


@dataclass(frozen=True, eq=False)
class TypeComparison:
    """The comparison of one IoU type."""

    iou_type: str
    metrics: tuple[Delta, ...]  # pycocotools' stats, in its order
    categories: tuple[Delta, ...]  # AP per category (area all, largest maxDet)
    result_a: EvalResult  # A and B evaluated on the compared images
    result_b: EvalResult


@dataclass(frozen=True, eq=False)
class Comparison:
    """``compare_*``'s answer: per IoU type, B - A with intervals."""

    iou_types: dict[str, TypeComparison]
    bootstrap: BootstrapConfig
    num_images: int  # images compared: evaluated by both
    num_gt_images: int
    seconds: dict[str, float] = field(default_factory=dict)  # "bootstrap" (matching is the caller's)

    @property
    def partial(self) -> bool:
        return self.num_images < self.num_gt_images


def compare_evaluators(a: COCOEvaluator, b: COCOEvaluator, *, bootstrap: BootstrapConfig = BootstrapConfig()) -> Comparison:
    """Compare two evaluators that processed (some of) the same images of the same ground truth,
    with the same IoU types and parameters; neither is changed."""
    if a.gt is not b.gt:
        raise ValueError("the two evaluators must share one GroundTruth")
    if a.iou_types != b.iou_types or a.setup.params != b.setup.params:
        raise ValueError(f"the two evaluators evaluate different things: {a.iou_types} and {b.iou_types}")
    gt, types = a.gt, a.iou_types
    ids_a, ids_b = a.matches(types[0]).image_ids, b.matches(types[0]).image_ids
    common = np.intersect1d(ids_a, ids_b)
    if len(common) == 0:
        raise EvalInputError(
            f"A and B have no evaluated image in common (A: {len(ids_a)} images, e.g. {ids_a[:3].tolist()}; "
            f"B: {len(ids_b)}, e.g. {ids_b[:3].tolist()})"
        )
    if len(common) < max(len(ids_a), len(ids_b)):
        log.warning("comparing the %d images both evaluated (A: %d, B: %d)", len(common), len(ids_a), len(ids_b))
    t0 = time.perf_counter()
    a, b = a.subset(common), b.subset(common)
    results = [ev.evaluate(allow_partial=True) for ev in (a, b)]
    out = {}
    for t in types:
        params, cats = a.setup.params[t], a.setup.category_ids[t]
        counts = ground_truth_counts(gt, params=params, category_ids=cats, image_ids=common)
        engines = [WeightedAccumulator(ev.matches(t), counts, params=params, category_ids=cats, image_ids=common,
                                       summary_only=True)
                   for ev in (a, b)]
        out[t] = _compare_type(t, [r[t] for r in results], engines, bootstrap)
    seconds = {"bootstrap": round(time.perf_counter() - t0, 3)}
    return Comparison(out, bootstrap, len(common), len(gt.image_ids), seconds)


def compare_predictions(
    gt: GroundTruth,
    predictions_a: Any,
    predictions_b: Any,
    *,
    iou_types: Sequence[str] = ("bbox",),
    bootstrap: BootstrapConfig = BootstrapConfig(),
    params: Mapping[str, EvalParams] | None = None,
    kpt_sigmas: Sequence[float] | None = None,
    unknown_categories: str = "error",
) -> Comparison:
    """Compare two sets of predictions on every image of ``gt``: each COCO result dicts or
    :class:`~mrcnn_batch.evaluate.predictions.Detections` by IoU type, as
    :meth:`COCOEvaluator.process` takes them."""
    evs = []
    for preds in (predictions_a, predictions_b):
        ev = COCOEvaluator(gt, iou_types=iou_types, params=params, kpt_sigmas=kpt_sigmas,
                           unknown_categories=unknown_categories)
        ev.process(preds, image_ids=gt.image_ids)
        evs.append(ev)
    return compare_evaluators(*evs, bootstrap=bootstrap)


def compare_runs(
    url_a: str,
    url_b: str,
    gt: GroundTruth,
    *,
    iou_types: Sequence[str],
    bootstrap: BootstrapConfig = BootstrapConfig(),
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    kpt_sigmas: Sequence[float] | None = None,
    unknown_categories: str = "error",
    workers: int | None = None,
    match_by: str = "image_id",
    params: Mapping[str, EvalParams] | None = None,
) -> Comparison:
    """Compare two run directories on the images both evaluated (incomplete runs are refused
    unless ``allow_partial``); matching as :func:`~mrcnn_batch.evaluate.distributed.evaluate_run`."""
    from mrcnn_batch.evaluate.distributed import match_run

    t0 = time.perf_counter()
    evs = [
        match_run(url, gt, iou_types=iou_types, storage_options=storage_options, allow_partial=allow_partial,
                  kpt_sigmas=kpt_sigmas, unknown_categories=unknown_categories, workers=workers,
                  match_by=match_by, params=params)[0]
        for url in (url_a, url_b)
    ]
    matched = time.perf_counter() - t0
    out = compare_evaluators(*evs, bootstrap=bootstrap)
    return replace(out, seconds={"match": round(matched, 3), **out.seconds})


def _compare_type(
    iou_type: str, results: list[EvalResult], engines: list[WeightedAccumulator], cfg: BootstrapConfig,
) -> TypeComparison:
    ra, rb = results
    n_stats, n_cats = len(ra.stats), len(ra.categories)
    d_stats = np.empty((cfg.replicates, n_stats))
    d_cats = np.empty((cfg.replicates, n_cats))
    chunk = min(e.batch_size for e in engines)
    row = 0
    for weights in resample_counts(len(engines[0].image_ids), replicates=cfg.replicates, seed=cfg.seed, chunk=chunk):
        sa, sb = (e.replicate_stats(weights) for e in engines)
        both = (sa.stats > -1) & (sb.stats > -1)
        d_stats[row:row + len(weights)] = np.where(both, sb.stats - sa.stats, np.nan)
        d_cats[row:row + len(weights)] = sb.category_ap - sa.category_ap  # NaN where either is
        row += len(weights)
    metrics = tuple(
        _delta(name, _num(ra.stats[i], -1), _num(rb.stats[i], -1), d_stats[:, i], cfg)
        for i, name in enumerate(ra.stat_names)
    )
    cats = tuple(
        _delta(c.name, _num(ra.per_category["AP"][k]), _num(rb.per_category["AP"][k]), d_cats[:, k], cfg, category_id=c.id)
        for k, c in enumerate(ra.categories)
    )
    return TypeComparison(iou_type, metrics, cats, ra, rb)


def _delta(name: str, a: float | None, b: float | None, reps: np.ndarray, cfg: BootstrapConfig,
           category_id: int | None = None) -> Delta:
    reps = reps[np.isfinite(reps)]
    if a is None or b is None or len(reps) == 0:
        return Delta(name, a, b, None if a is None or b is None else b - a, None, None, len(reps), category_id)
    tail = (1 - cfg.confidence) / 2
    low, high = np.quantile(reps, [tail, 1 - tail])
    return Delta(name, a, b, b - a, float(low), float(high), len(reps), category_id)


def _num(v: float, missing: float | None = None) -> float | None:
    v = float(v)
    return None if math.isnan(v) or v == missing else v


# --------------------------------------------------------------------------- outputs


def comparison_document(cmp: Comparison, *, context: dict[str, Any]) -> dict[str, Any]:
    """``compare.json``: the inputs, the bootstrap settings and every row, per IoU type."""
    return {
        "format": FORMAT,
        **context,
        "bootstrap": cmp.bootstrap.as_dict(),
        "num_images": cmp.num_images,
        "num_gt_images": cmp.num_gt_images,
        "partial": cmp.partial,
        "seconds": cmp.seconds,
        "iou_types": {
            t: {"metrics": [d.as_dict() for d in c.metrics], "per_category": [d.as_dict() for d in c.categories]}
            for t, c in cmp.iou_types.items()
        },
    }


def comparison_table(cmp: Comparison):
    """``compare.parquet``: one row per IoU type x (summary number or category)."""
    import pyarrow as pa

    rows = []
    for t, c in cmp.iou_types.items():
        for scope, deltas in (("overall", c.metrics), ("category", c.categories)):
            for d in deltas:
                rows.append({"iou_type": t, "scope": scope, "category_id": d.category_id,
                             "category": d.name if d.category_id is not None else None,
                             "metric": "AP" if d.category_id is not None else d.name,
                             "a": d.a, "b": d.b, "delta": d.delta, "low": d.low, "high": d.high,
                             "excludes_zero": d.excludes_zero, "replicates": d.replicates,
                             "confidence": cmp.bootstrap.confidence, "num_images": cmp.num_images})
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("iou_type", pa.string()), ("scope", pa.string()), ("category_id", pa.int64()), ("category", pa.string()),
        ("metric", pa.string()), ("a", pa.float64()), ("b", pa.float64()), ("delta", pa.float64()),
        ("low", pa.float64()), ("high", pa.float64()), ("excludes_zero", pa.bool_()), ("replicates", pa.int64()),
        ("confidence", pa.float64()), ("num_images", pa.int64()),
    ]))


def write_comparison(cmp: Comparison, out_dir: str, *, context: dict[str, Any],
                     storage_options: dict[str, Any] | None = None) -> list[str]:
    """``compare.json`` and ``compare.parquet`` under ``out_dir`` (any fsspec URL); the URLs written."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(out_dir, **(storage_options or {}))
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(comparison_table(cmp), buf)
    written = []
    for name, data in (("compare.json", json.dumps(comparison_document(cmp, context=context), indent=2,
                                                   allow_nan=False).encode()),
                       ("compare.parquet", buf.getvalue())):
        path = posixpath.join(root, name)
        with fs.open(path, "wb") as f:
            f.write(data)
        written.append(fs.unstrip_protocol(path))
    return written


def comparison_lines(c: TypeComparison, cfg: BootstrapConfig, *, categories: bool = True) -> list[str]:
    """The printed table of one IoU type (returned, never printed)."""
    pct = f"{cfg.confidence * 100:g}%"
    head = f"{'':<12} {'A':>7} {'B':>7} {'B - A':>8}   {pct + ' interval':<20} excludes 0"
    out = [head] + [_line(d.name, d) for d in c.metrics]
    if categories and c.categories:
        n = sum(d.excludes_zero for d in c.categories)
        out += ["", f"AP per category ({len(c.categories)}; {n} with an interval excluding 0):", head]
        out += [_line(d.name, d) for d in c.categories]
    return out


def _line(name: str, d: Delta) -> str:
    interval = "-" if d.low is None else f"[{d.low:+.4f}, {d.high:+.4f}]"
    flag = "" if d.low is None else ("yes" if d.excludes_zero else "no")
    name = name if len(name) <= 12 else name[:11] + "…"
    return f"{name:<12} {_fmt(d.a, '7.4f'):>7} {_fmt(d.b, '7.4f'):>7} {_fmt(d.delta, '+8.4f'):>8}   {interval:<20} {flag}"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)
