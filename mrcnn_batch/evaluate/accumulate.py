"""Accumulation: ``COCOeval.accumulate`` over merged per-image results, to the bit.

For each category, area range and maxDet, pycocotools concatenates the per-image detection
lists (images in ascending id order, each list in its score order, cut at maxDet), sorts them by
descending score with ``mergesort`` (so equal scores keep image-id order), takes cumulative true
and false positives, recall ``tp / npig`` and precision ``tp / (tp + fp + eps)``, makes precision
non-increasing from the right, and reads it at the 101 recall thresholds with
``searchsorted(side="left")`` (0 past the last reached recall). Settings without any non-ignored
ground truth stay -1. The same arrays in the same order give the same floating-point numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrcnn_batch.evaluate.match import CODE_FP, CODE_TP, MatchResult
from mrcnn_batch.evaluate.params import EvalParams


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
    """Concatenate the results of disjoint image sets (their order does not matter)."""
    if not results:
        raise ValueError("nothing to merge")
    seen = np.concatenate([r.image_ids for r in results])
    if len(np.unique(seen)) != len(seen):
        raise ValueError("the merged results evaluate some images more than once")
    return MatchResult(
        iou_type=results[0].iou_type,
        image_ids=np.sort(seen),
        category_index=np.concatenate([r.category_index for r in results]),
        image_id=np.concatenate([r.image_id for r in results]),
        rank=np.concatenate([r.rank for r in results]),
        score=np.concatenate([r.score for r in results]),
        codes=np.concatenate([r.codes for r in results]),
        npig=np.sum([r.npig for r in results], axis=0),
    )


def accumulate(result: MatchResult, *, params: EvalParams, category_ids: np.ndarray) -> Accumulated:
    T, R = len(params.iou_thrs), len(params.rec_thrs)
    K, A, M = len(category_ids), len(params.area_rngs), len(params.max_dets)
    rec_thrs = params.rec_thrs_array()
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))

    # pycocotools' concatenation order: category, then image id, then rank within the image;
    # then its stable score sort within each category.
    order = np.lexsort((result.rank, result.image_id, result.category_index))
    order = order[np.lexsort((-result.score[order], result.category_index[order]))]
    cat = result.category_index[order]
    rank = result.rank[order]
    score = result.score[order]
    # one contiguous row per (area range, threshold): row a * T + t
    codes = np.ascontiguousarray(result.codes[order].reshape(len(order), A * T).T)
    bounds = np.searchsorted(cat, np.arange(K + 1))
    cols = np.arange(A * T)
    for k in range(K):
        lo, hi = bounds[k], bounds[k + 1]
        npig = result.npig[k].astype(np.int64)  # (A,)
        if not npig.any():
            continue
        # rc = tp / npig reaches threshold r from the first integer tp whose ratio does
        need = np.repeat([_first_reaching(int(n), rec_thrs) for n in npig], T, axis=0)  # (A * T, R)
        for m, max_det in enumerate(params.max_dets):
            kept = rank[lo:hi] < max_det
            sel = slice(lo, hi) if kept.all() else np.flatnonzero(kept) + lo  # still in score order
            c = codes[:, sel]  # (A * T, nd)
            nd = c.shape[1]
            tp_sum = np.cumsum(c == CODE_TP, axis=1, dtype=np.int64)
            fp_sum = np.cumsum(c == CODE_FP, axis=1, dtype=np.int64).astype(float)
            tp_f = tp_sum.astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                last = tp_f[:, -1] / np.repeat(npig, T) if nd else np.zeros(A * T)
            pr = tp_f / (fp_sum + tp_f + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # non-increasing from the right
            # the first position whose recall reaches each threshold: a search over integer counts
            idx = np.searchsorted((tp_sum + cols[:, None] * (nd + 1)).reshape(-1), (need + cols[:, None] * (nd + 1)).reshape(-1))
            idx = idx.reshape(A * T, R) - cols[:, None] * nd  # (A * T, R)
            reached = idx < nd
            at = np.where(reached, idx, 0)
            q = np.where(reached, pr[cols[:, None], at] if nd else 0, 0.0)
            ss = np.where(reached, score[sel][at] if nd else 0, 0.0)
            for a in np.flatnonzero(npig):
                recall[:, k, a, m] = last[a * T:(a + 1) * T]
                precision[:, :, k, a, m] = q[a * T:(a + 1) * T]
                scores[:, :, k, a, m] = ss[a * T:(a + 1) * T]
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


def _first_reaching(npig: int, rec_thrs: np.ndarray) -> np.ndarray:
    """For each recall threshold, the least integer ``tp`` with ``tp / npig >= threshold`` as
    floating point computes it (``npig + 1`` where none does): pycocotools compares the ratios,
    and a ratio of integers grows with its numerator, so comparing the counts is the same."""
    ratios = np.arange(npig + 1) / npig if npig else np.zeros(1)
    return np.searchsorted(ratios, rec_thrs, side="left") if npig else np.full(len(rec_thrs), 1)
