"""Pasting predicted masks into the image and encoding them as COCO RLE, box by box.

Data contract (COCO, pycocotools ``mask.py``): a mask of an H x W image is encoded as run
lengths over its pixels in column-major order (x outer, y inner), starting with a run of zeros;
``counts`` is pycocotools' compressed string of those runs and ``size`` is ``[H, W]``.

Exactness: torchvision pastes a mask by padding the M x M probabilities by one pixel, scaling
the box by (M + 2) / M (``expand_masks``/``expand_boxes``), rounding it to int64, bilinearly
resizing to the box's size and copying the part inside the image; the caller thresholds at 0.5.
We do the same resize with the same arguments but only inside each box, threshold there, and
turn the thresholded box into the run lengths of the whole image without materialising it:
the changes of value along each box column sit at linear index ``x * H + y``. A change at the
bottom of one column and another at the top of the next cancel where the box spans the full
height. The result decodes to exactly torchvision's ``paste_masks_in_image(...) > threshold``.

All tensor steps run on the masks' device; there is one host transfer per image (the integer
boxes) and one for all change positions, never one per mask.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks


def paste_and_encode(
    masks: torch.Tensor, boxes: torch.Tensor, *, height: int, width: int, threshold: float = 0.5
) -> tuple[list[dict], np.ndarray]:
    """COCO RLEs and pixel areas of ``masks`` (N x 1 x M x M probabilities) in their ``boxes``.

    ``boxes`` are (x1, y1, x2, y2) in the pixels of the ``height`` x ``width`` image.
    """
    n = masks.shape[0]
    if n == 0:
        return [], np.zeros(0, dtype=np.int64)
    positions, owners = change_positions(masks, boxes, height=height, width=width, threshold=threshold)
    return runs_to_rles(positions, owners, n, height=height, width=width)


def change_positions(
    masks: torch.Tensor, boxes: torch.Tensor, *, height: int, width: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted column-major linear positions where each mask changes value, and their mask index."""
    padded, scale = expand_masks(masks, padding=1)
    int_boxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()  # one sync
    flags, meta = [], []
    for i, (x0, y0, x1, y1) in enumerate(int_boxes):
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        xa, xb = max(x0, 0), min(x1 + 1, width)
        ya, yb = max(y0, 0), min(y1 + 1, height)
        if xa >= xb or ya >= yb:
            continue  # the box lies outside the image: an empty mask
        resized = F.interpolate(padded[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)
        inside = resized[0, 0, ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
        cols = F.pad(inside.t(), (1, 1))  # (box width, box height + 2), zero above and below
        flags.append((cols[:, 1:] != cols[:, :-1]).reshape(-1))
        meta.append((i, xa, ya, yb - ya + 1))
    if not flags:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sizes = [f.numel() for f in flags]
    hits = torch.cat(flags).nonzero().squeeze(1).cpu().numpy()  # one sync for all masks
    starts = np.cumsum([0] + sizes[:-1])
    which = np.searchsorted(starts, hits, side="right") - 1
    info = np.asarray(meta, dtype=np.int64)  # mask index, xa, ya, column stride
    local = hits - starts[which]
    col, row = np.divmod(local, info[which, 3])
    positions = (info[which, 1] + col) * height + info[which, 2] + row
    return positions, info[which, 0]


def runs_to_rles(
    positions: np.ndarray, owners: np.ndarray, n: int, *, height: int, width: int
) -> tuple[list[dict], np.ndarray]:
    total = height * width
    bounds = np.searchsorted(owners, np.arange(n + 1), side="left")
    rles, areas = [], np.zeros(n, dtype=np.int64)
    for i in range(n):
        pos = positions[bounds[i] : bounds[i + 1]]
        pos = _cancel_pairs(pos)
        counts = np.diff(np.concatenate(([0], pos, [total]))).astype(np.uint32)
        if len(counts) > 1 and counts[-1] == 0:
            counts = counts[:-1]  # the mask ends on a one: no closing run of zeros
        areas[i] = int(counts[1::2].sum())
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        rles.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
    return rles, areas


def _cancel_pairs(pos: np.ndarray) -> np.ndarray:
    """Drop positions that occur twice (an end and a start at the same pixel cancel)."""
    if len(pos) < 2:
        return pos
    dup = pos[1:] == pos[:-1]
    if not dup.any():
        return pos
    drop = np.zeros(len(pos), dtype=bool)
    drop[1:] |= dup
    drop[:-1] |= dup
    return pos[~drop]
