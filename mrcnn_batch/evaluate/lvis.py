"""LVIS federated evaluation (Gupta et al., "LVIS: A Dataset for Large Vocabulary Instance
Segmentation", CVPR 2019), with the numbers of the ``lvis`` package 0.5.3 (``LVISEval``).

LVIS is annotated *federated*: an image is checked for some categories only. Each image lists
``neg_category_ids`` (verified absent) and ``not_exhaustive_category_ids`` (present, but not
every instance annotated); its annotations name its positive categories. What differs from COCO:

* a detection counts only on an image whose positive or negative categories hold its category;
  the others are left out (nobody knows whether they are right);
* an unmatched detection of a not-exhaustive category is ignored, not a false positive;
* an image keeps its 300 best detections over all categories (ties: the first in input order),
  cut before anything else is left out; no cut per category;
* no crowds (``iscrowd`` is not read); annotations and detections whose area is not in (0, inf)
  are left out (also from the positive categories);
* categories are grouped by ``frequency`` (``r``are, ``c``ommon, ``f``requent) into APr, APc,
  APf; AR is AR@300 (with its small, medium and large ranges).

The rest is COCO's: a detection's ``area`` as ``predictions`` derives it, the greedy matching of
``match``, the accumulation of ``accumulate`` (with one maxDet, 300: LVIS's arrays are COCO's
without the maxDets axis) and a mean over the settings that have ground truth (-1 if none).
The summary and the precision array equal ``LVISEval``'s bit for bit on the fixtures of
``tests/test_eval_lvis.py``. An annotation's ``ignore`` flag (absent from LVIS's files) is
refused rather than given lvis's meaning, which no other part of this evaluator has.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mrcnn_batch.evaluate.accumulate import accumulate, merge
from mrcnn_batch.evaluate.errors import EvalInputError
from mrcnn_batch.evaluate.groundtruth import (
    Category,
    GroundTruth,
    ground_truth_from_dict,
)
from mrcnn_batch.evaluate.jsonio import is_int, is_number, read_json
from mrcnn_batch.evaluate.match import (
    CODE_FP,
    CODE_IGNORED,
    MatchResult,
    match_images,
    pack_codes,
)
from mrcnn_batch.evaluate.params import EvalParams
from mrcnn_batch.evaluate.predictions import Detections

log = logging.getLogger(__name__)

REFERENCE = "lvis 0.5.3"
LVIS_IOU_TYPES = ("bbox", "segm")
MAX_DETS = 300  # per image, over all categories (LVISResults' max_dets)
FREQUENCIES = ("r", "c", "f")  # rare (< 10 training images), common (< 100), frequent
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
              f"AR@{MAX_DETS}", f"ARs@{MAX_DETS}", f"ARm@{MAX_DETS}", f"ARl@{MAX_DETS}")
# (kind, IoU threshold or None for all, area label, frequency or None) of each stat
STAT_SETTINGS = (
    ("ap", None, "all", None), ("ap", 0.5, "all", None), ("ap", 0.75, "all", None),
    ("ap", None, "small", None), ("ap", None, "medium", None), ("ap", None, "large", None),
    ("ap", None, "all", "r"), ("ap", None, "all", "c"), ("ap", None, "all", "f"),
    ("ar", None, "all", None), ("ar", None, "small", None), ("ar", None, "medium", None), ("ar", None, "large", None),
)


def lvis_params(iou_type: str) -> EvalParams:
    """COCO's thresholds and area ranges, one maxDet of 300."""
    if iou_type not in LVIS_IOU_TYPES:
        raise EvalInputError(f"LVIS evaluates {' and '.join(LVIS_IOU_TYPES)}, not {iou_type}")
    return EvalParams(iou_type=iou_type, max_dets=(MAX_DETS,))


@dataclass(frozen=True, eq=False)
class LVISGroundTruth:
    """LVIS ground truth: the COCO columns plus what federation needs. A federation *key* is
    ``image index * K + category index`` into ``gt.image_ids`` and ``gt.category_ids``."""

    gt: GroundTruth  # annotations with area in (0, inf), no crowds
    frequency: tuple[str, ...]  # aligned with gt.categories
    evaluated_keys: np.ndarray  # sorted: (image, category) with annotations or verified absent
    not_exhaustive_keys: np.ndarray  # sorted

    def keys(self, image_id: np.ndarray, category_id: np.ndarray) -> np.ndarray:
        cats = self.gt.category_ids
        return np.searchsorted(self.gt.image_ids, image_id).astype(np.int64) * len(cats) + np.searchsorted(cats, category_id)


def load_lvis_ground_truth(
    url: str, *, iou_types: Sequence[str] = ("bbox",), storage_options: dict[str, Any] | None = None
) -> LVISGroundTruth:
    """Load LVIS ground truth (COCO's format plus the federation fields) from any fsspec URL."""
    doc = read_json(url, storage_options=storage_options, what="ground truth")
    return lvis_ground_truth_from_dict(doc, iou_types=iou_types, source=url)


def lvis_ground_truth_from_dict(doc: Any, *, iou_types: Sequence[str] = ("bbox",), source: str = "<dict>") -> LVISGroundTruth:
    for t in iou_types:
        lvis_params(t)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise EvalInputError(f"ground truth {source}: expected an object with 'images', 'annotations' and 'categories' lists")
    anns = []
    for a in doc["annotations"]:
        if isinstance(a, dict) and a.get("ignore"):
            raise EvalInputError(f"ground truth {source}: annotation {a.get('id')!r} has 'ignore' set; LVIS has no ignored annotations")
        if isinstance(a, dict) and is_number(a.get("area")) and not 0 < a["area"] < math.inf:
            continue  # as LVISEval: an annotation without area is no annotation
        anns.append({**a, "iscrowd": 0} if isinstance(a, dict) else a)
    dropped = len(doc["annotations"]) - len(anns)
    if dropped:
        log.warning("ground truth %s: %d annotations with an area outside (0, inf) left out, as LVISEval does", source, dropped)
    gt = ground_truth_from_dict({**doc, "annotations": anns}, iou_types=tuple(iou_types), source=source)

    freq = {}
    for c in doc["categories"]:
        f = c.get("frequency")
        if f not in FREQUENCIES:
            raise EvalInputError(f"ground truth {source}: category {c.get('id')!r}: 'frequency' must be one of "
                                 f"{', '.join(FREQUENCIES)}, found {f!r} (is this LVIS ground truth?)")
        freq[c["id"]] = f
    lists: dict[str, tuple[list[int], list[int]]] = {}
    for field in ("neg_category_ids", "not_exhaustive_category_ids"):
        img, cat = [], []
        for im in doc["images"]:
            ids = im.get(field)
            if not isinstance(ids, list) or not all(is_int(i) for i in ids):
                raise EvalInputError(f"ground truth {source}: image {im.get('id')!r}: {field!r} missing or not a "
                                     "list of category ids (is this LVIS ground truth?)")
            img.extend([im["id"]] * len(ids))
            cat.extend(ids)
        lists[field] = (img, cat)
    probe = LVISGroundTruth(gt, tuple(freq[c.id] for c in gt.categories), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def keys(img: list[int], cat: list[int]) -> np.ndarray:
        img_a, cat_a = np.asarray(img, np.int64), np.asarray(cat, np.int64)
        known = np.isin(cat_a, gt.category_ids)  # an unknown category has no detections to judge
        return np.unique(probe.keys(img_a[known], cat_a[known]))

    positive = np.unique(probe.keys(gt.ann_image_id, gt.ann_category_id))
    return replace(probe, evaluated_keys=np.union1d(positive, keys(*lists["neg_category_ids"])),
                   not_exhaustive_keys=keys(*lists["not_exhaustive_category_ids"]))


def federated_detections(lgt: LVISGroundTruth, dets: Detections) -> Detections:
    """The detections LVISEval scores, in input order: each image's 300 best (the first among
    equal scores), then only those with an area in (0, inf) on an evaluated (image, category)."""
    order = np.lexsort((-dets.score, dets.image_id))
    starts = np.flatnonzero(np.r_[True, dets.image_id[order][1:] != dets.image_id[order][:-1]]) if len(order) else order
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rows = np.sort(order[rank < MAX_DETS])
    area = dets.area[rows]
    rows = rows[(area > 0) & (area < math.inf)]
    rows = rows[np.isin(lgt.keys(dets.image_id[rows], dets.category_id[rows]), lgt.evaluated_keys)]
    return dets.take(rows)


def lvis_match(lgt: LVISGroundTruth, dets: Detections, *, image_ids: np.ndarray | None = None) -> MatchResult:
    """COCO's matching of the federated detections; an unmatched detection of a not-exhaustive
    (image, category) is ignored."""
    m = match_images(lgt.gt, federated_detections(lgt, dets), params=lvis_params(dets.iou_type),
                     category_ids=lgt.gt.category_ids, image_ids=image_ids)
    ne = np.isin(lgt.keys(m.image_id, lgt.gt.category_ids[m.category_index]), lgt.not_exhaustive_keys)
    outcomes = m.outcomes()
    return replace(m, codes=pack_codes(np.where(ne[:, None, None] & (outcomes == CODE_FP), CODE_IGNORED, outcomes).astype(np.uint8)))


@dataclass(frozen=True, eq=False)
class LVISResult:
    """LVISEval's ``results`` (``stats`` in ``STAT_NAMES`` order) and ``eval`` arrays."""

    iou_type: str
    params: EvalParams
    categories: tuple[Category, ...]
    frequency: tuple[str, ...]  # per category
    stats: np.ndarray  # (13,)
    precision: np.ndarray  # (T, R, K, A), -1 where a category has no ground truth
    recall: np.ndarray  # (T, K, A)
    num_images: int
    num_gt_images: int
    num_detections: int  # after the 300 cut and the federated filter

    @property
    def partial(self) -> bool:
        return self.num_images < self.num_gt_images

    @property
    def metrics(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(STAT_NAMES, self.stats)}

    def category_ap(self) -> np.ndarray:
        """AP per category (area all), NaN where it has no ground truth."""
        p = self.precision[:, :, :, 0]
        valid = p > -1
        with np.errstate(invalid="ignore"):
            return np.where(valid.any(axis=(0, 1)), np.where(valid, p, 0).sum(axis=(0, 1)) / valid.sum(axis=(0, 1)), np.nan)

    @property
    def lines(self) -> list[str]:
        """The summary in ``LVISEval.print_results``' layout."""
        p, out = self.params, []
        for (kind, thr, area, freq), v in zip(STAT_SETTINGS, self.stats):
            title = "Average Precision  (AP)" if kind == "ap" else "Average Recall     (AR)"
            iou = f"{thr:0.2f}" if thr is not None else f"{p.iou_thrs[0]:0.2f}:{p.iou_thrs[-1]:0.2f}"
            out.append(f" {title} @[ IoU={iou:<9} | area={area[0] if area != 'all' else 'all':>6s} | "
                       f"maxDets={MAX_DETS:>3d} catIds={freq or 'all':>3s}] = {v:0.3f}")
        return out

    def as_dict(self) -> dict[str, Any]:
        ap = self.category_ap()
        return {
            "reference": REFERENCE,
            "stats": [float(x) for x in self.stats],
            "stat_names": list(STAT_NAMES),
            "metrics": self.metrics,
            "summary": self.lines,
            "params": self.params.as_dict(),
            "num_images": self.num_images,
            "partial": self.partial,
            "num_detections": self.num_detections,
            "categories_per_frequency": {f: self.frequency.count(f) for f in FREQUENCIES},
            "per_category": [{"category_id": c.id, "category": c.name, "frequency": f,
                              "AP": None if math.isnan(a) else float(a)}
                             for c, f, a in zip(self.categories, self.frequency, ap)],
        }


def lvis_result(lgt: LVISGroundTruth, matched: MatchResult) -> LVISResult:
    """Accumulate and summarise as ``LVISEval.accumulate`` and ``summarize`` do."""
    params = lvis_params(matched.iou_type)
    acc = accumulate(matched, params=params, category_ids=lgt.gt.category_ids)
    precision = np.ascontiguousarray(acc.precision[..., 0])
    recall = np.ascontiguousarray(acc.recall[..., 0])
    thrs = params.iou_thrs_array()
    stats = []
    for kind, thr, area, freq in STAT_SETTINGS:
        s = precision if kind == "ap" else recall
        if thr is not None:
            s = s[np.where(thr == thrs)[0]]
        a = [params.area_labels.index(area)]
        if kind == "ap":
            cats = [k for k, f in enumerate(lgt.frequency) if f == freq] if freq else slice(None)
            s = s[:, :, cats, a] if freq else s[:, :, :, a]
        else:
            s = s[:, :, a]
        stats.append(float(np.mean(s[s > -1])) if (s > -1).any() else -1.0)
    return LVISResult(matched.iou_type, params, lgt.gt.categories, lgt.frequency, np.array(stats), precision, recall,
                      num_images=len(matched.image_ids), num_gt_images=len(lgt.gt.image_ids),
                      num_detections=len(matched))


def lvis_evaluate(lgt: LVISGroundTruth, dets: Detections, *, image_ids: np.ndarray | None = None) -> LVISResult:
    """LVIS's evaluation of ``dets`` (bbox or segm; a results file's or a run's) on ``image_ids``
    (default: every ground-truth image)."""
    return lvis_result(lgt, lvis_match(lgt, dets, image_ids=image_ids))


def lvis_run(
    url: str,
    lgt: LVISGroundTruth,
    *,
    iou_types: Sequence[str],
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    unknown_categories: str = "error",
    match_by: str = "image_id",
) -> dict[str, LVISResult]:
    """LVIS's evaluation of a run directory's committed tables, one group of shards at a time
    (the images ``evaluate_run`` evaluates; ``allow_partial``, ``match_by`` as there)."""
    from mrcnn_batch.evaluate.distributed import run_detections

    for t in iou_types:
        lvis_params(t)
    parts: dict[str, list[MatchResult]] = {t: [] for t in iou_types}
    for img_ids, dets in run_detections(url, lgt.gt, iou_types=iou_types, storage_options=storage_options,
                                        allow_partial=allow_partial, unknown_categories=unknown_categories,
                                        match_by=match_by):
        for t in iou_types:
            parts[t].append(lvis_match(lgt, dets[t], image_ids=img_ids))
    out = {}
    for t in iou_types:
        out[t] = lvis_result(lgt, merge(parts[t]))
    return out
