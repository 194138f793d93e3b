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

    # pycocotools' concatenation order: category, then image id, then rank within the image.
    order = np.lexsort((result.rank, result.image_id, result.category_index))
    cat = result.category_index[order]
    rank = result.rank[order]
    score = result.score[order]
    codes = result.codes[order]
    bounds = np.searchsorted(cat, np.arange(K + 1))
    for k in range(K):
        lo, hi = bounds[k], bounds[k + 1]
        for m, max_det in enumerate(params.max_dets):
            sel = np.flatnonzero(rank[lo:hi] < max_det) + lo
            dt_scores = score[sel]
            inds = np.argsort(-dt_scores, kind="mergesort")
            scores_sorted = dt_scores[inds]
            sorted_codes = codes[sel[inds]]  # (nd, A, T)
            nd = len(inds)
            for a in range(A):
                npig = int(result.npig[k, a])
                if npig == 0:
                    continue
                c = sorted_codes[:, a, :].T  # (T, nd)
                tp_sum = np.cumsum(c == CODE_TP, axis=1).astype(dtype=float)
                fp_sum = np.cumsum(c == CODE_FP, axis=1).astype(dtype=float)
                rc = tp_sum / npig
                pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if nd else 0
                if nd == 0:
                    precision[:, :, k, a, m] = 0
                    scores[:, :, k, a, m] = 0
                    continue
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(T):
                    idx = np.searchsorted(rc[t], rec_thrs, side="left")
                    reached = idx < nd
                    q = np.zeros(R)
                    ss = np.zeros(R)
                    q[reached] = pr[t, idx[reached]]
                    ss[reached] = scores_sorted[idx[reached]]
                    precision[t, :, k, a, m] = q
                    scores[t, :, k, a, m] = ss
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
