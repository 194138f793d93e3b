"""IoU and OKS between the detections and ground truth of one image and category.

Each function reproduces pycocotools bit for bit:

* :func:`box_iou` is ``maskApi.c: bbIou`` vectorised (same double operations in the same
  order; a crowd's union is the detection's own area), checked against ``maskUtils.iou``;
* :func:`mask_iou` *is* ``maskUtils.iou`` on compressed RLE (crowd handled by pycocotools);
  :func:`pair_mask_iou` computes the same numbers for many (detection, object) pairs at once
  in a compiled kernel (``_rle.c``, built when the package is installed) on the strings as they
  lie in an Arrow column; the same kernel rasterises polygons as ``frPyObjects`` does
  (:func:`polygon_rles`) and counts areas (:func:`rle_areas`);
* :func:`oks` is ``COCOeval.computeOks``, vectorised over detections only, so that every sum
  is taken over the same elements in the same order.

Every result is ``(D, G)``: detections in score order, ground truth in file order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn_batch.arrays import one_array
from mrcnn_batch.lazy import LazyModule

if TYPE_CHECKING:
    import pyarrow as pa
else:  # used for masks' strings alone: boxes and keypoints are matched without it
    pa = LazyModule("pyarrow")

try:  # the compiled RLE kernel (_rle.c), built when the package is installed
    from mrcnn_batch.evaluate import _rle
except ImportError:  # a checkout run from its folder, or installed where nothing compiles
    _rle = None

COMPILED = _rle is not None


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h]`` boxes ``dt (D, 4)`` and ``gt (G, 4)``."""
    return pair_box_iou(dt[:, None, :], gt[None, :, :], crowd[None, :])


def pair_box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Elementwise IoU of broadcastable box arrays ``(..., 4)`` (``bbIou``'s arithmetic, in float64:
    float32 boxes, as a run's tables hold them, are widened first)."""
    dt, gt = np.asarray(dt, np.float64), np.asarray(gt, np.float64)
    dx, dy, dw, dh = (dt[..., i] for i in range(4))
    gx, gy, gw, gh = (gt[..., i] for i in range(4))
    w = np.fmin(dw + dx, gw + gx) - np.fmax(dx, gx)
    h = np.fmin(dh + dy, gh + gy) - np.fmax(dy, gy)
    inter = w * h
    da = dw * dh
    union = np.where(crowd, da, da + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def mask_iou(dt: list[dict[str, Any]], gt: list[dict[str, Any]], crowd: np.ndarray) -> np.ndarray:
    """IoU of compressed RLE masks (pycocotools' own ``maskUtils.iou``)."""
    if not dt or not gt:
        return np.zeros((len(dt), len(gt)))
    return np.asarray(mask_utils.iou(dt, gt, [int(c) for c in crowd]), dtype=np.float64).reshape(len(dt), len(gt))


def pair_mask_iou(
    d_counts: pa.Array, d_size: np.ndarray, g_counts: pa.Array, g_size: np.ndarray,
    pd: np.ndarray, pg: np.ndarray, crowd: np.ndarray,
) -> np.ndarray:
    """``maskUtils.iou`` of each pair ``(pd[k], pg[k])`` of detection and object masks, by the
    compiled kernel: compressed RLE strings (Arrow binary or string, no nulls), sizes ``(N, 2)``,
    ``crowd`` per object."""
    d_data, d_off = string_buffers(d_counts)
    g_data, g_off = string_buffers(g_counts)
    out = _rle.iou(d_data, d_off, np.ascontiguousarray(d_size, np.int64), g_data, g_off,
                   np.ascontiguousarray(g_size, np.int64), np.ascontiguousarray(pd, np.int64),
                   np.ascontiguousarray(pg, np.int64), np.ascontiguousarray(crowd, np.uint8))
    return np.frombuffer(out, np.float64)


def rle_areas(counts: pa.Array) -> np.ndarray:
    """Pixel counts of compressed RLE strings (``maskUtils.area``), by the compiled kernel."""
    data, offsets = string_buffers(counts)
    return np.frombuffer(_rle.areas(data, offsets), np.int64)


def polygon_rles(polygons: list[list[float]], sizes: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Compressed RLE strings of one polygon each (``[x, y, x, y, ...]``) in images of
    ``sizes (N, 2)``, as ``maskUtils.frPyObjects`` rasterises them, by the compiled kernel; and
    which were done: not those with a coordinate that is not finite or lies 10**8 or more from
    0, where pycocotools' own integer conversions overflow (an empty string there)."""
    lengths = np.fromiter((len(p) for p in polygons), np.int64, len(polygons))
    xy = np.fromiter((v for p in polygons for v in p), np.float64, int(lengths.sum()))
    data, offsets, done = _rle.polygons(xy, np.r_[0, np.cumsum(lengths)].astype(np.int64),
                                        np.ascontiguousarray(sizes, np.int64).reshape(-1, 2))
    strings = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(polygons), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return strings, np.frombuffer(done, np.uint8).astype(bool)


def string_buffers(strings: pa.Array | pa.ChunkedArray) -> tuple[Any, np.ndarray]:
    """The data buffer and int64 offsets of an Arrow binary or string array without nulls."""
    strings = one_array(strings)
    if strings.null_count:
        raise ValueError("RLE strings must not be null")
    if not pa.types.is_large_binary(strings.type):
        strings = strings.cast(pa.large_binary())
    _, offsets, data = strings.buffers()
    at = np.frombuffer(offsets, np.int64)[strings.offset : strings.offset + len(strings) + 1]
    return (b"" if data is None else data), np.ascontiguousarray(at)


def oks(
    dt_kps: np.ndarray,
    gt_kps: np.ndarray,
    gt_bbox: np.ndarray,
    gt_area: np.ndarray,
    sigmas: np.ndarray,
) -> np.ndarray:
    """Object keypoint similarity, ``dt_kps (D, 3K)``, ``gt_kps (G, 3K)``, ``sigmas (K,)``."""
    D, G = len(dt_kps), len(gt_kps)
    out = np.zeros((D, G))
    if D == 0 or G == 0:
        return out
    variances = (sigmas * 2) ** 2
    k = len(sigmas)
    xd, yd = dt_kps[:, 0::3], dt_kps[:, 1::3]
    z = np.zeros((D, k))
    for j in range(G):
        g = gt_kps[j]
        xg, yg, vg = g[0::3], g[1::3], g[2::3]
        visible = vg > 0
        k1 = np.count_nonzero(visible)
        bb = gt_bbox[j]
        if k1 > 0:
            dx = xd - xg
            dy = yd - yg
        else:
            x0, x1 = bb[0] - bb[2], bb[0] + bb[2] * 2
            y0, y1 = bb[1] - bb[3], bb[1] + bb[3] * 2
            dx = np.maximum(z, x0 - xd) + np.maximum(z, xd - x1)
            dy = np.maximum(z, y0 - yd) + np.maximum(z, yd - y1)
        e = (dx**2 + dy**2) / variances / (gt_area[j] + np.spacing(1)) / 2
        if k1 > 0:
            e = np.ascontiguousarray(e[:, visible])
        out[:, j] = np.sum(np.exp(-e), axis=1) / e.shape[1]
    return out
