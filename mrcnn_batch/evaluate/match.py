"""Per-image matching: ``COCOeval.evaluateImg`` for every image, category and area range at once.

pycocotools' rules, reproduced exactly:

* detections of an (image, category) are sorted by descending score with a stable sort
  (``mergesort``), ties keeping input order, and only the first ``maxDets[-1]`` are kept;
* a ground-truth object is ignored if it is a crowd (keypoints: or has no labelled keypoint) or
  its ``area`` is outside the range; non-ignored objects come first, each group in file order;
* for each IoU threshold ``t``, each detection in score order takes, among the objects not yet
  taken (crowds can be taken again) with IoU >= ``t``, the non-ignored one of highest IoU, the
  last in order among equals; only when there is none, the ignored one by the same rule;
* a detection matched to an ignored object is ignored; an unmatched detection whose own area is
  outside the range is ignored; a match to an object of id 0 counts as no match (pycocotools
  stores matches as ids and tests them for truth).

The sequential greedy loop runs over detection ranks only, vectorised over every (image,
category) group, area range and threshold; detections and objects that reach no threshold are
left out of it, as they can neither match nor change another match. A group left with one
candidate object (most groups) needs no loop: at each threshold the first detection reaching it
takes it, or every one that does if it is a crowd. A detection without a candidate is a false
positive (ignored outside the area range) without further work.

Where the package was built with its C kernels (``setup.py``), the score order and the greedy
loop of every group (``_match.c``), the OKS terms (``_oks.c``) and the mask IoUs on RLE strings
with the ground truth's polygons rasterised (``_rle.c``, through ``similarity``) are compiled;
the numpy code below is the fallback and the kernels' test reference.

``boundary`` is ``segm`` with each pair's similarity from ``boundary.boundary_similarity``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from mrcnn_batch.arrays import INTS, REALS, binaries, from_numpy, held, ranges, take
from mrcnn_batch.evaluate.boundary import boundary_similarity
from mrcnn_batch.evaluate.errors import EvalInputError
from mrcnn_batch.evaluate.groundtruth import GroundTruth
from mrcnn_batch.evaluate.params import MASK_IOU_TYPES, EvalParams
from mrcnn_batch.evaluate.predictions import Detections
from mrcnn_batch.evaluate.similarity import COMPILED as COMPILED_RLE
from mrcnn_batch.evaluate.similarity import mask_iou, pair_box_iou, pair_mask_iou, polygon_rles
from mrcnn_batch.lazy import LazyModule

if TYPE_CHECKING:
    import pyarrow as pa
else:  # used for masks' strings alone: boxes and keypoints are matched without it
    pa = LazyModule("pyarrow")

try:  # the compiled kernels (_match.c, _oks.c), built when the package is installed; else the numpy code
    from mrcnn_batch.evaluate import _match
except ImportError:  # a checkout run from its folder, or installed where nothing compiles
    _match = None
try:
    from mrcnn_batch.evaluate import _oks
except ImportError:
    _oks = None

CODE_IGNORED, CODE_TP, CODE_FP = 0, 1, 2
_CHUNK_ELEMENTS = 1 << 22  # bound on (groups x area ranges x thresholds x objects) per batch
_BLOCK_DETECTIONS = 1 << 14  # detections matched at once (memory: their pairs and greedy arrays; 1 << 16 peaked
# 60 MiB higher on 500,000 masks and 17 MiB on 100,000 people at the same CPU time)


@dataclass(frozen=True, eq=False)
class MatchResult:
    """What accumulation needs from a set of images: one row per kept detection."""

    iou_type: str
    image_ids: np.ndarray  # (I,) int64: every image evaluated, with or without detections
    category_index: np.ndarray  # (N,) int32 into the evaluated category ids
    image_id: np.ndarray  # (N,) int64
    rank: np.ndarray  # (N,) int32: position within its (image, category) after the score sort
    score: np.ndarray  # (N,) float64
    codes: np.ndarray  # (N, ceil(A * T / 4)) uint8: each (area range, threshold)'s outcome packed, see outcomes()
    npig: np.ndarray  # (K, A) int64: non-ignored ground truth per category and area range
    cells: tuple[int, int]  # (A, T): area ranges and thresholds

    def __len__(self) -> int:
        return len(self.image_id)

    def outcomes(self) -> np.ndarray:
        """``(N, A, T)`` uint8: CODE_IGNORED / CODE_TP / CODE_FP of each detection in each area
        range at each threshold (``codes`` holds them two bits each, a quarter of the memory)."""
        return unpack_codes(self.codes, *self.cells)


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """``(N, A, T)`` outcomes (0 to 3) as ``(N, ceil(A * T / 4))`` bytes: cell ``r = a * T + t`` in
    bits ``2 * (r % 4)`` of byte ``r // 4``."""
    n = len(codes)
    flat = codes.reshape(n, int(np.prod(codes.shape[1:])))
    width = -(-flat.shape[1] // 4)
    quads = np.zeros((n, width * 4), np.uint8)
    quads[:, :flat.shape[1]] = flat
    quads = quads.reshape(n, width, 4)
    return quads[:, :, 0] | (quads[:, :, 1] << 2) | (quads[:, :, 2] << 4) | (quads[:, :, 3] << 6)


def unpack_codes(packed: np.ndarray, areas: int, thresholds: int) -> np.ndarray:
    """:func:`pack_codes` undone: ``(N, areas, thresholds)`` uint8."""
    n = len(packed)
    quads = np.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], axis=2).reshape(n, 4 * packed.shape[1])
    return np.ascontiguousarray(quads[:, :areas * thresholds]).reshape(n, areas, thresholds)


def match_images(
    gt: GroundTruth,
    dets: Detections,
    *,
    params: EvalParams,
    category_ids: np.ndarray,
    sigmas: dict[int, np.ndarray] | None = None,
    image_ids: np.ndarray | None = None,
) -> MatchResult:
    """Match ``dets`` to ``gt`` on ``image_ids`` (default: all of ``gt``'s images)."""
    image_ids = gt.image_ids if image_ids is None else np.unique(np.asarray(image_ids, np.int64))
    category_ids = np.asarray(category_ids, np.int64)
    K, A, T = len(category_ids), len(params.area_rngs), len(params.iou_thrs)
    areas = params.area_array()

    # Ground truth of the evaluated images and categories, in (image, category, file) order.
    g_rows = np.flatnonzero(np.isin(gt.ann_image_id, image_ids) & np.isin(gt.ann_category_id, category_ids))
    g_key = _group_key(gt.ann_image_id[g_rows], gt.ann_category_id[g_rows], image_ids, category_ids)
    g_order = np.argsort(g_key, kind="stable")
    g_rows, g_key = g_rows[g_order], g_key[g_order]
    crowd = gt.iscrowd[g_rows] > 0
    g_ig = ignored_ground_truth(gt, g_rows, params)  # (G, A)
    npig = np.zeros((K, A), np.int64)
    np.add.at(npig, g_key % K if K else g_key, ~g_ig)

    # Detections: (image, category) groups, score-sorted (stable), first max_det of each.
    # (temporaries are let go as soon as they are used: their memory is matching's peak)
    d_rows = np.flatnonzero(np.isin(dets.image_id, image_ids) & np.isin(dets.category_id, category_ids))
    d_key = _group_key(dets.image_id[d_rows], dets.category_id[d_rows], image_ids, category_ids)
    order = detection_order(d_key, dets.score[d_rows], groups=len(image_ids) * K)
    d_rows, d_key = d_rows[order], d_key[order]
    del order
    rank = _rank_in_group(d_key).astype(np.int32)
    if (rank >= params.max_det).any():
        top = rank < params.max_det
        d_rows, d_key, rank = d_rows[top], d_key[top], rank[top]
        del top
    d_area = dets.area[d_rows]
    d_out = (d_area[:, None] < areas[:, 0]) | (d_area[:, None] > areas[:, 1])  # (D, A)
    del d_area

    # A detection without any candidate object is a false positive, ignored outside the area
    # range; only the candidates' outcomes come from the greedy matching. Groups are matched a
    # block of about _BLOCK_DETECTIONS detections at a time (the pairs, the greedy loop's arrays
    # and the outcomes of one block are held at once, the outcomes then packed); a group is
    # never split.
    codes = np.empty((len(d_rows), -(-A * T // 4)), np.uint8)
    tmin = min(min(params.iou_thrs), 1 - 1e-10)
    for (d0, d1), (g0, g1) in _blocks(d_key, g_key, _BLOCK_DETECTIONS):
        block = np.repeat(np.where(d_out[d0:d1], CODE_IGNORED, CODE_FP).astype(np.uint8)[:, :, None], T, axis=2)
        # similarities of every detection-object pair of a group that reaches the lowest threshold
        pd, pg, pv = _similar_pairs(gt, dets, params, g_rows[g0:g1], g_key[g0:g1], crowd[g0:g1], d_rows[d0:d1],
                                    d_key[d0:d1], tmin, category_ids, sigmas)
        keep = pv >= tmin
        cd, cells, obj = _greedy_match(pd[keep], pg[keep], pv[keep], d_key[d0:d1], g_key[g0:g1], crowd[g0:g1],
                                       g_ig[g0:g1], params)
        if len(cells):  # the matched (candidate, area range, threshold) cells and their objects
            det, at, obj = cd[cells // (A * T)], cells % (A * T), g0 + obj
            a = at // T
            nonzero = gt.ann_id[g_rows[obj]] != 0
            ignored = g_ig[obj, a] | (~nonzero & d_out[d0 + det, a])
            np.put(block, det * (A * T) + at, np.where(ignored, CODE_IGNORED, np.where(nonzero, CODE_TP, CODE_FP)))
        codes[d0:d1] = pack_codes(block)

    return MatchResult(
        iou_type=params.iou_type,
        image_ids=image_ids,
        category_index=(d_key % K).astype(np.int32) if K else d_key.astype(np.int32),
        image_id=dets.image_id[d_rows],
        rank=rank,
        score=dets.score[d_rows].astype(np.float64, copy=False),
        codes=codes,
        npig=npig,
        cells=(A, T),
    )


def _blocks(d_key: np.ndarray, g_key: np.ndarray, size: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``(d0, d1), (g0, g1)``: ranges of the sorted detection and object keys, about ``size``
    detections each, cut only between groups; together they cover both."""
    starts = np.unique(np.searchsorted(d_key, d_key[np.arange(size, len(d_key), size)], side="left"))
    d_cuts = [0, *starts[starts > 0].tolist(), len(d_key)]
    g_cuts = [0, *np.searchsorted(g_key, d_key[d_cuts[1:-1]], side="left").tolist(), len(g_key)]
    return list(zip(pairwise(d_cuts), pairwise(g_cuts)))


def ignored_ground_truth(gt: GroundTruth, rows: np.ndarray, params: EvalParams) -> np.ndarray:
    """``(G, A)``: whether each ground-truth row is ignored in each area range (``gtIgnore``)."""
    areas = params.area_array()
    ignore = gt.iscrowd[rows] > 0
    if params.iou_type == "keypoints":
        ignore = ignore | (gt.num_keypoints[rows] == 0)
    area = gt.area[rows]
    return ignore[:, None] | (area[:, None] < areas[:, 0]) | (area[:, None] > areas[:, 1])


def ground_truth_counts(
    gt: GroundTruth, *, params: EvalParams, category_ids: np.ndarray, image_ids: np.ndarray
) -> np.ndarray:
    """``(I, K, A)``: non-ignored ground truth per image, category and area range, for sorted
    ``image_ids``; summed over the images it is ``MatchResult.npig``."""
    category_ids = np.asarray(category_ids, np.int64)
    rows = np.flatnonzero(np.isin(gt.ann_image_id, image_ids) & np.isin(gt.ann_category_id, category_ids))
    counts = np.zeros((len(image_ids), len(category_ids), len(params.area_rngs)), np.int64)
    where = (np.searchsorted(image_ids, gt.ann_image_id[rows]), np.searchsorted(category_ids, gt.ann_category_id[rows]))
    np.add.at(counts, where, ~ignored_ground_truth(gt, rows, params))
    return counts


def _group_key(img: np.ndarray, cat: np.ndarray, image_ids: np.ndarray, category_ids: np.ndarray) -> np.ndarray:
    return np.searchsorted(image_ids, img).astype(np.int64) * len(category_ids) + np.searchsorted(category_ids, cat)


def detection_order(key: np.ndarray, score: np.ndarray, *ties: np.ndarray, groups: int) -> np.ndarray:
    """Positions by ``key`` (in ``[0, groups)``), then score descending, then each of ``ties``
    ascending, then position: ``np.lexsort((*reversed(ties), -score, key))``, pycocotools'
    stable score order within a group (by the compiled kernel where built)."""
    if _match is None or len(key) == 0 or groups > max(4 * len(key), 1 << 22):
        return np.lexsort((*reversed(ties), -score, key))
    order = np.empty(len(key), np.int64)
    _match.group_order(held(key, INTS), np.ascontiguousarray(score, np.float64), *(held(t, INTS) for t in ties),
                       *([b""] * (2 - len(ties))), groups, order)
    return order


def _rank_in_group(sorted_key: np.ndarray) -> np.ndarray:
    _, starts, lengths = _groups(sorted_key)
    return np.arange(len(sorted_key), dtype=np.int64) - np.repeat(starts, lengths)


def _groups(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique keys with each group's start and length: ``np.unique(key, return_index=True,
    return_counts=True)``, read off the boundaries where ``key`` is sorted (no sort)."""
    if len(key) and not (key[1:] >= key[:-1]).all():
        return np.unique(key, return_index=True, return_counts=True)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.intp)
    return key[starts], starts, np.diff(np.r_[starts, len(key)])


def _unique_in(idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(idx, return_inverse=True)`` of integers in ``[0, n)``, by marking them (no sort)."""
    mark = np.zeros(n, bool)
    mark[idx] = True
    uniq = np.flatnonzero(mark)
    pos = np.empty(n, np.intp)
    pos[uniq] = np.arange(len(uniq))
    return uniq, pos[idx]


def _similar_pairs(
    gt: GroundTruth,
    dets: Detections,
    params: EvalParams,
    g_rows: np.ndarray,
    g_key: np.ndarray,
    crowd: np.ndarray,
    d_rows: np.ndarray,
    d_key: np.ndarray,
    tmin: float,
    category_ids: np.ndarray,
    sigmas: dict[int, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (detection, object, similarity) of the groups that have both; local indices."""
    gk, gs, gc = _groups(g_key)
    dk, ds, dc = _groups(d_key)
    both, gi, di = np.intersect1d(gk, dk, assume_unique=True, return_indices=True)
    if len(both) == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy(), np.zeros(0)
    gs, gc, ds, dc = gs[gi], gc[gi], ds[di], dc[di]
    if params.iou_type in MASK_IOU_TYPES:
        return _mask_pairs(gt, dets, params, g_rows, crowd, d_rows, both // len(category_ids), (ds, dc), (gs, gc), tmin)
    pd, pg, owner = _all_pairs(ds, dc, gs, gc)
    if params.iou_type == "bbox":
        return pd, pg, pair_box_iou(dets.bbox[d_rows[pd]], gt.bbox[g_rows[pg]], crowd[pg])
    pair_cat = category_ids[both[owner] % len(category_ids)]
    # OKS's per-keypoint variances, each detection's keypoint count checked against them first
    variances = {cat: (_sigmas_for(sigmas, cat, dets, _unique_in(d_rows[pd[pair_cat == cat]], len(dets))[0]) * 2) ** 2
                 for cat in np.unique(pair_cat).tolist()}
    near = _may_reach(gt, dets, d_rows[pd], g_rows[pg], pair_cat, variances, tmin)
    pd, pg, pair_cat = pd[near], pg[near], pair_cat[near]
    return pd, pg, _oks_pairs(gt, dets, d_rows[pd], g_rows[pg], pair_cat, variances)


def _may_reach(
    gt: GroundTruth,
    dets: Detections,
    d_rows: np.ndarray,
    g_rows: np.ndarray,
    pair_cat: np.ndarray,
    variances: dict[int, np.ndarray],
    tmin: float,
) -> np.ndarray:
    """Pairs whose OKS may reach ``tmin``; the others cannot. OKS is a mean of ``exp(-e_i)``
    over the object's labelled keypoints, so it reaches ``tmin`` only if some ``e_i <= -ln
    tmin``, i.e. keypoint ``i`` of the detection lies within ``r = sqrt(2 (-ln tmin) var_i
    (area + eps))`` of the object's in x and in y: the detection's keypoints' extent must meet the
    object's labelled keypoints' extent grown by ``r`` (taken with the largest variance, and a
    margin). Objects without labelled keypoints, or with a non-positive area, are always kept.
    ``variances``: OKS's ``(2 sigma)^2`` per keypoint, by category."""
    keep = np.ones(len(d_rows), bool)
    if tmin <= 0 or not len(d_rows):
        return keep
    cats, cat_of = np.unique(pair_cat, return_inverse=True)
    var = np.array([float(variances[c].max()) for c in cats.tolist()])[cat_of]  # the largest per category
    ud, d_inv = _unique_in(d_rows, len(dets))
    ug, g_inv = _unique_in(g_rows, len(gt.ann_id))
    dx0, dy0, dx1, dy1 = _extent(dets.kp_offsets, dets.kp_values, ud, labelled_only=False)
    gx0, gy0, gx1, gy1 = _extent(gt.kp_offsets, gt.kp_values, ug, labelled_only=True)
    area = gt.area[ug][g_inv] + np.spacing(1)
    with np.errstate(invalid="ignore"):
        r = np.sqrt(2 * -np.log(tmin) * var * area) * 1.001 + 1e-9
    g_any = np.isfinite(gx0)[g_inv] & (area > 0)  # some labelled keypoint, a usable radius
    meets = ((dx0[d_inv] <= gx1[g_inv] + r) & (dx1[d_inv] >= gx0[g_inv] - r)
             & (dy0[d_inv] <= gy1[g_inv] + r) & (dy1[d_inv] >= gy0[g_inv] - r))
    keep &= ~g_any | meets | ~np.isfinite(r)
    return keep


def _extent(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray, *, labelled_only: bool) -> tuple[np.ndarray, ...]:
    """``(x0, y0, x1, y1)`` of each row's keypoints, NaN left out (``labelled_only``: those with v > 0; +inf /
    -inf where there is none)."""
    if _oks is not None:  # compiled: one pass over the rows' keypoints
        out = np.empty((4, len(rows)))
        values = held(values, REALS)
        _oks.extent(np.ascontiguousarray(offsets, np.int64), values, values.dtype == np.float64,
                    np.ascontiguousarray(rows, np.int64), labelled_only, out)
        return tuple(out)
    lengths = (offsets[rows + 1] - offsets[rows]) // 3
    idx = ranges(offsets[rows] // 3, lengths)  # the rows' keypoints, row after row
    x, y, v = values[0::3][idx], values[1::3][idx], values[2::3][idx]
    starts = (np.cumsum(lengths) - lengths)[lengths > 0]  # each row's first (rows without none)
    out = []
    for arr, fill, fn in ((x, np.inf, np.fmin), (y, np.inf, np.fmin), (x, -np.inf, np.fmax), (y, -np.inf, np.fmax)):
        o = np.full(len(rows), fill)
        if len(starts):  # fmin / fmax leave NaN out (all NaN: the fill); unlabelled points count as the fill
            r = fn.reduceat(np.where(v > 0, arr, fill) if labelled_only else arr, starts)
            o[lengths > 0] = np.where(np.isnan(r), fill, r)
        out.append(o)
    return tuple(out)


def _oks_pairs(
    gt: GroundTruth,
    dets: Detections,
    d_rows: np.ndarray,
    g_rows: np.ndarray,
    pair_cat: np.ndarray,
    variances: dict[int, np.ndarray],
) -> np.ndarray:
    """OKS of (detection, object) row pairs, ``similarity.oks`` over all pairs at once: the same
    operations per pair, each pair's sum over its object's labelled keypoints taken by pairs of
    equal count (a row sum of a contiguous ``(pairs, count)`` array, as over one pair)."""
    out = np.zeros(len(d_rows))
    for cat in np.unique(pair_cat).tolist():
        at = np.flatnonzero(pair_cat == cat)
        ud, d_inv = _unique_in(d_rows[at], len(dets))
        ug, g_inv = _unique_in(g_rows[at], len(gt.ann_id))
        dk, d_at = _kp_matrix(dets.kp_offsets, dets.kp_values, ud, f"detections of category {cat}")
        d_inv = d_at[d_inv]  # each pair's row of dk
        gk, g_at = _kp_matrix(gt.kp_offsets, gt.kp_values, ug, f"ground truth of category {cat}")
        gk = gk[g_at]
        var = variances[cat]
        g_visible = gk[:, 2::3] > 0
        g_labelled = g_visible.sum(axis=1)  # each object's labelled keypoints
        step = max(1, (1 << 20) // max(len(var), 1))
        for lo in range(0, len(at), step):
            c = slice(lo, lo + step)
            area = gt.area[ug[g_inv[c]]]
            labelled = g_labelled[g_inv[c]]
            sim = np.empty(len(labelled))
            none = np.flatnonzero(labelled == 0)  # no labelled keypoint: distances to the box, doubled
            if len(none):
                d = dk[d_inv[c][none]]
                bb, xd, yd = gt.bbox[ug[g_inv[c]][none]], d[:, 0::3], d[:, 1::3]
                x0, x1 = (bb[:, 0] - bb[:, 2])[:, None], (bb[:, 0] + bb[:, 2] * 2)[:, None]
                y0, y1 = (bb[:, 1] - bb[:, 3])[:, None], (bb[:, 1] + bb[:, 3] * 2)[:, None]
                dx = np.maximum(0, x0 - xd) + np.maximum(0, xd - x1)
                dy = np.maximum(0, y0 - yd) + np.maximum(0, yd - y1)
                e = (dx**2 + dy**2) / var / (area[none][:, None] + np.spacing(1)) / 2
                sim[none] = np.sum(np.exp(-e), axis=1) / e.shape[1]
            # the others: their labelled keypoints only, pairs in order of labelled count, so
            # that those of one count are one contiguous (pairs, count) block
            rows = np.flatnonzero(labelled > 0)
            rows = rows[np.argsort(labelled[rows], kind="stable")]
            if _oks is not None:  # each labelled keypoint's term, pair by pair, compiled
                e = np.empty(int(labelled[rows].sum()))
                _oks.terms(dk, dk.dtype == np.float64, gk, d_inv[c][rows], g_inv[c][rows], np.ascontiguousarray(var, np.float64),
                           np.ascontiguousarray(area[rows], np.float64), e)
            else:
                d, g = dk[d_inv[c][rows]], gk[g_inv[c][rows]]
                r, k = np.nonzero(g_visible[g_inv[c][rows]])
                dx = d[r, 3 * k] - g[r, 3 * k]
                dy = d[r, 3 * k + 1] - g[r, 3 * k + 1]
                e = (dx**2 + dy**2) / var[k] / (area[rows[r]] + np.spacing(1)) / 2
            counts, n_rows = np.unique(labelled[rows], return_counts=True)
            row_at, e_at = 0, 0
            for count, n in zip(counts.tolist(), n_rows.tolist()):
                block = np.exp(-e[e_at:e_at + count * n]).reshape(n, count)
                sim[rows[row_at:row_at + n]] = np.sum(block, axis=1) / count
                row_at, e_at = row_at + n, e_at + count * n
            out[at[c]] = sim
    return out


def _mask_pairs(
    gt: GroundTruth,
    dets: Detections,
    params: EvalParams,
    g_rows: np.ndarray,
    crowd: np.ndarray,
    d_rows: np.ndarray,
    group_image: np.ndarray,
    d_groups: tuple[np.ndarray, np.ndarray],
    g_groups: tuple[np.ndarray, np.ndarray],
    tmin: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_similar_pairs` for masks: one ``maskUtils.iou`` call per image over the
    detections and objects of all its groups (a pair's IoU does not depend on the others in the
    call; pairs of different categories are dropped), the RLE objects built once."""
    (ds, dc), (gs, gc) = d_groups, g_groups
    if params.iou_type == "segm" and COMPILED_RLE:
        return _mask_pairs_compiled(gt, dets, g_rows, crowd, d_rows, d_groups, g_groups, tmin)
    d_list, g_list = ranges(ds, dc), ranges(gs, gc)
    d_grp, g_grp = np.repeat(np.arange(len(dc)), dc), np.repeat(np.arange(len(gc)), gc)
    all_d, all_g = dets.rles(d_rows[d_list]), gt_rles(gt, g_rows[g_list])
    d_at, g_at = np.r_[0, np.cumsum(dc)].tolist(), np.r_[0, np.cumsum(gc)].tolist()
    first = np.flatnonzero(np.r_[True, group_image[1:] != group_image[:-1]]).tolist() + [len(group_image)]
    out_d, out_g, out_v = [], [], []
    for s, e in pairwise(first):
        d0, d1, g0, g1 = d_at[s], d_at[e], g_at[s], g_at[e]
        d_rles, g_rles, g_crowd = all_d[d0:d1], all_g[g0:g1], crowd[g_list[g0:g1]]
        same = d_grp[d0:d1, None] == g_grp[None, g0:g1]
        sim = np.where(same, mask_iou(d_rles, g_rles, g_crowd), 0.0)
        if params.iou_type == "boundary":
            sim = boundary_similarity(sim, d_rles, g_rles, g_crowd, ratio=params.boundary_dilation_ratio, floor=tmin)
        hit = np.nonzero(same & (sim >= tmin))
        out_d.append(d_list[d0 + hit[0]])
        out_g.append(g_list[g0 + hit[1]])
        out_v.append(sim[hit])
    return np.concatenate(out_d), np.concatenate(out_g), np.concatenate(out_v)


def _mask_pairs_compiled(
    gt: GroundTruth,
    dets: Detections,
    g_rows: np.ndarray,
    crowd: np.ndarray,
    d_rows: np.ndarray,
    d_groups: tuple[np.ndarray, np.ndarray],
    g_groups: tuple[np.ndarray, np.ndarray],
    tmin: float,
    *,
    block: int = 1 << 15,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_mask_pairs` for segm by the compiled kernel: every (detection, object) pair of
    each group, the detections' strings straight from their Arrow column, groups of about
    ``block`` detections at a time (the decoded runs of a block are held at once)."""
    (ds, dc), (gs, gc) = d_groups, g_groups
    bounds = np.unique(np.r_[0, np.searchsorted(np.cumsum(dc), np.arange(block, int(dc.sum()), block)), len(dc)])
    out_d, out_g, out_v = [], [], []
    for s, e in pairwise(bounds.tolist()):
        d_list, g_list = ranges(ds[s:e], dc[s:e]), ranges(gs[s:e], gc[s:e])
        g_counts, g_size = gt_strings(gt, g_rows[g_list])
        d_at, g_at = np.cumsum(dc[s:e]) - dc[s:e], np.cumsum(gc[s:e]) - gc[s:e]  # in d_list, g_list
        pd, pg, _ = _all_pairs(d_at, dc[s:e], g_at, gc[s:e])
        rows = d_rows[d_list]
        sim = pair_mask_iou(take(dets.segm_counts, rows), dets.segm_size[rows], g_counts, g_size,
                            pd, pg, crowd[g_list])
        hit = sim >= tmin
        out_d.append(d_list[pd[hit]])
        out_g.append(g_list[pg[hit]])
        out_v.append(sim[hit])
    if not out_d:
        z = np.zeros(0, np.int64)
        return z, z.copy(), np.zeros(0)
    return np.concatenate(out_d), np.concatenate(out_g), np.concatenate(out_v)


def _all_pairs(ds: np.ndarray, dc: np.ndarray, gs: np.ndarray, gc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, object) pair of each group (``dc`` detections from ``ds``, ``gc``
    objects from ``gs``), detection-major: their indices and group."""
    sizes = dc * gc
    owner = np.repeat(np.arange(len(dc)), sizes)
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return ds[owner] + within // gc[owner], gs[owner] + within % gc[owner], owner


def gt_rles(gt: GroundTruth, rows: np.ndarray) -> list[dict]:
    """Ground-truth segmentations as RLE, as ``COCO.annToRLE`` converts them. Objects of one
    polygon are converted in one call per image size (``frPyObjects`` converts each polygon of
    a list on its own, and ``merge`` of one RLE is that RLE)."""
    from pycocotools import mask as mask_utils

    rows = np.asarray(rows, np.int64)
    sizes = gt.image_sizes[np.searchsorted(gt.image_ids, gt.ann_image_id[rows])].tolist()
    out: list[dict | None] = [None] * len(rows)
    single: dict[tuple[int, int], list[int]] = {}
    for i, (r, (h, w)) in enumerate(zip(rows.tolist(), sizes)):
        segm = gt.segmentation[r]
        if isinstance(segm, list):
            if len(segm) == 1 and len(segm[0]) > 4:  # (a first list of 4 would be read as a box)
                single.setdefault((h, w), []).append(i)
            else:
                out[i] = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        elif isinstance(segm["counts"], list):
            out[i] = mask_utils.frPyObjects(segm, h, w)
        else:
            out[i] = segm
    for (h, w), at in single.items():
        for i, rle in zip(at, mask_utils.frPyObjects([gt.segmentation[rows[i]][0] for i in at], h, w)):
            out[i] = rle
    return out


def gt_strings(gt: GroundTruth, rows: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """:func:`gt_rles` as compressed RLE strings (Arrow) and sizes ``(N, 2)``; objects of one
    polygon rasterised by the compiled kernel, the others by pycocotools."""
    rows = np.asarray(rows, np.int64)
    sizes = gt.image_sizes[np.searchsorted(gt.image_ids, gt.ann_image_id[rows])].astype(np.int64).reshape(-1, 2)
    segms = [gt.segmentation[r] for r in rows.tolist()]
    single = np.array([isinstance(s, list) and len(s) == 1 and len(s[0]) > 4 for s in segms], bool)
    at = np.flatnonzero(single)
    strings, done = polygon_rles([segms[i][0] for i in at.tolist()], sizes[at])
    if done.all() and len(at) == len(rows):
        return strings, sizes
    counts: list[bytes | None] = [None] * len(rows)
    for i, c in zip(at[done].tolist(), strings.filter(from_numpy(done)).to_pylist()):
        counts[i] = c
    single[at[~done]] = False  # coordinates far out: pycocotools' path, whatever it makes of them
    other = np.flatnonzero(~single)
    for i, rle in zip(other.tolist(), gt_rles(gt, rows[other])):
        counts[i] = rle["counts"] if isinstance(rle["counts"], bytes) else rle["counts"].encode()
    return binaries(counts, pa.large_binary()), sizes


def _kp_matrix(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The keypoint lists of ``rows`` as a matrix (lists of one length only; float64, or a run's
    float32, which every use widens) and the matrix row of each of ``rows``: where every list has
    that length, a view of all of them (no copy; ``rows`` index it), else the rows' lists gathered."""
    lengths = offsets[rows + 1] - offsets[rows]
    if len(rows) and (lengths != lengths[0]).any():
        raise EvalInputError(f"{what}: keypoint lists of different lengths {sorted(set(lengths.tolist()))}")
    width = int(lengths[0]) if len(rows) else 0
    n = len(offsets) - 1
    values = held(values, REALS)
    if width and offsets[0] == 0 and offsets[-1] == width * n and (np.diff(offsets) == width).all():
        return values[: width * n].reshape(n, width), rows
    idx = offsets[rows][:, None] + np.arange(width)[None, :]
    return np.ascontiguousarray(values[idx]), np.arange(len(rows))


def _sigmas_for(sigmas: dict[int, np.ndarray] | None, cat: int, dets: Detections, d_rows: np.ndarray) -> np.ndarray:
    if not sigmas or cat not in sigmas:
        raise EvalInputError(f"no OKS sigmas for keypoint category {cat}")
    s = sigmas[cat]
    counts = (dets.kp_offsets[d_rows + 1] - dets.kp_offsets[d_rows]) // 3
    wrong = np.flatnonzero(counts != len(s))
    if len(wrong):
        raise EvalInputError(f"detections of category {cat} have {int(counts[wrong[0]])} keypoints, the OKS sigmas {len(s)}")
    return s


def _greedy_match(
    pd: np.ndarray,
    pg: np.ndarray,
    pv: np.ndarray,
    d_key: np.ndarray,
    g_key: np.ndarray,
    crowd: np.ndarray,
    g_ig: np.ndarray,
    params: EvalParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detections with a candidate pair (local rows, ascending), the flat indices of their
    matched ``(candidate, area range, threshold)`` cells and each match's object (local row)."""
    A, T = g_ig.shape[1], len(params.iou_thrs)
    if len(pd) == 0:
        z = np.zeros(0, np.int64)
        return z, z.copy(), z.copy()
    thr = np.minimum(params.iou_thrs_array(), 1 - 1e-10)
    # Candidates, compacted per group; their order (rank / file order) is kept.
    cd, cd_inv = _unique_in(pd, len(d_key))
    cg, cg_inv = _unique_in(pg, len(g_key))
    grp_ids, d_first, ndet = _groups(d_key[cd])
    _, g_first, ngt = _groups(g_key[cg])
    d_local = np.arange(len(cd)) - np.repeat(d_first, ndet)
    g_local = np.arange(len(cg)) - np.repeat(g_first, ngt)
    g_grp = np.repeat(np.arange(len(grp_ids)), ngt)
    pair_grp = np.searchsorted(grp_ids, d_key[pd])
    local = np.full((len(cd), A, T), -1, np.int32)
    if _match is not None:  # the compiled loop, every group at once
        iou_at = np.r_[0, np.cumsum(ndet * ngt)]
        iou = np.full(int(iou_at[-1]), -1.0)
        iou[iou_at[pair_grp] + d_local[cd_inv] * ngt[pair_grp] + g_local[cg_inv]] = pv
        _match.greedy(iou, iou_at, np.r_[0, np.cumsum(ndet)], np.r_[0, np.cumsum(ngt)], crowd[cg].astype(np.uint8),
                      np.ascontiguousarray(g_ig[cg], dtype=np.uint8), np.ascontiguousarray(thr, dtype=np.float64), local)
        return _matched(cd, cg, g_first, ndet, local, A * T)

    # A group with one candidate object needs no loop: at each threshold the first detection
    # (in rank order) that reaches it takes it, or every one that does if it is a crowd.
    single = ngt == 1
    sp = np.flatnonzero(single[pair_grp])  # their pairs: one per detection
    if len(sp):
        sp = sp[np.argsort(cd_inv[sp], kind="stable")]
        det, grp = cd_inv[sp], pair_grp[sp]
        ok = pv[sp][:, None] >= thr  # (n, T)
        reached = np.cumsum(ok, axis=0, dtype=np.int32)
        starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
        reached -= np.repeat(reached[starts] - ok[starts], np.diff(np.r_[starts, len(grp)]), axis=0)
        take = ok & (crowd[cg[g_first[grp]]][:, None] | (reached == 1))
        local[det] = np.where(take, 0, -1)[:, None, :]

    # The other groups in batches of equal candidate objects, the greedy loop over ranks.
    order = np.flatnonzero(~single)
    order = order[np.argsort(-ngt[order], kind="stable")]
    sorted_ngt = ngt[order]
    start = 0
    while start < len(order):
        gmax = int(sorted_ngt[start])
        size = max(1, _CHUNK_ELEMENTS // (gmax * max(A * T, int(ndet.max()))))
        size = min(size, int(np.searchsorted(-sorted_ngt, -gmax, side="right")) - start)
        batch = order[start:start + size]
        batch = batch[np.argsort(-ndet[batch], kind="stable")]
        P, dmax = len(batch), int(ndet[batch[0]])
        pos = np.full(len(grp_ids), -1, np.int64)
        pos[batch] = np.arange(P)
        sel = pos[pair_grp] >= 0
        iou = np.full((P, dmax, gmax), -1.0)
        iou[pos[pair_grp[sel]], d_local[cd_inv[sel]], g_local[cg_inv[sel]]] = pv[sel]
        gs = pos[g_grp] >= 0
        crowd_b = np.zeros((P, gmax), bool)
        crowd_b[pos[g_grp[gs]], g_local[gs]] = crowd[cg[gs]]
        ig_b = np.ones((P, A, gmax), bool)
        ig_b[pos[g_grp[gs]], :, g_local[gs]] = g_ig[cg[gs]]
        _greedy(iou, crowd_b, ig_b, ndet[batch], d_first[batch], thr, local)
        start += size
    return _matched(cd, cg, g_first, ndet, local, A * T)


def _matched(cd, cg, g_first, ndet, local, cells_per_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_greedy_match``'s result from ``local`` (each candidate's object per cell, -1: none)."""
    cells = np.flatnonzero(local >= 0)
    d_grp = np.repeat(np.arange(len(ndet)), ndet)
    return cd, cells, cg[g_first[d_grp[cells // cells_per_det]] + local.reshape(-1)[cells]]


def _greedy(
    iou: np.ndarray,
    crowd: np.ndarray,
    ig: np.ndarray,
    ndet: np.ndarray,
    first: np.ndarray,
    thr: np.ndarray,
    out: np.ndarray,
) -> None:
    """The greedy loop over detection ranks for a batch of groups sorted by ``ndet`` descending.

    ``iou (P, D, G)`` (-1 where not a candidate), ``crowd (P, G)``, ``ig (P, A, G)``; writes the
    chosen object of group ``p``'s ``s``-th detection into ``out[first[p] + s]`` as ``(A, T)``.
    """
    P, D, G = iou.shape
    A, T = ig.shape[1], len(thr)
    taken = np.zeros((P, A, T, G), bool)
    thr_b = thr[None, None, :, None]
    crowd_b = crowd[:, None, None, :]
    ig_b = ig[:, :, None, :]
    for s in range(D):
        n = int(np.count_nonzero(ndet > s))
        row = iou[:n, s][:, None, None, :]
        ok = (row >= thr_b) & (~taken[:n] | crowd_b[:n])
        reg = ok & ~ig_b[:n]
        ign = ok & ig_b[:n]
        m = np.where(
            reg.any(-1),
            _last_argmax(np.where(reg, row, -np.inf)),
            np.where(ign.any(-1), _last_argmax(np.where(ign, row, -np.inf)), -1),
        )
        out[first[:n] + s] = m
        p, a, t = np.nonzero(m >= 0)
        taken[p, a, t, m[p, a, t]] = True


def _last_argmax(x: np.ndarray) -> np.ndarray:
    """Index of the last maximum along the last axis."""
    return x.shape[-1] - 1 - np.argmax(x[..., ::-1], axis=-1)
