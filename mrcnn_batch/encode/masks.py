"""Pasting predicted masks into the image and encoding them as COCO RLE, all masks of an image at once.

Data contract (COCO, pycocotools ``mask.py``): a mask of an H x W image is encoded as run
lengths over its pixels in column-major order (x outer, y inner), starting with a run of zeros;
``counts`` is pycocotools' compressed string of those runs and ``size`` is ``[H, W]``.

Exactness: the result decodes to exactly
``torchvision.models.detection.roi_heads.paste_masks_in_image(masks, boxes, (H, W)) > threshold``
as torch (2.14) computes it on the CPU, whatever device the masks are on (torchvision's paste on
a GPU runs another kernel, which can differ in pixels within rounding of the threshold; ours
gives the same bits on every device). torchvision pads the
M x M probabilities by one pixel (S = M + 2), scales the box by S / M, rounds it to int64 and
resizes the S x S grid to the box (``F.interpolate``, bilinear, ``align_corners=False``). For an
output index ``o`` of a side of ``n`` pixels that kernel takes, in float32, the source position
``s = fma(S / n, o + 0.5, -0.5)`` clamped at 0, the row ``i = floor(s)`` (at most S - 1; the
next one, ``i + 1``, not past S - 1), ``l1 = s - i`` and ``l0 = 1 - l1`` (a plain copy when
n == S). Boxes with ``h + w > 128`` are interpolated along rows first, ``t = fma(p00, b0, p01 * b1)``,
``v = fma(t0, a0, t1 * a1)``; smaller ones with four products,
``v = fma(p11, a1 b1, fma(p10, a1 b0, fma(p00, a0 b0, p01 * a0 b1)))``. We repeat that arithmetic
(fused multiply-adds done exactly in float64, ``_fma``) and compare with the threshold rounded
to float32, as ``tensor > float`` does.

Only pixels next to a change are computed. Down a box column the value is, to within rounding,
piecewise linear over the S source rows: in source cell (k, k + 1) it runs from the column's
value ``t[k]`` to ``t[k + 1]``. ``delta``, 2**-19 of the largest probability (32 float32 steps
of it), is above every rounding involved (about 13 steps at most). Where a cell's ``t`` come
within ``2 delta`` of the threshold we solve for the rows of the cell within ``2 delta`` of it
and widen them past the rounding of the row mapping (a "window"); any two neighbouring rows that
differ then lie in one window, or in two windows that meet (the later one is made to start on
the last row of the earlier). Both rows of each such pair are valued from ``t``, and exactly
where that is within ``delta`` of the threshold. Changes are the pairs that flip, the first row
of a column if it is on and the row below its last row if that is on. A change at linear index
``x * H + y`` at the bottom of one column and another at the top of the next cancel where a box
spans the height of the image.

Two implementations give the same strings. The compiled kernel (``_paste.c``, built when the
package is installed; the default where it was) takes the padded masks and the rounded boxes
on the host and walks each mask's box columns: source cells whose four corners clear the
threshold by far more than any rounding give all their pixels, the rest are computed pixel by
pixel with the arithmetic above (C's ``fmaf``), and the runs become pycocotools' string
directly. It releases the GIL. The torch ops below are the fallback (and run on any device).

The torch ops run on the masks' device, vectorised over all masks of an image: no
op and no host sync per mask. An image takes six small syncs (sizes; one more where some value
is too close to call from ``t``) and one transfer of the change positions. The host side (numpy,
pycocotools) turns those into runs, areas and strings.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

try:  # the compiled kernel (_paste.c), built when the package is installed
    from mrcnn_batch.encode import _paste
except ImportError:  # a checkout run from its folder, or installed where nothing compiles
    _paste = None

COMPILED = _paste is not None

SMALL_BOX_SIDES = 128  # torch's CPU kernel takes the four-product route when h + w <= this
DELTA_SCALE = 2.0**-19  # margin, relative to the largest |probability|: 32 float32 ulps of it,
# above the rounding both of the kernel's arithmetic and of ours (at most about 13 ulps)
ROW_SLACK = 2.0**-6  # rows, beyond the rounding of the mapping from source rows to box rows
MAX_SIDE = 2**24  # box coordinates beyond this are refused (float32 sizes, int32 indices)


def paste_and_encode(
    masks: torch.Tensor, boxes: torch.Tensor, *, height: int, width: int, threshold: float = 0.5,
    compiled: bool | None = None,
) -> tuple[list[dict], np.ndarray]:
    """COCO RLEs and pixel areas of ``masks`` (N x 1 x M x M probabilities) in their ``boxes``.

    ``boxes`` are (x1, y1, x2, y2) in the pixels of the ``height`` x ``width`` image. Masks are
    taken in float32; a box that misses the image gives an empty mask. ``compiled``: the
    compiled kernel (``_paste.c``, one pass over the box columns on the CPU, the GIL released)
    or the torch ops below (on the masks' device); by default the kernel where it was built.
    Both give the same strings.
    """
    if threshold < 0:
        raise ValueError(f"mask threshold must be >= 0 (pixels outside boxes are 0), got {threshold}")
    if height * width >= 2**31:
        raise ValueError(f"images up to 2**31 pixels are encoded, got {height} x {width}")
    n = masks.shape[0]
    if n == 0:
        return [], np.zeros(0, dtype=np.int64)
    if compiled is None:
        compiled = COMPILED
    if compiled:
        if _paste is None:
            raise RuntimeError("the compiled paste kernel was not built: reinstall the package where a C compiler is at hand")
        return _encode_compiled(masks, boxes, height=height, width=width, threshold=threshold)
    finite = torch.isfinite(masks.reshape(n, -1)).all(1)
    if not bool(finite.all()):  # NaN or infinities (a diverged model): those masks by torchvision's paste
        return _encode_in_parts(masks, boxes, finite.cpu().numpy(), height=height, width=width, threshold=threshold)
    positions, owners = change_positions(masks, boxes, height=height, width=width, threshold=threshold)
    return runs_to_rles(positions, owners, n, height=height, width=width)


def _encode_in_parts(masks, boxes, finite: np.ndarray, *, height: int, width: int, threshold: float):
    """The torch ops for the finite masks; torchvision's paste on the CPU and pycocotools for the
    others (the windows of ``change_positions`` assume finite values)."""
    rles: list = [None] * len(finite)
    areas = np.zeros(len(finite), dtype=np.int64)
    keep = np.flatnonzero(finite)
    if len(keep):
        index = torch.from_numpy(keep).to(masks.device)
        part, part_areas = paste_and_encode(masks[index], boxes[index], height=height, width=width, threshold=threshold, compiled=False)
        for i, rle in zip(keep.tolist(), part):
            rles[i] = rle
        areas[keep] = part_areas
    for i in np.flatnonzero(~finite).tolist():
        one = masks[i : i + 1].float().cpu()
        box = boxes[i : i + 1].float().cpu()
        pasted = _paste_one(one, box, height, width) > threshold
        rle = mask_utils.encode(np.asfortranarray(pasted.numpy().astype(np.uint8)))
        rles[i] = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        areas[i] = int(pasted.sum())
    return rles, areas


def _encode_compiled(
    masks: torch.Tensor, boxes: torch.Tensor, *, height: int, width: int, threshold: float
) -> tuple[list[dict], np.ndarray]:
    """``paste_and_encode`` by the compiled kernel: torchvision pads the masks and expands and
    rounds the boxes, the kernel interpolates, thresholds and encodes (one copy to the host)."""
    padded, scale = expand_masks(masks.float(), padding=1)
    box = expand_boxes(boxes.to(padded.device, torch.float32), scale).to(torch.int64)
    grid = padded[:, 0].contiguous().cpu().numpy()
    box = box.cpu().numpy()
    _refuse_far(int(np.abs(box).max()))
    strings, areas = _paste.encode(grid, len(grid), grid.shape[-1], box, height, width, threshold)
    return [{"size": [height, width], "counts": s} for s in strings], np.frombuffer(areas, dtype=np.int64).copy()


def _refuse_far(far: int) -> None:
    """Refuse rounded, expanded boxes with a coordinate ``far`` beyond ``MAX_SIDE`` (every path)."""
    if far > MAX_SIDE:
        raise ValueError(f"mask boxes must lie within {MAX_SIDE} pixels of the image, got a coordinate of {far}")


def _paste_one(mask: torch.Tensor, box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's paste of one mask (1 x 1 x M x M, CPU) into the image; empty where its box
    misses the image (torchvision's own raises there)."""
    padded, scale = expand_masks(mask, padding=1)
    x0, y0, x1, y1 = expand_boxes(box, scale).to(torch.int64)[0].tolist()
    _refuse_far(max(abs(x0), abs(y0), abs(x1), abs(y1)))
    out = torch.zeros(height, width)
    xa, xb, ya, yb = max(x0, 0), min(x1 + 1, width), max(y0, 0), min(y1 + 1, height)
    if xa < xb and ya < yb:
        size = (max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1))
        resized = F.interpolate(padded, size=size, mode="bilinear", align_corners=False)[0, 0]
        out[ya:yb, xa:xb] = resized[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out


class Columns(NamedTuple):
    """Every box column inside the image: its mask, source columns and weights."""

    mask: torch.Tensor
    j0: torch.Tensor
    j1: torch.Tensor
    b0: torch.Tensor
    b1: torch.Tensor


class Rows(NamedTuple):
    """Every box row inside the image, mask by mask: its source row and weight."""

    i0: torch.Tensor
    a1: torch.Tensor


def change_positions(
    masks: torch.Tensor, boxes: torch.Tensor, *, height: int, width: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Column-major linear positions where each mask changes value (sorted by mask, then position)."""
    padded, scale = expand_masks(masks.float(), padding=1)
    grid = padded[:, 0].contiguous()  # N x S x S, [mask, source row, source column]
    n, size = grid.shape[0], grid.shape[-1]
    dev = grid.device
    box = expand_boxes(boxes.to(dev, torch.float32), scale).to(torch.int64)
    x0, y0, x1, y1 = box.unbind(1)
    bw, bh = (x1 - x0 + 1).clamp(min=1), (y1 - y0 + 1).clamp(min=1)
    xa, xb = x0.clamp(min=0), (x1 + 1).clamp(max=width)
    ya, yb = y0.clamp(min=0), (y1 + 1).clamp(max=height)
    meets = (xa < xb) & (ya < yb)
    ncols, nrows = torch.where(meets, xb - xa, 0), torch.where(meets, yb - ya, 0)
    n_cols, n_rows, far = torch.stack([ncols.sum(), nrows.sum(), box.abs().max()]).tolist()  # sync 1
    _refuse_far(far)
    if n_cols == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    x0, y0, bw, bh, xa, ya, yb, ncols, nrows = (v.int() for v in (x0, y0, bw, bh, xa, ya, yb, ncols, nrows))
    thr = torch.tensor(threshold, dtype=torch.float32, device=dev)  # `tensor > float` compares in float32
    delta = grid.abs().amax().clamp(min=thr) * DELTA_SCALE

    # box columns and rows inside the image, with torch's source cells and weights
    cm, x = _ragged(ncols, n_cols)
    x = x + _at(xa, cm)
    j0, j1, b0, b1 = _source_index(x - _at(x0, cm), _at(bw, cm), size)
    rm, y = _ragged(nrows, n_rows)
    i0, _, _, a1 = _source_index(y + _at(ya - y0, rm), _at(bh, rm), size)
    row_base = _at(torch.cumsum(nrows, 0, dtype=torch.int32) - nrows - ya, cm)  # + image row: row index
    first, last = _at(ya, cm), _at(yb, cm) - 1
    # each column's value at every source row, to within rounding
    across = grid.transpose(1, 2).reshape(n * size, size)  # [mask * source column, source row]
    t = torch.lerp(_at(across, cm * size + j0), _at(across, cm * size + j1), b1[:, None])

    # windows: rows around every source cell where the column may come near the threshold
    above, below = t > thr + 2 * delta, t < thr - 2 * delta
    clear = (above[:, :-1] & above[:, 1:]) | (below[:, :-1] & below[:, 1:])
    cell = _flatnonzero(~clear)  # sync 2; by column, then cell
    wc = cell // (size - 1)
    k = cell - wc * (size - 1)
    tv = t.view(-1)
    rows_per_source = 1 / _ratio(bh, size)  # source row s is at box row (s + 0.5) * that - 0.5
    offset = 0.5 * rows_per_source - 0.5
    slack = ROW_SLACK + bh * 2.0**-18  # the float32 rounding of both row mappings, in rows
    wm = _at(cm, wc)
    lo, hi = _window(
        k, _at(tv, wc * size + k), _at(tv, wc * size + k + 1), thr, 2 * delta,
        _at(rows_per_source, wm), _at(offset - slack, wm), _at(offset + slack, wm),
    )
    top_row = _at(y0, wm)
    lo, hi = torch.maximum(lo + top_row, _at(first, wc)), torch.minimum(hi + top_row, _at(last, wc))
    # a window that meets the rows covered before it in its column starts on the last of them
    key = torch.cummax(torch.where(hi >= lo, hi + 3, 0) + wc * (height + 4), 0).values
    covered = torch.cat([key.new_zeros(1), key[:-1]]) - 3 - wc * (height + 4)  # < -2: none
    lo = torch.where(lo > covered + 1, lo, covered)
    # the pairs of neighbouring rows in the windows, by their lower row
    pairs = (hi - lo).clamp(min=0)
    pw, p_row = _ragged(pairs, int(pairs.sum()))  # sync 3
    p_col = _at(wc, pw)
    p_row = p_row + _at(lo, pw) + 1

    # values at the first and last row of every column, and at both rows of every pair
    base = torch.cat([row_base, _at(row_base, p_col)])
    r = base[:, None] + torch.stack([torch.cat([first, p_row - 1]), torch.cat([last, p_row])], 1)
    column = torch.cat([torch.arange(n_cols, dtype=torch.int32, device=dev), p_col])
    on = _threshold(grid, t, Columns(cm, j0, j1, b0, b1), Rows(i0, a1), r, column, bh + bw, thr, delta)
    top, bottom, flip = on[:n_cols, 0], on[:n_cols, 1], on[n_cols:, 0] != on[n_cols:, 1]

    # changes in column order: at the first row, where a pair flips, below the last row
    q = _flatnonzero(flip)  # sync 4
    at_col = _at(p_col, q)
    per_col = torch.bincount(at_col, minlength=n_cols).int()
    count = top.int() + per_col + bottom.int()
    start = torch.cumsum(count, 0, dtype=torch.int32) - count
    n_changes = int(start[-1] + count[-1])  # sync 5
    pos = torch.empty(n_changes + 1, dtype=torch.int32, device=dev)  # the last entry takes no-ops
    pos[torch.where(top, start, n_changes)] = x * height + first
    rank = torch.arange(len(q), dtype=torch.int32, device=dev) - _at(torch.cumsum(per_col, 0, dtype=torch.int32) - per_col, at_col)
    pos[_at(start + top.int(), at_col) + rank] = _at(x, at_col) * height + _at(p_row, q)
    pos[torch.where(bottom, start + count - 1, n_changes)] = x * height + last + 1
    owner = torch.repeat_interleave(cm, count, output_size=n_changes)
    out = torch.stack([pos[:-1], owner]).cpu().numpy().astype(np.int64)  # the results
    return _cancel_pairs(out[0], out[1])


def runs_to_rles(
    positions: np.ndarray, owners: np.ndarray, n: int, *, height: int, width: int
) -> tuple[list[dict], np.ndarray]:
    """RLEs and areas of ``n`` masks from their sorted change positions (an even number each)."""
    total = height * width
    k = np.bincount(owners, minlength=n)
    ends = np.cumsum(k)
    starts = ends - k
    runs = np.diff(positions, prepend=0)  # the run that ends at each position ...
    some = k > 0
    runs[starts[some]] = positions[starts[some]]  # ... from 0 for a mask's first
    closing = np.full(n, total, dtype=np.int64)
    closing[some] = total - positions[ends[some] - 1]
    ones = np.concatenate([[0], np.cumsum(positions[1::2] - positions[::2])])  # on, off, on, off...
    areas = ones[ends // 2] - ones[starts // 2]
    runs = runs.astype(np.uint32)
    objs = [  # a mask that ends on a one has no closing run of zeros
        {"size": [height, width], "counts": np.append(runs[a:b], np.uint32(z)) if z else runs[a:b]}
        for a, b, z in zip(starts.tolist(), ends.tolist(), closing.tolist())
    ]
    rles = mask_utils.frPyObjects(objs, height, width)
    return [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in rles], areas


def _cancel_pairs(pos: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop positions that occur twice in a mask (an end and a start at the same pixel cancel)."""
    dup = (pos[1:] == pos[:-1]) & (owner[1:] == owner[:-1])
    if not dup.any():
        return pos, owner
    drop = np.zeros(len(pos), dtype=bool)
    drop[1:] |= dup
    drop[:-1] |= dup
    return pos[~drop], owner[~drop]


def _ragged(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``counts[i]`` items of each group i: every item's group and its index in the group."""
    group = torch.repeat_interleave(torch.arange(len(counts), dtype=torch.int32, device=counts.device), counts, output_size=total)
    first = torch.cumsum(counts, 0, dtype=torch.int32) - counts
    return group, torch.arange(total, dtype=torch.int32, device=counts.device) - _at(first, group)


def _flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    """int32 indices of the true entries of ``mask``, flattened (a host sync). On the CPU
    numpy's is several times faster than ``torch.nonzero``; the result is the same."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()).astype(np.int32))
    return mask.view(-1).nonzero().squeeze(1).int()


def _at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` along the first dimension (index_select: several times faster on CPU)."""
    return values.index_select(0, index)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 ``a * b + c`` rounded once, as a fused multiply-add does.

    The float64 product of two float32 is exact; the float64 sum is made round-to-odd (from its
    exact error, TwoSum), and rounding a round-to-odd float64 to float32 is correct rounding.
    """
    p, q = a.double() * b.double(), c.double()
    s = p + q
    r = s - p
    err = (p - (s - r)) + (q - r)
    even = (s.view(torch.int64) & 1) == 0
    away = torch.nextafter(s, torch.where(err > 0, torch.inf, -torch.inf).to(s.dtype))
    return torch.where((err != 0) & even, away, s).float()


def _ratio(n: torch.Tensor, size: int) -> torch.Tensor:
    """float32 ``size / n``, as area_pixel_compute_scale (``size / tensor`` would multiply by 1/n)."""
    nf = n.float()
    return torch.full_like(nf, size) / nf


def _source_index(o: torch.Tensor, n: torch.Tensor, size: int):
    """torch's bilinear source cells and weights for output indices ``o`` of sides of ``n``."""
    ratio = _ratio(n, size)
    # fma(ratio, o + 0.5, -0.5): exact in float64 wherever it is >= 0 (below, only its sign counts)
    src = (ratio.double() * (o.float() + 0.5).double() - 0.5).float().clamp(min=0)
    i0 = src.floor().int().clamp(max=size - 1)
    l1 = (src - i0.float()).clamp(0, 1)
    i1 = i0 + (i0 < size - 1).int()
    copy = n == size  # scale 1: a plain copy
    i0, i1 = torch.where(copy, o, i0), torch.where(copy, o, i1)
    l1 = torch.where(copy, 0.0, l1)
    return i0, i1, 1 - l1, l1


def _window(k, ta, tb, thr, delta, rows_per_source, lo_offset, hi_offset):
    """Box rows [lo, hi] around where a column's profile, from ``ta`` at source row k to
    ``tb`` at row k + 1, lies within ``delta`` of the threshold, widened past the rounding of
    the row mapping, so that the rows on both sides of a crossing are inside. A profile that
    changes by ``delta`` or less is taken whole."""
    dt = tb - ta
    level = dt.abs() <= delta
    inv = 1 / torch.where(level, 1.0, dt)
    mid, half = (thr - ta) * inv, (delta * inv).abs()
    s_lo = k + torch.where(level, 0.0, (mid - half).clamp(0, 1))
    s_hi = k + torch.where(level, 1.0, (mid + half).clamp(0, 1))
    return (s_lo * rows_per_source + lo_offset).floor().int(), (s_hi * rows_per_source + hi_offset).ceil().int()


def _threshold(grid, t, cols: Columns, rows: Rows, r, column, sides, thr, delta):
    """Whether torch's bilinear value at rows ``r`` (K x 2 indices into ``rows``) of box columns
    ``column`` (K) exceeds the threshold: from ``t`` where that is clear by ``delta``, else exactly."""
    size = grid.shape[-1]
    i0, a1 = _at(rows.i0, r.view(-1)), _at(rows.a1, r.view(-1))
    ti = (column[:, None] * size + i0.view(r.shape)).view(-1)
    tv = t.view(-1)
    value = torch.lerp(_at(tv, ti), _at(tv, (ti + 1).clamp(max=tv.numel() - 1)), a1)
    on = value > thr
    close = (value - thr).abs() <= delta
    if close.any():  # sync; rare
        close = _flatnonzero(close)
        c, i0, a1 = _at(ti, close) // size, _at(i0, close), _at(a1, close)
        m = _at(cols.mask, c)
        i1 = (i0 + 1).clamp(max=size - 1)  # (a plain copy has i1 = i0, but a1 = 0 there)
        a0 = 1 - a1
        j0, j1, b0, b1 = _at(cols.j0, c), _at(cols.j1, c), _at(cols.b0, c), _at(cols.b1, c)
        flat = grid.view(-1)
        p00, p01 = _at(flat, (m * size + i0) * size + j0), _at(flat, (m * size + i0) * size + j1)
        p10, p11 = _at(flat, (m * size + i1) * size + j0), _at(flat, (m * size + i1) * size + j1)
        # rows first: u = fma(p00, b0, p01 b1), w = fma(p10, b0, p11 b1), v = fma(u, a0, w a1);
        # four products: u = fma(p00, a0 b0, p01 a0 b1), w = fma(p10, a1 b0, u), v = fma(p11, a1 b1, w)
        four = _at(sides, m) <= SMALL_BOX_SIDES
        u = _fma(p00, torch.where(four, a0 * b0, b0), p01 * torch.where(four, a0 * b1, b1))
        w = _fma(p10, torch.where(four, a1 * b0, b0), torch.where(four, u, p11 * b1))
        v = _fma(torch.where(four, p11, u), torch.where(four, a1 * b1, a0), torch.where(four, w, w * a1))
        on[close] = v > thr
    return on.view(r.shape)


def decode_rle(mask: dict) -> np.ndarray:
    """A row's mask, COCO compressed RLE (``{"size": [h, w], "counts": str}``), as an
    ``(h, w)`` bool array."""
    rle = {"size": [int(v) for v in mask["size"]], "counts": mask["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)
