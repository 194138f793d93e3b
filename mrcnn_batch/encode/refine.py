"""Optional mask-edge refinement (``infer --refine-masks grabcut``): each pasted mask re-cut with
OpenCV's GrabCut on the image's own pixels, in a crop around the instance.

Mask R-CNN predicts a mask on a 28 x 28 grid over the box, so its edge is only as sharp as one
grid cell (a 100 px box: 3.6 px). GrabCut fits a colour model (two Gaussian mixtures) to the
pixels the mask calls object and background and moves the edge to where the colours change,
by a graph cut. It is initialised from the predicted mask (``GC_INIT_WITH_MASK``):

* the crop is the instance's region (its box together with its mask's extent, which may reach a
  little past the box) widened by ``band + margin`` pixels and clipped to the image, so the cost
  is bounded by the box;
* labels in the crop: ``GC_FGD`` the mask eroded by ``band``; ``GC_PR_FGD`` the rest of the
  mask; ``GC_PR_BGD`` the mask dilated by ``band``, outside the mask; ``GC_BGD`` the rest: the
  margin outside the region dilated by ``band``, and the box's pixels beyond the band (left
  uncertain instead, they measured worse: see the README). ``band`` is ``BAND_CELLS`` cells of
  the 28-grid (at least ``MIN_BAND`` px): the edge moves by at most that much either way;
* ``ITERATIONS`` rounds of GrabCut (re-fit colours, re-cut); OpenCV's random generator is seeded
  before each instance, so a rerun gives the same pixels on any thread or process;
* a crop over ``MAX_CROP_PIXELS`` is cut at a smaller scale (area-averaged pixels, nearest
  labels) and the result scaled back (bilinear, then > 0.5) with the sure labels kept;
* the original mask is kept where there is nothing to refine (an empty mask, or fewer than
  ``MIN_SAMPLES`` pixels on one side: OpenCV's k-means needs one per mixture component) and
  where GrabCut leaves no foreground.

The refined mask is written back into the full image's mask, so it stays inside the image.
Boxes, scores, labels and keypoints are not touched; the caller recomputes ``area``.

The image is RGB; GrabCut treats the three channels alike (its colour models and edge weights
use only distances between colours), so no conversion to OpenCV's BGR order is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn_batch.errors import UsageError

METHODS = ("grabcut",)
INSTALL_HINT = "pip install 'mrcnn-batch[refine]'"
ITERATIONS = 3  # GrabCut rounds (1 and 5 measured the same here; see the README, "Mask-edge refinement")
MASK_GRID = 28  # the mask head's resolution: its cell is the unit of the edge's uncertainty
BAND_CELLS = 2.0  # the band of uncertain pixels either side of the edge, in grid cells ...
MIN_BAND = 2  # ... and at least this many pixels
MARGIN_FRACTION = 0.1  # sure background beyond the band: this fraction of the box's longer side ...
MIN_MARGIN = 8  # ... and at least this many pixels
MAX_CROP_PIXELS = 256 * 256  # larger crops are cut at a scale that brings them down to this
MIN_SAMPLES = 5  # pixels needed on each side (OpenCV's GMMs have 5 components, fitted by k-means)
SEED = 0  # OpenCV's RNG (k-means++ seeding), set before each instance


@dataclass
class RefineStats:
    """What happened to an image's masks (each mask counts once)."""

    refined: int = 0  # cut at full resolution
    downscaled: int = 0  # cut at a smaller scale (crop over MAX_CROP_PIXELS)
    empty_fallback: int = 0  # GrabCut left no foreground: the original mask kept
    kept: int = 0  # nothing to refine (empty mask, too few pixels on a side): the original kept

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def include(self, other: RefineStats) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def load_cv2():
    """OpenCV, imported on first use (an optional extra), with one thread per call: refinement
    runs in the encoder threads or processes, one per CPU already."""
    try:
        import cv2
    except ImportError:
        raise UsageError(f"--refine-masks grabcut needs OpenCV, which is not installed: {INSTALL_HINT}") from None
    cv2.setNumThreads(1)
    return cv2


def check_method(method: str | None) -> None:
    """Raise ``UsageError`` for an unknown method, or where OpenCV is missing for a known one."""
    if method is None:
        return
    if method not in METHODS:
        raise UsageError(f"unknown mask refinement {method!r}; expected {' or '.join(map(repr, METHODS))} (or none)")
    load_cv2()


def refine_rles(
    image: np.ndarray, rles: list[dict], areas: np.ndarray, boxes: np.ndarray, *,
    max_pixels: int = MAX_CROP_PIXELS,
) -> tuple[list[dict], np.ndarray, RefineStats]:
    """Each COCO RLE mask of ``image`` (H x W x 3 uint8) refined in its box (x1, y1, x2, y2);
    the masks, their pixel areas and what happened. Masks left as they were keep their RLE
    string and area as given."""
    # here, not at the top: encode.masks imports torch, and the CLI checks the method before torch loads
    from mrcnn_batch.encode.masks import decode_rle

    stats = RefineStats()
    out_rles, out_areas = list(rles), np.array(areas, dtype=np.int64, copy=True)
    for i, (rle, box) in enumerate(zip(rles, boxes)):
        h, w = rle["size"]
        if image.shape[:2] != (h, w):
            raise ValueError(f"image of {image.shape[0]} x {image.shape[1]} pixels for masks of {h} x {w}")
        if out_areas[i] == 0:
            stats.add("kept")
            continue
        mask = decode_rle(rle)
        refined, outcome = refine_mask(image, mask, box, max_pixels=max_pixels)
        stats.add(outcome)
        if refined is not mask:
            enc = mask_utils.encode(np.asfortranarray(refined))
            out_rles[i] = {"size": [h, w], "counts": enc["counts"].decode("ascii")}
            out_areas[i] = int(np.count_nonzero(refined))
    return out_rles, out_areas, stats


def refine_mask(
    image: np.ndarray, mask: np.ndarray, box, *, max_pixels: int = MAX_CROP_PIXELS,
) -> tuple[np.ndarray, str]:
    """``mask`` (H x W, 0/1) refined by GrabCut around ``box`` (x1, y1, x2, y2) in ``image``:
    the new H x W uint8 mask and the outcome (a ``RefineStats`` field name), or ``mask``
    itself where it is kept."""
    cv2 = load_cv2()
    h, w = mask.shape
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if len(cols) == 0:
        return mask, "kept"
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0)
    band = max(MIN_BAND, math.ceil(BAND_CELLS * side / MASK_GRID))
    margin = max(MIN_MARGIN, math.ceil(MARGIN_FRACTION * side))
    # the instance's region in whole pixels: its box and its mask's extent, [x0, x1) x [y0, y1)
    rx0, ry0 = min(math.floor(x1), int(cols[0])), min(math.floor(y1), int(rows[0]))
    rx1, ry1 = max(math.ceil(x2), int(cols[-1]) + 1), max(math.ceil(y2), int(rows[-1]) + 1)
    cx0, cy0 = max(0, rx0 - band - margin), max(0, ry0 - band - margin)
    cx1, cy1 = min(w, rx1 + band + margin), min(h, ry1 + band + margin)
    crop = np.ascontiguousarray(mask[cy0:cy1, cx0:cx1], dtype=np.uint8)

    labels = np.full(crop.shape, cv2.GC_BGD, dtype=np.uint8)  # the margin, and the box beyond the band
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    labels[cv2.dilate(crop, kernel) > 0] = cv2.GC_PR_BGD
    sure = cv2.erode(crop, kernel, borderType=cv2.BORDER_REPLICATE)  # the image's edge is no edge of the object
    labels[crop > 0] = cv2.GC_PR_FGD
    labels[sure > 0] = cv2.GC_FGD

    pixels = np.ascontiguousarray(image[cy0:cy1, cx0:cx1, :3], dtype=np.uint8)
    outcome = "refined"
    if crop.size > max_pixels:
        outcome = "downscaled"
        scale = math.sqrt(max_pixels / crop.size)
        size = (max(1, int(crop.shape[1] * scale)), max(1, int(crop.shape[0] * scale)))
        small = _grabcut(cv2, cv2.resize(pixels, size, interpolation=cv2.INTER_AREA),
                         cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST))
        if small is None:
            return mask, "kept"
        up = cv2.resize(small.astype(np.float32), (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
        fg = (up > 0.5).astype(np.uint8)
        fg[labels == cv2.GC_FGD] = 1
        fg[labels == cv2.GC_BGD] = 0
    else:
        fg = _grabcut(cv2, pixels, labels)
        if fg is None:
            return mask, "kept"
    if not fg.any():
        return mask, "empty_fallback"
    out = np.array(mask, dtype=np.uint8, order="F", copy=True)
    out[cy0:cy1, cx0:cx1] = fg
    return out, outcome


def _grabcut(cv2, pixels: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """The foreground (0/1) GrabCut finds from ``labels``, or None where one side has too few
    pixels to fit its colour model."""
    fg_side = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    n_fg = int(np.count_nonzero(fg_side))
    if n_fg < MIN_SAMPLES or labels.size - n_fg < MIN_SAMPLES:
        return None
    cv2.setRNGSeed(SEED)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    out, _, _ = cv2.grabCut(pixels, labels.copy(), None, bgd, fgd, ITERATIONS, cv2.GC_INIT_WITH_MASK)
    return (out & 1).astype(np.uint8)  # GC_FGD = 1 and GC_PR_FGD = 3: the odd labels
