"""IoU and OKS between the detections and ground truth of one image and category.

Each function reproduces pycocotools bit for bit:

* :func:`box_iou` is ``maskApi.c: bbIou`` vectorised (same double operations in the same
  order; a crowd's union is the detection's own area), checked against ``maskUtils.iou``;
* :func:`mask_iou` *is* ``maskUtils.iou`` on compressed RLE (crowd handled by pycocotools);
* :func:`oks` is ``COCOeval.computeOks``, vectorised over detections only, so that every sum
  is taken over the same elements in the same order.

Every result is ``(D, G)``: detections in score order, ground truth in file order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h]`` boxes ``dt (D, 4)`` and ``gt (G, 4)``."""
    return pair_box_iou(dt[:, None, :], gt[None, :, :], crowd[None, :])


def pair_box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Elementwise IoU of broadcastable box arrays ``(..., 4)`` (``bbIou``'s arithmetic)."""
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
