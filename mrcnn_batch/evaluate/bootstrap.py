"""Bootstrap replicates of ``COCOeval`` over images, re-accumulated from matches computed once.

A replicate evaluates a resample of the evaluated images, drawn with replacement; an image drawn
``w`` times counts ``w`` times. Exactly: a replicate is ``COCOeval`` on the data set in which
each image is present ``w`` times, its copies under new ids that sort right after the
original's (every copy of an image before the next image). Matching is per image, so a copy's
matches are the original's; only accumulation changes, and it is done here with the draw
counts as integer weights, many replicates at once, with numpy.

Per cell (category k, maxDet m, area range a, IoU threshold t), pycocotools orders the cell's
detections by (score descending, image id, rank in the image) and reads the precision at recall
threshold r as ``max{pr_j : rc_j >= r}`` over the positions j of that order (its right-to-left
running maximum, then ``searchsorted``), 0 where no position reaches r. A position that is not
a true positive is dominated by the last true positive before it (same recall, precision no
lower), so the maximum is taken over true positives only: for each, its weighted cumulative
true- and false-positive counts. Those are cumulative sums over the cell's true positives and
over its false positives, the latter written as a dense part (the false positives at the last
IoU threshold, one list per maxDet and area range) plus a sparse correction per threshold. Of
true positives with no false positive between them only the last is kept: it dominates the
others under any weights (weighted out of a replicate, it reads the state of the last present
position, or (0, 0), whose precision 0 is the default anyway).

Ties: the detections of one image, category and score form a *run*; the copies of an image
repeat the run as a whole (run, run, ...), not each detection in place. A true positive in a run
without false positives needs only its last copy (which dominates the earlier ones); in a run
with both, every copy is a candidate. Runs of one detection, nearly all of them with real
scores, are the first case.

With every weight 1 the precision and recall arrays, and so ``stats`` and per-category AP, are
pycocotools' bit for bit, and so is every replicate against pycocotools on the duplicated data
(``tests/test_eval_compare.py``): the same integer counts give the same floating-point ratios,
and maxima are exact. pycocotools' ``scores`` array is not computed (no summary number uses it).
Cost per replicate: a gather and a cumulative sum over each list, then some twenty passes over
the kept true positives; about 20 ms for 5,000 images with 100 detections each, whatever the
IoU type (matching is done before).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mrcnn_batch.evaluate.accumulate import Accumulated
from mrcnn_batch.evaluate.match import CODE_FP, CODE_TP, MatchResult, unpack_codes
from mrcnn_batch.evaluate.params import EvalParams
from mrcnn_batch.evaluate.summary import items_for, stats

_CHUNK_BYTES = 64 << 20  # bound on the working arrays of one batch of replicates


def _concat(parts: list[np.ndarray], dtype: type = np.int64) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def resample_counts(n_images: int, *, replicates: int, seed: int, chunk: int = 1) -> Iterator[np.ndarray]:
    """``(b, n_images)`` int32 batches (``b <= chunk``, ``replicates`` rows in all): how often each
    image is drawn in each replicate (``n_images`` draws with replacement). Replicate ``i`` has
    its own random stream spawned from ``seed``, so the draws do not depend on ``chunk``."""
    if n_images < 1 or replicates < 1 or chunk < 1:
        raise ValueError(f"need n_images, replicates and chunk >= 1, got {n_images}, {replicates}, {chunk}")
    streams = np.random.SeedSequence(seed).spawn(replicates)
    for lo in range(0, replicates, chunk):
        rows = [np.bincount(np.random.default_rng(s).integers(0, n_images, n_images), minlength=n_images)
                for s in streams[lo:lo + chunk]]
        yield np.stack(rows).astype(np.int32)


@dataclass(frozen=True, eq=False)
class ReplicateStats:
    """Summary numbers of a batch of replicates."""

    stats: np.ndarray  # (B, S): pycocotools' stats per replicate (-1: nothing to measure)
    category_ap: np.ndarray  # (B, K): AP per category, area all, largest maxDet (NaN: no ground truth)


@dataclass(frozen=True, eq=False)
class _Reads:
    """Where candidates read their weighted counts: true positives up to ``tp_at`` of the
    true-positive list, false positives before ``f_at`` of the dense list plus before ``d_at`` of
    the corrections, each less the reads at its ``cell``'s start; ``gt_col``: the column of the
    ground-truth counts."""

    tp_at: np.ndarray
    f_at: np.ndarray
    d_at: np.ndarray
    cell: np.ndarray
    gt_col: np.ndarray

    def take(self, rows: np.ndarray) -> _Reads:
        return _Reads(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


class WeightedAccumulator:
    """``COCOeval.accumulate`` of one IoU type for image weights, from its per-image matches.

    ``result`` holds the matches of (at least) ``image_ids`` (sorted); ``gt_counts (I, K, A)`` the
    non-ignored ground truth per image (``match.ground_truth_counts``). The index structures are
    built once here; :meth:`accumulate` then takes a ``(B, I)`` weight matrix per call.
    ``summary_only``: compute precision only for the maxDets that ``stats`` and per-category AP
    read (pycocotools' AP reads maxDet 100 alone: a third of the work); the other maxDets'
    precision is NaN, their recall is computed.
    """

    def __init__(
        self, result: MatchResult, gt_counts: np.ndarray, *, params: EvalParams, category_ids: np.ndarray,
        image_ids: np.ndarray, summary_only: bool = False,
    ) -> None:
        self.params = params
        self.category_ids = np.asarray(category_ids, np.int64)
        self.image_ids = np.asarray(image_ids, np.int64)
        I, K = len(self.image_ids), len(self.category_ids)
        A, T, M, R = len(params.area_rngs), len(params.iou_thrs), len(params.max_dets), len(params.rec_thrs)
        if gt_counts.shape != (I, K, A):
            raise ValueError(f"gt_counts has shape {gt_counts.shape}, expected {(I, K, A)}")
        self._shape = (I, K, A, T, M, R)
        gi, gc = np.nonzero(gt_counts.reshape(I, K * A))
        self._gt_entries = (gi, gc, gt_counts.reshape(I, K * A)[gi, gc])  # image, (k, a) column, count
        self._thresholds = _ThresholdCounter(params.rec_thrs_array())
        read = {it.max_dets for it in items_for(params) if it.ap} | {params.max_dets[-1]}
        self._prec_m = [m for m, d in enumerate(params.max_dets) if d in read or not summary_only]

        # The detections in pycocotools' order within a category: score desc, image id, rank.
        keep = np.flatnonzero(np.isin(result.image_id, self.image_ids))
        order = keep[np.lexsort((result.rank[keep], result.image_id[keep], -result.score[keep],
                                 result.category_index[keep]))]
        N = len(order)
        cat = result.category_index[order].astype(np.int64)
        img = np.searchsorted(self.image_ids, result.image_id[order])
        rank, score = result.rank[order], result.score[order]
        codes = unpack_codes(result.codes[order], *result.cells)
        tp, fp = codes == CODE_TP, codes == CODE_FP  # (N, A, T)
        self._dets_per_image = np.bincount(img, minlength=I)
        if N:  # runs: the detections of one category, image and score (consecutive here)
            new_run = np.r_[True, (cat[1:] != cat[:-1]) | (img[1:] != img[:-1]) | (score[1:] != score[:-1])]
            starts = np.flatnonzero(new_run)
            run = np.cumsum(new_run) - 1
            run_start, run_end = starts[run], (np.r_[starts[1:], N] - 1)[run]
        else:
            run_start = run_end = np.zeros(0, np.int64)

        # Lists sorted by key = segment * N + position: the true positives (segment: the cell
        # ((m * A + a) * T + t) * K + k), and for the maxDets whose precision is computed the dense
        # false positives (segment (m, a, k)) and their corrections per threshold (the cell).
        f_keys, f_imgs, d_keys, d_imgs, d_vals, t_keys, t_a, t_t = [], [], [], [], [], [], [], []
        for m, max_det in enumerate(params.max_dets):
            kept = rank < max_det
            a_, t_, n_ = np.nonzero((tp & kept[:, None, None]).transpose(1, 2, 0))
            t_keys.append((((m * A + a_) * T + t_) * K + cat[n_]) * N + n_)
            t_a.append(a_)
            t_t.append(t_)
            if m not in self._prec_m:
                continue
            dense = fp[:, :, T - 1] & kept[:, None]  # (N, A)
            a_, n_ = np.nonzero(dense.T)
            f_keys.append(((m * A + a_) * K + cat[n_]) * N + n_)
            f_imgs.append(img[n_])
            delta = (fp & kept[:, None, None]).astype(np.int8) - dense[:, :, None]
            a_, t_, n_ = np.nonzero(delta.transpose(1, 2, 0))
            d_keys.append((((m * A + a_) * T + t_) * K + cat[n_]) * N + n_)
            d_imgs.append(img[n_])
            d_vals.append(delta[n_, a_, t_])
        f_key, self._f_img = _concat(f_keys), _concat(f_imgs)
        d_key, self._d_img, self._d_val = _concat(d_keys), _concat(d_imgs), _concat(d_vals, np.int32)
        t_key, ta, tt = _concat(t_keys), _concat(t_a), _concat(t_t)
        tpos, cell = (t_key % N, t_key // N) if N else (t_key, t_key)
        self._t_img = img[tpos]
        self._cell_tp_bounds = np.searchsorted(t_key, np.arange(M * A * T * K + 1) * N)
        # Candidates come from the cells whose precision is computed, numbered in (m, a, t, k)
        # order; each reads its counts at positions of the lists, less the reads at its cell's start.
        ATK = A * T * K
        self._n_cells = len(self._prec_m) * ATK
        full_cell = (np.asarray(self._prec_m, np.int64)[:, None] * ATK + np.arange(ATK)).reshape(-1)
        fcell = ((full_cell // ATK * A) + full_cell % ATK // (T * K)) * K + full_cell % K  # its (m, a, k)
        self._cell_lo = (np.searchsorted(t_key, full_cell * N), np.searchsorted(f_key, fcell * N),
                         np.searchsorted(d_key, full_cell * N))
        pool = np.flatnonzero(np.isin(cell // ATK, self._prec_m))
        tpos, cell, ta, tt = tpos[pool], cell[pool], ta[pool], tt[pool]
        pcell = np.searchsorted(full_cell, cell)
        gt_col = cat[tpos] * A + ta

        def reads(rows: np.ndarray, at: np.ndarray) -> _Reads:
            """Reads for candidates ``rows`` of the pool, false positives counted before ``at``."""
            return _Reads(tp_at=pool[rows] + 1, f_at=np.searchsorted(f_key, fcell[pcell[rows]] * N + at),
                          d_at=np.searchsorted(d_key, cell[rows] * N + at), cell=pcell[rows], gt_col=gt_col[rows])

        # Runs with both true and false positives in a cell ("mixed"): every copy of each of
        # their true positives is a candidate, counted from the run's start; u, v: true and false
        # positives of the run up to and including it, U, V: in the whole run (within the maxDet).
        u, U, v, V = (np.zeros(len(pool), np.int64) for _ in range(4))
        multi = np.flatnonzero(run_end[tpos] > run_start[tpos])
        if len(multi):
            ms = np.flatnonzero(run_end > run_start)
            first, last = np.searchsorted(ms, run_start[ms]), np.searchsorted(ms, run_end[ms])
            j = np.searchsorted(ms, tpos[multi])
            for m in self._prec_m:
                sel = cell[multi] // ATK == m
                kept = (rank[ms] < params.max_dets[m])[:, None, None]
                for flags, inc, tot in ((tp, u, U), (fp, v, V)):
                    cs = np.cumsum(flags[ms] & kept, axis=0, dtype=np.int32)
                    before = np.where((first > 0)[:, None, None], cs[np.maximum(first - 1, 0)], 0)
                    idx = (j[sel], ta[multi][sel], tt[multi][sel])
                    inc[multi[sel]] = (cs - before)[idx]
                    tot[multi[sel]] = (cs[last] - before)[idx]
        mixed = V > 0
        mx = np.flatnonzero(mixed)
        self._mixed = reads(mx, run_start[tpos[mx]])
        self._mixed_img, self._u, self._U, self._v, self._V = img[tpos[mx]], u[mx], U[mx], v[mx], V[mx]

        # Every other true positive is dominated by the next one of its cell unless a false
        # positive lies between them (or the next is mixed): only the last of each stretch counts.
        every = reads(np.arange(len(pool)), tpos)
        d_cum = np.r_[0, np.cumsum(self._d_val)]
        fp_before = (every.f_at - self._cell_lo[1][every.cell]) + (d_cum[every.d_at] - d_cum[self._cell_lo[2][every.cell]])
        nxt = np.minimum(np.arange(1, len(pool) + 1), max(len(pool) - 1, 0))
        last_of_cell = np.r_[cell[1:] != cell[:-1], True] if len(pool) else mixed
        stretch_end = last_of_cell | (fp_before[nxt] > fp_before) | mixed[nxt]
        self._single = every.take(np.flatnonzero(stretch_end & ~mixed))

        # the lists' columns of the weight matrix, each after a leading column I (a zero weight)
        self._t_cols, self._f_cols, self._d_cols = (np.r_[I, x] for x in (self._t_img, self._f_img, self._d_img))
        self._d_vals = np.r_[0, self._d_val].astype(np.int32)
        self._entries_per_image = max(  # bounds the cumulative sums: each image adds entries x weight
            [int(np.bincount(x, minlength=I).max(initial=0)) for x in (self._f_img, self._d_img, self._t_img)])
        n_points = len(self._single.cell) + 4 * len(mx)
        self._row_bytes = (12 * (len(f_key) + len(d_key) + len(t_key)) + 64 * n_points
                           + 8 * self._n_cells * (R + 1) + 16 * T * R * K * A * M)

    @property
    def batch_size(self) -> int:
        """Replicates per :meth:`accumulate` call that keep its working arrays near 64 MiB."""
        return int(max(1, min(64, _CHUNK_BYTES // max(self._row_bytes, 1))))

    def accumulate(self, weights: np.ndarray) -> list[Accumulated]:
        """One :class:`Accumulated` per row of ``weights (B, I)`` (how many times each of
        ``image_ids`` counts): ``COCOeval.accumulate``'s precision and recall (``scores``: None)."""
        precision, recall, npig, n_dets = self._arrays(weights)
        K, A = self._shape[1:3]
        return [
            Accumulated(params=self.params, category_ids=self.category_ids, image_ids=self.image_ids,
                        precision=precision[b], recall=recall[b], scores=None, npig=npig[b].reshape(K, A),
                        num_detections=int(n_dets[b]))
            for b in range(len(precision))
        ]

    def replicate_stats(self, weights: np.ndarray) -> ReplicateStats:
        """pycocotools' ``stats`` and the per-category AP of each replicate of ``weights (B, I)``."""
        accs = self.accumulate(weights)
        if not accs:
            raise ValueError("no replicates")
        precision = np.stack([a.precision[:, :, :, 0, -1] for a in accs])  # (B, T, R, K)
        B, K = len(accs), len(self.category_ids)
        # per category: the mean of its (T, R) precisions, all valid or all -1 (summary.per_category)
        by_cat = np.ascontiguousarray(precision.transpose(0, 3, 1, 2)).reshape(B, K, -1)
        with np.errstate(invalid="ignore"):
            ap = np.where((by_cat > -1).all(axis=2), by_cat.mean(axis=2), np.nan)
        return ReplicateStats(stats=np.stack([stats(a) for a in accs]), category_ap=ap)

    def _arrays(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``precision (B, T, R, K, A, M)``, ``recall (B, T, K, A, M)``, ``npig (B, K * A)`` and
        the number of detections of each replicate."""
        I, K, A, T, M, R = self._shape
        W = np.asarray(weights)
        if W.ndim != 2 or W.shape[1] != I:
            raise ValueError(f"weights must have shape (B, {I}), got {W.shape}")
        if not np.issubdtype(W.dtype, np.integer) or (W < 0).any():
            raise ValueError("weights must be non-negative integers")
        B, S = len(W), self._n_cells
        # The cumulative sums run over the rows one after another (a flat cumsum is several times
        # faster than one per row): every read subtracts another read of its own row. Gathers
        # along rows use np.take (fancy indexing is several times slower there for a few rows).
        total = int(W.sum(dtype=np.int64))
        dtype = np.int32 if total * max(self._entries_per_image, 1) < 2**31 else np.int64
        W = np.concatenate([W, np.zeros((B, 1), W.dtype)], axis=1).astype(dtype)  # column I: a zero
        gi, gc, gn = self._gt_entries
        npig = np.stack([np.bincount(gc, np.take(row, gi) * gn, minlength=K * A) for row in W]).astype(np.int64)
        n_gt = np.maximum(npig, 1).astype(np.float64)  # cells without ground truth get -1 below

        def cumsum(cols: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
            """``(B, len(cols))``: 0, then the running sum of the weights of ``cols[1:]``."""
            x = np.take(W, cols, axis=1)
            if values is not None:
                x *= values
            return np.cumsum(x.reshape(-1), dtype=dtype).reshape(B, -1)

        cs_t, cs_f, cs_d = cumsum(self._t_cols), cumsum(self._f_cols), cumsum(self._d_cols, self._d_vals)

        t_lo, f_lo, d_lo = self._cell_lo
        base_tp = np.take(cs_t, t_lo, axis=1)  # (B, S): the counts before each cell
        base_fp = np.take(cs_f, f_lo, axis=1) + np.take(cs_d, d_lo, axis=1)

        def counts(r: _Reads) -> tuple[np.ndarray, np.ndarray]:
            tp = np.take(cs_t, r.tp_at, axis=1)
            tp -= np.take(base_tp, r.cell, axis=1)
            fp = np.take(cs_f, r.f_at, axis=1)
            fp += np.take(cs_d, r.d_at, axis=1)
            fp -= np.take(base_fp, r.cell, axis=1)
            return tp, fp

        # grid[b, i, cell]: the best precision among candidates reaching exactly the first i
        # recall thresholds (pycocotools: rc = tp / npig, rc >= threshold)
        grid = np.zeros((B, R + 1, S))
        offset = (np.arange(B) * (R + 1) * S)[:, None]

        def add(tp: np.ndarray, fp: np.ndarray, r: _Reads) -> None:
            tpf = tp.astype(np.float64)
            pr = fp.astype(np.float64)
            pr += tpf
            pr += np.spacing(1)
            np.divide(tpf, pr, out=pr)  # pycocotools: tp / (fp + tp + eps)
            tpf /= np.take(n_gt, r.gt_col, axis=1)
            at = self._thresholds.count(tpf)
            at *= S
            at += r.cell
            at += offset
            np.maximum.at(grid.reshape(-1), at.reshape(-1), pr.reshape(-1))

        # candidates: the last true positive of each stretch ...
        add(*counts(self._single), self._single)
        # ... and every copy of the true positives of mixed runs; an absent copy reads (0, 0)
        r = self._mixed
        if len(r.cell):
            w = np.take(W, self._mixed_img, axis=1)
            tp_before, fp_before = counts(r)
            tp_before -= w * self._u
            for c in range(int(w.max(initial=0))):
                live = w > c
                add(np.where(live, tp_before + c * self._U + self._u, 0),
                    np.where(live, fp_before + c * self._V + self._v, 0), r)
        for i in range(R - 1, -1, -1):  # best at i or more thresholds
            np.maximum(grid[:, i], grid[:, i + 1], out=grid[:, i])

        has_gt = (npig > 0).reshape(B, K, A).transpose(0, 2, 1)  # (B, A, K)
        q = grid[:, 1:].reshape(B, R, len(self._prec_m), A, T, K)  # precision at threshold r
        precision = np.full((B, R, M, A, T, K), np.nan)
        precision[:, :, self._prec_m] = np.where(has_gt[:, None, None, :, None, :], q, -1.0)
        bounds = self._cell_tp_bounds
        tp_total = (np.take(cs_t, bounds[1:], axis=1) - np.take(cs_t, bounds[:-1], axis=1)).reshape(B, M, A, T, K)
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = np.where(has_gt[:, None, :, None, :],
                              tp_total / npig.reshape(B, K, A).transpose(0, 2, 1)[:, None, :, None, :], -1.0)
        n_dets = W[:, :I].astype(np.int64) @ self._dets_per_image
        return precision.transpose(0, 4, 1, 5, 3, 2), recall.transpose(0, 3, 4, 2, 1), npig, n_dets


class _ThresholdCounter:
    """How many of the sorted thresholds each value reaches (``thresholds <= value``), as
    ``searchsorted(side="right")`` but by a table on a uniform grid: a few passes instead of a
    binary search per value."""

    def __init__(self, thresholds: np.ndarray) -> None:
        self.thresholds = np.asarray(thresholds, np.float64)
        gaps = np.diff(self.thresholds)
        self.lo = float(self.thresholds[0]) if len(self.thresholds) else 0.0
        span = float(self.thresholds[-1]) - self.lo if len(self.thresholds) else 0.0
        # a grid fine enough that two of its cells hold at most one threshold
        self.cells = int(4 * span / gaps.min()) if len(gaps) and gaps.min() > 0 and span / gaps.min() < 1 << 20 else 0
        if self.cells:
            self.scale = self.cells / span
            self.table = np.searchsorted(self.thresholds, self.lo + np.arange(self.cells + 2) / self.scale, side="right")
            self.above = np.r_[self.thresholds, np.inf]  # above[k]: the threshold after the first k
            self.below = np.r_[-np.inf, self.thresholds]  # below[k]: the last of the first k

    def count(self, values: np.ndarray) -> np.ndarray:
        if not self.cells:
            return np.searchsorted(self.thresholds, values, side="right")
        x = values - self.lo
        x *= self.scale
        k = np.take(self.table, x.astype(np.int64), mode="clip")  # a guess, off by at most one either way
        k += np.take(self.above, k) <= values
        k -= np.take(self.below, k) > values
        return k
