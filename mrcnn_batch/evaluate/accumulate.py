"""Accumulation: ``COCOeval.accumulate`` over merged per-image results, to the bit.

For each category, area range and maxDet, pycocotools concatenates the per-image detection
lists (images in ascending id order, each list in its score order, cut at maxDet), sorts them by
descending score with ``mergesort`` (so equal scores keep image-id order), takes cumulative true
and false positives, recall ``tp / npig`` and precision ``tp / (tp + fp + eps)``, makes precision
non-increasing from the right, and reads it at the 101 recall thresholds with
``searchsorted(side="left")`` (0 past the last reached recall). Settings without any non-ignored
ground truth stay -1. The same arrays in the same order give the same floating-point numbers.

Computed on the true positives only: a position that is not one has the recall of the true
positive before it and no higher precision, so the running maximum is taken over true positives
(on integer ranks, exactly), and the first position reaching recall threshold r is the
``need``-th true positive, ``need`` the least count whose ratio to the ground truth reaches r.
The loop over (category, row, detection) runs in a compiled kernel (``_accumulate.c``, built
when the package is installed; one pass over each category's detections, every row at once)
or, where it was not built, in numpy passes below; both give the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrcnn_batch.evaluate.match import CODE_FP, CODE_TP, MatchResult, detection_order
from mrcnn_batch.evaluate.params import EvalParams

try:  # the compiled inner loop (_accumulate.c), built when the package is installed
    from mrcnn_batch.evaluate import _accumulate
except ImportError:  # a checkout run from its folder, or installed where nothing compiles
    _accumulate = None

COMPILED = _accumulate is not None


@dataclass(frozen=True, eq=False)
class Accumulated:
    """pycocotools' ``COCOeval.eval``: arrays indexed ``[T, R, K, A, M]`` / ``[T, K, A, M]``."""

    params: EvalParams
    category_ids: np.ndarray  # (K,)
    image_ids: np.ndarray  # images evaluated
    precision: np.ndarray  # (T, R, K, A, M)
    recall: np.ndarray  # (T, K, A, M)
    scores: np.ndarray | None  # (T, R, K, A, M); None where not computed (bootstrap replicates)
    npig: np.ndarray  # (K, A)
    num_detections: int


def merge(results: list[MatchResult]) -> MatchResult:
    """Concatenate the results of disjoint image sets (their order does not matter); one is itself."""
    if not results:
        raise ValueError("nothing to merge")
    seen = np.concatenate([r.image_ids for r in results])
    if len(np.unique(seen)) != len(seen):
        raise ValueError("the merged results evaluate some images more than once")
    if len(results) == 1:
        return results[0]  # (its arrays are read, never written: no copy)
    return MatchResult(
        iou_type=results[0].iou_type,
        image_ids=np.sort(seen),
        category_index=np.concatenate([r.category_index for r in results]),
        image_id=np.concatenate([r.image_id for r in results]),
        rank=np.concatenate([r.rank for r in results]),
        score=np.concatenate([r.score for r in results]),
        codes=np.concatenate([r.codes for r in results]),
        npig=np.sum([r.npig for r in results], axis=0),
        cells=results[0].cells,
    )


def accumulate(
    result: MatchResult, *, params: EvalParams, category_ids: np.ndarray, compiled: bool | None = None
) -> Accumulated:
    """``compiled``: the compiled kernel or the numpy passes (default: the kernel where built)."""
    if compiled is None:
        compiled = COMPILED
    if compiled and _accumulate is None:
        raise RuntimeError("the compiled accumulation kernel was not built: reinstall the package where a C compiler is at hand")
    T, R = len(params.iou_thrs), len(params.rec_thrs)
    K, A, M = len(category_ids), len(params.area_rngs), len(params.max_dets)
    AT = A * T
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    npig = result.npig.astype(np.int64)
    has_gt = npig > 0  # (K, A); cells without ground truth stay -1
    need = needed_true_positives(npig, params.rec_thrs_array())  # (K, A, R)
    need_rows = np.repeat(need.transpose(1, 0, 2), T, axis=0)  # (AT, K, R), row a * T + t

    # pycocotools' order within a category: its stable score sort of the concatenation by image
    # id, then rank within the image (equal scores keep that order)
    order = detection_order(result.category_index, result.score, result.image_id, result.rank, groups=K)
    cat, rank = result.category_index[order], result.rank[order]
    if compiled:  # (the packed outcomes and the scores as they are, read through the order)
        flat = np.ascontiguousarray(result.codes, dtype=np.uint8)
        score, codes = np.ascontiguousarray(result.score, dtype=np.float64), None
    else:  # one row per (area range, threshold), positions in that order
        score = result.score[order]
        codes = np.ascontiguousarray(result.outcomes().reshape(len(order), AT)[order].T)
    every: int | None = None  # a maxDet that keeps every detection (the others equal it)
    for m, max_det in enumerate(params.max_dets):
        keep = rank < max_det
        every_one = bool(keep.all())
        if every_one and every is not None:
            precision[..., m], scores[..., m], recall[..., m] = precision[..., every], scores[..., every], recall[..., every]
            continue
        every = m if every_one else every
        c_m = cat if every_one else cat[keep]  # still in (category, score) order
        first = np.searchsorted(c_m, np.arange(K + 1))  # each category's positions
        nd = np.diff(first)
        if compiled:
            q, ss, n_tp = np.empty((AT, K, R)), np.empty((AT, K, R)), np.empty((AT, K), np.int64)
            _accumulate.accumulate(flat, order if every_one else order[keep], first.astype(np.int64), score, need_rows,
                                   q, ss, n_tp, AT, K, R)
        else:
            q, ss, n_tp = _precision_at_thresholds(codes, None if every_one else np.flatnonzero(keep), c_m,
                                                   score if every_one else score[keep], first, need_rows, AT, K)
        with np.errstate(divide="ignore", invalid="ignore"):
            rc = np.where(nd > 0, n_tp / np.repeat(npig.T, T, axis=0), 0.0)  # (AT, K)
        cell = has_gt[None, None]  # (1, 1, K, A)
        precision[..., m] = np.where(cell, q.reshape(A, T, K, R).transpose(1, 3, 2, 0), -1.0)
        scores[..., m] = np.where(cell, ss.reshape(A, T, K, R).transpose(1, 3, 2, 0), -1.0)
        recall[..., m] = np.where(has_gt[None], rc.reshape(A, T, K).transpose(1, 2, 0), -1.0)
    return Accumulated(
        params=params,
        category_ids=np.asarray(category_ids, np.int64),
        image_ids=result.image_ids,
        precision=precision,
        recall=recall,
        scores=scores,
        npig=result.npig,
        num_detections=len(result),
    )


def _precision_at_thresholds(codes, sel, c_m, s_m, first, need_rows, AT: int, K: int):
    """The numpy passes: ``q`` and ``ss`` (AT, K, R), precision and score at each recall
    threshold, and ``n_tp`` (AT, K), for the detections ``sel`` of ``codes`` (AT, N)."""
    nd = np.diff(first)
    row, pos, fp = _true_positives(codes, sel, c_m, first)
    k = c_m[pos]
    seg = row * K + k  # (row, category) segments, in order
    seg_first = np.searchsorted(seg, np.arange(AT * K + 1))
    n_tp = np.diff(seg_first).reshape(AT, K)
    tp = (np.arange(len(seg)) - seg_first[seg] + 1).astype(float)
    fp = fp.astype(float)
    pr = tp / (fp + tp + np.spacing(1))  # at each true positive, as pycocotools computes it
    # the max from each true positive to its segment's end: a position that is not a true
    # positive has the recall of the true positive before it and no higher precision
    best = suffix_max(pr, seg, AT * K)

    # the first position whose recall reaches threshold r is the need-th true positive
    # (need 0: the category's first position, whatever it is)
    ntp = n_tp[:, :, None]
    reached = np.where(need_rows == 0, (nd > 0)[None, :, None], need_rows <= ntp)
    entry = seg_first[:-1].reshape(AT, K)[:, :, None] + np.maximum(need_rows - 1, 0)
    entry = np.where(reached & (ntp > 0), entry, 0)
    q = np.where(reached & (ntp > 0), best[entry] if len(best) else 0.0, 0.0)
    at = np.where(need_rows == 0, first[:-1][None, :, None], pos[entry] if len(pos) else 0)
    ss = np.where(reached, s_m[np.minimum(at, max(len(s_m) - 1, 0))] if len(s_m) else 0.0, 0.0)
    return q, ss, n_tp


def needed_true_positives(npig: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """``npig.shape + (R,)``: for each recall threshold the least integer ``tp`` with ``tp / npig >=
    threshold`` as floating point computes it (``npig + 1`` where none does). pycocotools
    compares the ratios; a ratio of integers grows with its numerator, so counts compare alike."""
    out = np.zeros(npig.shape + (len(rec_thrs),), np.int64)
    for n in np.unique(npig[npig > 0]).tolist():
        out[npig == n] = np.searchsorted(np.arange(n + 1) / n, rec_thrs, side="left")
    return out


def _true_positives(
    codes: np.ndarray, sel: np.ndarray | None, cat: np.ndarray, first: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true positives of the rows of ``codes (AT, N)`` over columns ``sel`` (None: all; in
    category order, category ``cat``, categories starting at ``first``): their row, position and
    the false positives of their category up to them; a few rows at a time (bounded memory)."""
    rows, positions, fps = [], [], []
    step = max(1, (1 << 21) // max(len(cat), 1))
    for r0 in range(0, len(codes), step):
        x = codes[r0:r0 + step] if sel is None else np.take(codes[r0:r0 + step], sel, axis=1)
        r, p = np.nonzero(x == CODE_TP)
        cs = np.cumsum(x == CODE_FP, axis=1, dtype=np.int32)
        start = first[cat[p]]
        fps.append(cs[r, p] - np.where(start > 0, cs[r, np.maximum(start - 1, 0)], 0))
        rows.append(r + r0)
        positions.append(p)
    if not rows:
        z = np.zeros(0, np.int64)
        return z, z.copy(), z.copy()
    return np.concatenate(rows), np.concatenate(positions), np.concatenate(fps)


def suffix_max(values: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    """The running maximum of ``values`` from each element to the end of its segment (``seg``
    non-decreasing), exactly: on integer ranks, each segment lifted above the later ones."""
    if len(values) == 0:
        return values
    uniq, rank = np.unique(values, return_inverse=True)
    lift = (n_seg - seg).astype(np.int64) * len(uniq)
    return uniq[np.maximum.accumulate((rank.reshape(-1) + lift)[::-1])[::-1] - lift]
