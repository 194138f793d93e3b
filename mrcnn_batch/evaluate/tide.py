"""TIDE error analysis (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection
Errors", ECCV 2020), with the numbers of its package ``tidecv`` 1.0.1.

TIDE says *why* AP is lost: every false positive and every missed object gets one error type,
and the dAP of a type is how much AP rises when only the errors of that type are fixed.

**TIDE's AP is not COCO's.** tidecv computes its own AP: per category, pycocotools' 101-point
interpolated precision at one IoU threshold (``pos_threshold``, 0.5), averaged over categories,
on a 0-100 scale. It differs from COCO's AP50 (and more from AP@[.5:.95]) in five ways, all
kept here: (1) a detection takes the unmatched object of its category with the highest IoU, the
*first* in file order among equals (pycocotools: the last); (2) a crowd only makes a detection
that matched nothing *ignored*, and only at IoU > 0.5 with a crowd of its category (crowds are
never matched); (3) an image keeps its ``max_dets`` (100) best detections over all categories
(COCO: per category); (4) no area ranges; (5) a category with detections but no object counts,
with AP 0 (COCO leaves it out). On cocoapi's 100-image fixture: bbox COCO AP50 69.7, TIDE 64.2.

**Matching**, per image: detections by descending score (ties in input order: a results file's
order, a run's instance order), the first ``max_dets`` kept; each in turn takes the object of
its category with the highest IoU not yet taken if that IoU is >= ``pos_threshold``.

**Errors** of a detection that matched nothing (also of one ignored on a crowd, as tidecv
does), the first that applies, with ``IoU_c`` the highest IoU with an object of its own category
(taken or not), ``IoU_o`` with an object of another category:

1. the image has no object: ``Bkg``;
2. ``background_threshold <= IoU_c <= pos_threshold``: ``Loc`` (localisation), on that object;
3. ``IoU_o >= pos_threshold``: ``Cls`` (classification), on that object;
4. IoU >= ``pos_threshold`` with a *taken* object of its category: ``Dupe`` (duplicate);
5. IoU with every object <= ``background_threshold``: ``Bkg`` (background);
6. otherwise ``Both`` (wrong category and poorly localised).

An object no detection took is ``Miss``, unless some ``Cls`` or ``Loc`` error lies on it.

**Fixing** one type (the others left as they are) and recomputing AP: a ``Cls``/``Loc`` error
on an object that is still free becomes a true positive (of the object's category for ``Cls``)
if it is the highest-scoring such error on that object (the first among equals), and is removed
otherwise or when the object was taken; ``Dupe``, ``Bkg``, ``Both`` errors are removed; a
``Miss`` removes its object from the count. ``dAP = max(AP_fixed - AP, 0)``. The special errors:
``FalsePos``, every false positive scored below every true positive; ``FalseNeg``, every object
no detection took removed from the count (not clamped at 0).

**Exactness.** tidecv's AP depends on the order of equal scores and sums in floating point;
both are reproduced: a category's points are ordered by descending score, then (fixed runs)
errors before the true positives, then by the image's position in the ground truth's ``images``
list and the detection's rank; categories are summed in the order tidecv first meets them.
IoUs are pycocotools' (``similarity``); thresholds are compared as tidecv compares them. The
numbers equal tidecv's bit for bit on cocoapi's fixtures and randomised sets
(``tests/test_eval_tide.py``).

**Confusion matrix** (from the same matching), rows the object's category then ``background``,
columns the detection's category then ``missed``: ``[g, p]`` counts the detections of ``p`` that
are true positives on an object of ``g`` (``g == p``) or ``Cls`` errors on it (``g != p``);
``[background, p]`` the ``Bkg`` errors; ``[g, missed]`` the ``Miss`` objects. ``Loc``, ``Dupe``
and ``Both`` are not confusions between categories: they are counted per category beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrcnn_batch.evaluate.accumulate import needed_true_positives, suffix_max
from mrcnn_batch.evaluate.errors import EvalInputError
from mrcnn_batch.evaluate.groundtruth import Category, GroundTruth
from mrcnn_batch.evaluate.match import gt_rles
from mrcnn_batch.evaluate.predictions import Detections
from mrcnn_batch.evaluate.similarity import box_iou, mask_iou

TIDE_IOU_TYPES = ("bbox", "segm")
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")  # tidecv's order
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
REFERENCE = "tidecv 1.0.1"
NONE, CLS, LOC, BOTH, DUPE, BKG = 0, 1, 2, 3, 4, 5  # a detection's error: 1 + index in ERROR_TYPES
FP, TP, IGNORED = 0, 1, -1  # a detection's outcome (ignored: on a crowd, left out of AP)
_RECALLS = np.arange(101) / 100  # tidecv's x / 100 for x in 0..100


@dataclass(frozen=True)
class TideParams:
    """TIDE's thresholds (tidecv's defaults) and detections kept per image."""

    pos_threshold: float = 0.5  # foreground: a match, and the IoU of Cls/Dupe
    background_threshold: float = 0.1  # below it a detection is background; Loc from it up
    max_dets: int = 100  # per image, over all categories

    def __post_init__(self) -> None:
        if not (0 <= self.background_threshold <= self.pos_threshold <= 1):
            raise EvalInputError(
                "TIDE needs 0 <= background_threshold <= pos_threshold <= 1, got "
                f"{self.background_threshold} and {self.pos_threshold}"
            )
        if not isinstance(self.max_dets, (int, np.integer)) or self.max_dets < 1:
            raise EvalInputError(f"TIDE max_dets must be a whole number >= 1, got {self.max_dets!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"pos_threshold": self.pos_threshold, "background_threshold": self.background_threshold,
                "max_dets": self.max_dets}


@dataclass(frozen=True, eq=False)
class TideMatches:
    """TIDE's outcome on a set of images: one row per kept detection, one per object (non-crowd
    ground truth). Images are independent: batches of disjoint images concatenate."""

    iou_type: str
    image_ids: np.ndarray  # (I,) images analysed
    image_id: np.ndarray  # (N,) int64
    rank: np.ndarray  # (N,) int32: position in its image after the score sort
    category_index: np.ndarray  # (N,) int32 into the ground truth's categories
    score: np.ndarray  # (N,) float64
    outcome: np.ndarray  # (N,) int8: TP, FP or IGNORED
    error: np.ndarray  # (N,) uint8: NONE (true positives) or CLS ... BKG
    fixed_category: np.ndarray  # (N,) int32: Cls/Loc: the true positive it becomes when fixed; -1: removed
    object_category: np.ndarray  # (N,) int32: category of the object a TP or Cls error lies on; -1
    obj_row: np.ndarray  # (M,) int64: ground-truth row
    obj_category: np.ndarray  # (M,) int32
    obj_matched: np.ndarray  # (M,) bool
    obj_usable: np.ndarray  # (M,) bool: a Cls or Loc error lies on it while it is free (not Miss)

    @property
    def miss(self) -> np.ndarray:
        return ~self.obj_matched & ~self.obj_usable

    @staticmethod
    def concat(parts: Sequence[TideMatches]) -> TideMatches:
        if not parts:
            raise EvalInputError("no images were analysed")
        names = [f for f in TideMatches.__dataclass_fields__ if f != "iou_type"]
        return TideMatches(parts[0].iou_type, *(np.concatenate([getattr(p, f) for p in parts]) for f in names))


@dataclass(frozen=True, eq=False)
class TideResult:
    """TIDE's numbers for one IoU type, on tidecv's 0-100 scale."""

    iou_type: str
    params: TideParams
    ap: float  # mean over categories of AP at pos_threshold
    main: dict[str, float]  # dAP per ERROR_TYPES
    special: dict[str, float]  # dAP per SPECIAL_TYPES
    counts: dict[str, int]  # errors per ERROR_TYPES
    categories: tuple[Category, ...]
    category_ap: np.ndarray  # (K,) NaN: no object and no detection of the category
    category_counts: np.ndarray  # (K, 6) errors per category (detection's; Miss: the object's)
    confusion: np.ndarray  # (K + 1, K + 1) see the module's docstring
    num_images: int
    num_detections: int  # kept (max_dets per image)
    num_objects: int

    def as_dict(self) -> dict[str, Any]:
        names = [c.name for c in self.categories]
        per_cat = [
            {"category_id": c.id, "category": c.name, "ap": _num(a),
             "errors": dict(zip(ERROR_TYPES, row.tolist()))}
            for c, a, row in zip(self.categories, self.category_ap, self.category_counts)
        ]
        return {
            "reference": REFERENCE,
            "params": self.params.as_dict(),
            "ap": _num(self.ap),
            "main_errors": {k: _num(v) for k, v in self.main.items()},
            "special_errors": {k: _num(v) for k, v in self.special.items()},
            "counts": self.counts,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "num_objects": self.num_objects,
            "per_category": per_cat,
            "confusion": {"rows": names + ["background"], "columns": names + ["missed"],
                          "category_ids": [c.id for c in self.categories], "counts": self.confusion.tolist()},
        }


def _num(v: float) -> float | None:
    """NaN (nothing to measure: no object and no detection left) as None, for JSON."""
    return None if math.isnan(v) else float(v)


# --------------------------------------------------------------------------- matching and errors


def match_tide(
    gt: GroundTruth,
    dets: Detections,
    *,
    params: TideParams = TideParams(),
    image_ids: np.ndarray | None = None,
) -> TideMatches:
    """TIDE's matching and error of every detection and object of ``image_ids`` (default: all
    of ``gt``'s images), against the whole ``gt`` (not a subset: rows are ``gt``'s)."""
    if dets.iou_type not in TIDE_IOU_TYPES:
        raise EvalInputError(f"TIDE analyses {' and '.join(TIDE_IOU_TYPES)}, not {dets.iou_type!r}")
    image_ids = gt.image_ids if image_ids is None else np.unique(np.asarray(image_ids, np.int64))
    cat_ids = gt.category_ids
    rows = np.flatnonzero(np.isin(dets.image_id, image_ids) & np.isin(dets.category_id, cat_ids))
    img = np.searchsorted(image_ids, dets.image_id[rows])
    order = np.lexsort((rows, -dets.score[rows], img))
    rows, img = rows[order], img[order]
    rank = np.arange(len(rows)) - np.searchsorted(img, img)
    keep = rank < params.max_dets
    rows, img, rank = rows[keep], img[keep], rank[keep]
    n = len(rows)
    cat = np.searchsorted(cat_ids, dets.category_id[rows]).astype(np.int32)
    score = dets.score[rows].astype(np.float64)

    g_rows = np.flatnonzero(np.isin(gt.ann_image_id, image_ids))  # by image, file order within
    g_img = np.searchsorted(image_ids, gt.ann_image_id[g_rows])
    g_cat = np.searchsorted(cat_ids, gt.ann_category_id[g_rows]).astype(np.int32)
    crowd = gt.iscrowd[g_rows] > 0
    matched = np.zeros(len(g_rows), bool)
    usable = np.zeros(len(g_rows), bool)
    outcome = np.full(n, FP, np.int8)
    error = np.full(n, NONE, np.uint8)
    fixed = np.full(n, -1, np.int32)
    on = np.full(n, -1, np.int32)

    d_bounds = np.searchsorted(img, np.arange(len(image_ids) + 1))
    g_bounds = np.searchsorted(g_img, np.arange(len(image_ids) + 1))
    for i in np.flatnonzero(np.diff(d_bounds)):
        d = slice(d_bounds[i], d_bounds[i + 1])
        g = np.arange(g_bounds[i], g_bounds[i + 1])
        objs, regions = g[~crowd[g]], g[crowd[g]]
        iou, crowd_iou = _ious(gt, dets, dets.iou_type, rows[d], g_rows[objs], g_rows[regions])
        out = _assign(iou, crowd_iou, cat[d], g_cat[objs], g_cat[regions], params)
        outcome[d], error[d], fixed[d], on[d] = out[:4]
        matched[objs], usable[objs] = out[4:]

    obj = ~crowd
    return TideMatches(
        iou_type=dets.iou_type, image_ids=image_ids, image_id=image_ids[img], rank=rank.astype(np.int32),
        category_index=cat, score=score, outcome=outcome, error=error, fixed_category=fixed,
        object_category=on, obj_row=g_rows[obj], obj_category=g_cat[obj], obj_matched=matched[obj],
        obj_usable=usable[obj],
    )


def _ious(gt: GroundTruth, dets: Detections, iou_type: str, d_rows: np.ndarray, o_rows: np.ndarray,
          r_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of an image's detections with its objects, and with its crowds (as crowds)."""
    if iou_type == "bbox":
        box = dets.bbox[d_rows]
        return (box_iou(box, gt.bbox[o_rows], np.zeros(len(o_rows), bool)),
                box_iou(box, gt.bbox[r_rows], np.ones(len(r_rows), bool)))
    d_rles = dets.rles(d_rows)
    return (mask_iou(d_rles, gt_rles(gt, o_rows), np.zeros(len(o_rows), bool)),
            mask_iou(d_rles, gt_rles(gt, r_rows), np.ones(len(r_rows), bool)))


def _assign(iou, crowd_iou, d_cat, o_cat, r_cat, params: TideParams) -> tuple[np.ndarray, ...]:
    """One image (detections in rank order): outcome, error, fixed category and the category of
    the object it lies on per detection; matched and usable per object."""
    D, G = iou.shape
    pos, bg = params.pos_threshold, params.background_threshold
    same = d_cat[:, None] == o_cat[None, :]
    cls_iou = iou * same
    match = np.full(D, -1)
    taken = np.zeros(G, bool)
    if G:
        free = cls_iou.copy()
        for k in np.flatnonzero(free.max(axis=1) >= pos):  # taking an object only lowers IoUs
            j = int(np.argmax(free[k]))
            if free[k, j] >= pos:
                match[k], taken[j] = j, True
                free[:, j] = 0
    outcome = np.where(match >= 0, TP, FP).astype(np.int8)
    if crowd_iou.shape[1]:
        on_crowd = ((crowd_iou > pos) & (d_cat[:, None] == r_cat[None, :])).any(axis=1)
        outcome[(match < 0) & on_crowd] = IGNORED
    neg = outcome != TP
    error = np.where(neg, BKG, NONE).astype(np.uint8)
    fixed = np.full(D, -1, np.int32)
    on = np.where(match >= 0, o_cat[np.maximum(match, 0)] if G else -1, -1).astype(np.int32)
    usable = np.zeros(G, bool)
    if G == 0:
        return outcome, error, fixed, on, taken, usable
    ar = np.arange(D)
    loc_j = cls_iou.argmax(axis=1)
    loc_v = cls_iou[ar, loc_j]
    other = iou * ~same
    cls_j = other.argmax(axis=1)
    cls_v = other[ar, cls_j]
    dupe_v = (cls_iou * taken).max(axis=1)
    is_loc = neg & (bg <= loc_v) & (loc_v <= pos)
    is_cls = neg & ~is_loc & (cls_v >= pos)
    is_dupe = neg & ~is_loc & ~is_cls & (dupe_v >= pos)
    is_bkg = neg & ~is_loc & ~is_cls & ~is_dupe & (iou.max(axis=1) <= bg)
    error = np.select([is_loc, is_cls, is_dupe, is_bkg, neg], [LOC, CLS, DUPE, BKG, BOTH], NONE).astype(np.uint8)
    target = np.where(is_loc, loc_j, np.where(is_cls, cls_j, -1))
    on[is_cls] = o_cat[cls_j[is_cls]]
    # errors on a free object: it is not Miss; the first of them (rank order: the highest score,
    # the first among equals) is the one fixed
    live = np.flatnonzero((target >= 0) & ~taken[np.maximum(target, 0)])
    usable[target[live]] = True
    _, first = np.unique(target[live], return_index=True)
    best = live[first]
    fixed[best] = np.where(is_cls[best], o_cat[target[best]], d_cat[best])
    return outcome, error, fixed, on, taken, usable


# --------------------------------------------------------------------------- AP, fixed and not


def tide_result(gt: GroundTruth, m: TideMatches, *, params: TideParams = TideParams()) -> TideResult:
    """The AP, the dAP of every error type, the counts and the confusion matrix. Equal scores
    are ordered by the image's place in the file (``gt.file_index``; a subset of the ground
    truth, which has none, orders by image id)."""
    K = len(gt.categories)
    index = gt.file_index if gt.file_index is not None else np.arange(len(gt.image_ids))
    img_pos = index[np.searchsorted(gt.image_ids, m.image_id)]
    obj_pos = index[np.searchsorted(gt.image_ids, gt.ann_image_id[m.obj_row])]
    n = len(m.score)
    seq = np.empty(n, np.int64)
    seq[np.lexsort((m.rank, img_pos))] = np.arange(n)  # tidecv's push order: image, then rank
    is_tp, is_fp = m.outcome == TP, m.outcome == FP
    cat, n_gt = m.category_index, np.bincount(m.obj_category, minlength=K)

    # the order tidecv first meets categories in (its sum over them): per image, objects first
    live = m.outcome != IGNORED
    ev_img = np.r_[obj_pos, img_pos[live]]
    ev_kind = np.r_[np.zeros(len(m.obj_row), np.int8), np.ones(int(live.sum()), np.int8)]  # objects first
    ev_sub = np.r_[m.obj_row, m.rank[live]]
    ev_cat = np.r_[m.obj_category, cat[live]][np.lexsort((ev_sub, ev_kind, ev_img))]
    seen, first = np.unique(ev_cat, return_index=True)
    met = np.full(K, np.iinfo(np.int64).max // 4)
    met[seen] = first

    base_aps = _class_aps(cat[live], m.score[live], is_tp[live], seq[live], n_gt, K)
    ap = _mean(base_aps, met)

    def fixed_run(err_rows, err_cat, err_tp, gt_count, err_score=None, tp_score=None) -> float:
        tp_rows = np.flatnonzero(is_tp)
        pts_cat = np.r_[err_cat, cat[tp_rows]]
        pts_score = np.r_[m.score[err_rows] if err_score is None else err_score,
                          m.score[tp_rows] if tp_score is None else tp_score]
        pts_tp = np.r_[err_tp, np.ones(len(tp_rows), bool)]
        key = np.r_[seq[err_rows], n + seq[tp_rows]]  # errors first, then true positives
        order_met = met + n  # categories the errors meet first come first
        np.minimum.at(order_met, err_cat, seq[err_rows])
        return _mean(_class_aps(pts_cat, pts_score, pts_tp, key, gt_count, K), order_met)

    fp_rows = np.flatnonzero(is_fp)
    main = {}
    for code, name in enumerate(ERROR_TYPES[:-1], start=1):
        hit = m.error == code
        gain = hit & (m.fixed_category >= 0)
        rows = np.flatnonzero((is_fp & ~hit) | gain)
        main[name] = float(max(fixed_run(rows, np.where(gain, m.fixed_category, cat)[rows], gain[rows], n_gt) - ap, 0))
    miss = np.bincount(m.obj_category[m.miss], minlength=K)
    main["Miss"] = float(max(fixed_run(fp_rows, cat[fp_rows], np.zeros(len(fp_rows), bool), n_gt - miss) - ap, 0))
    unmatched = np.bincount(m.obj_category[~m.obj_matched], minlength=K)
    no_tp = np.zeros(len(fp_rows), bool)
    special = {
        "FalsePos": fixed_run(fp_rows, cat[fp_rows], no_tp, n_gt, err_score=np.zeros(len(fp_rows)),
                              tp_score=np.ones(int(is_tp.sum()))) - ap,
        "FalseNeg": fixed_run(fp_rows, cat[fp_rows], no_tp, n_gt - unmatched) - ap,
    }

    counts = np.zeros((K, len(ERROR_TYPES)), np.int64)
    errs = m.error > NONE
    np.add.at(counts, (cat[errs], m.error[errs].astype(np.int64) - 1), 1)
    counts[:, -1] = miss
    confusion = np.zeros((K + 1, K + 1), np.int64)
    on = m.object_category >= 0
    np.add.at(confusion, (m.object_category[on], cat[on]), 1)
    bkg = m.error == BKG
    np.add.at(confusion, (np.full(int(bkg.sum()), K), cat[bkg]), 1)
    confusion[:K, K] = miss
    return TideResult(
        iou_type=m.iou_type, params=params, ap=ap, main=main, special=special,
        counts=dict(zip(ERROR_TYPES, counts.sum(axis=0).tolist())), categories=gt.categories,
        category_ap=base_aps, category_counts=counts, confusion=confusion, num_images=len(m.image_ids),
        num_detections=n, num_objects=len(m.obj_row),
    )


def _class_aps(cat, score, tp, key, n_gt, K) -> np.ndarray:
    """tidecv's AP per category (0-100; NaN: no point and no object): points by descending
    score, ties by ``key``; precision made monotone; at each recall x/100 the precision of the
    first point whose recall reaches it (0 if none); the mean of the 101, summed in order."""
    out = np.full(K, np.nan)
    out[n_gt > 0] = 0.0
    order = np.lexsort((key, -score, cat))
    c, t = cat[order], tp[order].astype(np.int64)
    present = np.bincount(c, minlength=K) > 0
    out[present & (n_gt == 0)] = 0.0
    ks = np.flatnonzero(present & (n_gt > 0))
    if len(c) == 0 or len(ks) == 0:
        return out
    starts = np.searchsorted(c, np.arange(K + 1))
    cs = np.cumsum(t)
    tpc = cs - np.r_[0, cs][starts[c]]  # true positives so far within the category
    precision = tpc / (np.arange(len(c)) - starts[c] + 1)
    # the max of the precisions from each point to its category's end, exactly (integer ranks)
    precision = suffix_max(precision, c, K)
    # the first point with recall tpc / n >= x is the first with tpc >= need (exact: fl(t / n)
    # grows with t, so need is the least t whose float quotient reaches x)
    need = needed_true_positives(n_gt[ks].astype(np.int64), _RECALLS).T  # (R, len(ks))
    width = int(max(tpc.max(), need.max())) + 2
    at = np.searchsorted(c.astype(np.int64) * width + tpc, ks[None, :] * width + need.astype(np.int64))
    y = np.where(at < starts[ks + 1][None, :], precision[np.minimum(at, len(c) - 1)], 0.0)
    out[ks] = np.cumsum(y, axis=0)[-1] / len(_RECALLS) * 100  # summed in order, as tidecv's sum()
    return out


def _mean(aps: np.ndarray, met: np.ndarray) -> float:
    """The mean of the categories' AP in the order tidecv met them (its summation order)."""
    ks = np.flatnonzero(~np.isnan(aps))
    if len(ks) == 0:
        return float("nan")
    ks = ks[np.argsort(met[ks], kind="stable")]
    return sum(aps[ks].tolist()) / len(ks)


# --------------------------------------------------------------------------- entry points


def tide_errors(
    gt: GroundTruth,
    dets: Detections,
    *,
    params: TideParams = TideParams(),
    image_ids: np.ndarray | None = None,
) -> TideResult:
    """TIDE on ``dets`` (bbox or segm; a results file's or a run's) against ``gt``, on
    ``image_ids`` (default: every ground-truth image)."""
    return tide_result(gt, match_tide(gt, dets, params=params, image_ids=image_ids), params=params)


def tide_run(
    url: str,
    gt: GroundTruth,
    *,
    iou_types: Sequence[str],
    params: TideParams = TideParams(),
    storage_options: dict[str, Any] | None = None,
    allow_partial: bool = False,
    unknown_categories: str = "error",
    match_by: str = "image_id",
) -> dict[str, TideResult]:
    """TIDE on a run directory's committed tables, one group of shards in memory at a time (the
    images ``evaluate_run`` evaluates; ``allow_partial``, ``match_by`` as there)."""
    from mrcnn_batch.evaluate.distributed import run_detections

    bad = [t for t in iou_types if t not in TIDE_IOU_TYPES]
    if bad:
        raise EvalInputError(f"TIDE analyses {' and '.join(TIDE_IOU_TYPES)}, not {', '.join(bad)}")
    parts: dict[str, list[TideMatches]] = {t: [] for t in iou_types}
    for img_ids, dets in run_detections(url, gt, iou_types=iou_types, storage_options=storage_options,
                                        allow_partial=allow_partial, unknown_categories=unknown_categories,
                                        match_by=match_by):
        for t in iou_types:
            parts[t].append(match_tide(gt, dets[t], params=params, image_ids=img_ids))
    out = {}
    for t in iou_types:
        out[t] = tide_result(gt, TideMatches.concat(parts[t]), params=params)
    return out


def tide_lines(result: TideResult, *, confusions: int = 5) -> list[str]:
    """The breakdown as text: AP, the dAP and count of each error type, the special errors, and
    the ``confusions`` most frequent confusions between categories."""
    p = result.params
    lines = [f"TIDE {result.iou_type} ({REFERENCE}'s AP at IoU {p.pos_threshold:.2f}, 0-100): {result.ap:.2f}"]
    w = 8
    lines.append("  " + "type".ljust(w) + "".join(n.rjust(w) for n in ERROR_TYPES) + "".join(n.rjust(10) for n in SPECIAL_TYPES))
    lines.append("  " + "dAP".ljust(w) + "".join(f"{result.main[n]:{w}.2f}" for n in ERROR_TYPES)
                 + "".join(f"{result.special[n]:10.2f}" for n in SPECIAL_TYPES))
    lines.append("  " + "count".ljust(w) + "".join(f"{result.counts[n]:{w}d}" for n in ERROR_TYPES))
    K = len(result.categories)
    off = result.confusion[:K, :K].copy()
    np.fill_diagonal(off, 0)
    top = [ij for ij in np.argsort(-off, axis=None, kind="stable")[:confusions] if off.flat[ij] > 0]
    if top:
        names = [c.name for c in result.categories]
        pairs = ", ".join(f"{names[ij // K]} as {names[ij % K]} {off.flat[ij]}" for ij in top)
        lines.append(f"  most confused (object as detection): {pairs}")
    return lines
