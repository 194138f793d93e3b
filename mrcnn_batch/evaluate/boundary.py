"""Boundary IoU (Cheng et al., CVPR 2021), exactly as faster-coco-eval 1.8.0 scores ``boundary``.

The data contract, stated once:

* **Dilation.** ``d = round(ratio * sqrt(h**2 + w**2) - 1e-10)`` pixels, at least 1, with ``h, w``
  the mask's (= its image's) size and C's ``round`` (halves away from zero): with the ``1e-10``
  a product of exactly ``k + 0.5`` rounds *down* (2.5 -> 2, 3.5 -> 3), as the reference's C++
  ``RLE::toBoundary`` rounds it (its OpenCV variant, unused by its evaluation, rounds otherwise).
* **Boundary region** of a mask ``M``: ``M`` minus its erosion by the ``(2d+1) x (2d+1)`` square,
  pixels outside the image counting as background. In words: the mask pixels within Chebyshev
  distance ``d`` of a background pixel or of the image border. The erosion is separable (a
  ``2d+1`` window along the rows, then along the columns) and computed with running sums on the
  mask's bounding box padded by ``d`` zeros, so a mask costs O(its box), not O(d^2) per pixel.
* **Similarity** of a detection and a ground-truth object (faster-coco-eval's ``computeIoU``):
  a crowd object keeps the mask IoU (its crowd formula); any other object gets
  ``min(mask IoU, boundary IoU)``, the boundary IoU being ``|Bd & Bg| / |Bd | Bg|`` computed by
  pycocotools' ``maskUtils.iou`` on the boundary regions' RLE -- the same integer counts and one
  double division, so the same double as the reference's.

Everything else (matching, crowds, area ranges on the annotation's ``area``, accumulation,
summary) is ``segm``'s. One known difference: on an image whose height is at most ``2d`` (an
aspect ratio beyond about 1:25, or a height of 1-2 pixels) the reference's erosion, which walks
the column-major pixel index, lets a pixel's neighbourhood wrap into the next column; here the
neighbourhood is the geometric square. Nowhere else do the regions differ (tests/test_eval_boundary.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def dilation_pixels(height: int, width: int, ratio: float) -> int:
    """Boundary width ``d`` in pixels for an image of ``height x width`` (see the top)."""
    x = ratio * math.sqrt(float(height * height + width * width)) - 1e-10
    whole = math.floor(x)
    d = int(whole) + (1 if x - whole >= 0.5 else 0)  # C's round(); x - floor(x) is exact
    return max(d, 1)


def erode_square(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion of a boolean ``(H, W)`` mask by the ``(2r+1)^2`` square, outside = background."""
    k = 2 * radius + 1
    h, w = mask.shape
    padded = np.pad(mask, radius).astype(np.int32)
    rows = np.zeros((h + 2 * radius + 1, w + 2 * radius), np.int32)
    np.cumsum(padded, axis=0, out=rows[1:])
    full_rows = ((rows[k:] - rows[:-k]) == k).astype(np.int32)  # (H, W + 2r): whole column window set
    cols = np.zeros((h, w + 2 * radius + 1), np.int32)
    np.cumsum(full_rows, axis=1, out=cols[:, 1:])
    return (cols[:, k:] - cols[:, :-k]) == k


def boundary_region(mask: np.ndarray, radius: int) -> np.ndarray:
    """The mask pixels within ``radius`` (Chebyshev) of the background or the image border."""
    mask = np.asarray(mask).astype(bool)
    out = np.zeros(mask.shape, bool)
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(ys) == 0:
        return out
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))  # outside it all is background
    crop = mask[box]
    out[box] = crop & ~erode_square(crop, radius)
    return out


def boundary_rle(rle: dict[str, Any], ratio: float) -> dict[str, Any]:
    """The boundary region of a compressed RLE mask, as a compressed RLE of the same size."""
    h, w = (int(v) for v in rle["size"])
    region = boundary_region(mask_utils.decode(rle), dilation_pixels(h, w, ratio))
    return mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))


def boundary_similarity(
    mask_ious: np.ndarray,
    dt: list[dict[str, Any]],
    gt: list[dict[str, Any]],
    crowd: np.ndarray,
    *,
    ratio: float,
    floor: float = 0.0,
) -> np.ndarray:
    """``(D, G)`` similarities from the mask IoUs of the same pairs (see the top).

    Boundaries are computed once per mask, and only for masks in a pair whose mask IoU reaches
    ``floor`` (the lowest IoU threshold): a pair below it is below it either way, and keeps its
    mask IoU (an upper bound of its similarity); every other entry is exact.
    """
    out = np.array(mask_ious, dtype=np.float64, copy=True)
    regular = ~np.asarray(crowd, bool)
    reach = (out >= floor) & regular[None, :] if out.size else np.zeros(out.shape, bool)
    rows, cols = np.flatnonzero(reach.any(axis=1)), np.flatnonzero(reach.any(axis=0))
    if len(rows) == 0:
        return out
    bd = [boundary_rle(dt[i], ratio) for i in rows]
    bg = [boundary_rle(gt[j], ratio) for j in cols]
    b = np.asarray(mask_utils.iou(bd, bg, [0] * len(bg)), dtype=np.float64).reshape(len(rows), len(cols))
    sub = np.ix_(rows, cols)
    out[sub] = np.minimum(out[sub], b)
    return out
