"""Detections as columns, from a COCO results JSON or from a run's Parquet tables.

Row order is the order pycocotools sees the detections in (the results file's order; for a
run, ``(image_id, instance_id)``): with ``mergesort`` it decides how equal scores are ranked.

The detection ``area`` (used only to ignore unmatched detections outside an area range) is the
one pycocotools' ``COCO.loadRes`` derives, which depends on the *first* result's fields:
``bbox`` present -> every area is ``w * h`` of the box (also for segm and keypoints); else
``segmentation`` -> the mask's pixel count; else ``keypoints`` -> the keypoints' extent
``(x1 - x0) * (y1 - y0)``. A bbox-only result evaluated as segm is the box's polygon, as in
loadRes. A run is evaluated as the results file of its own IoU type alone would be (torchvision's
reference export): bbox -> box area; segm -> mask area; keypoints -> keypoint extent.
``boundary`` reads exactly what ``segm`` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn_batch.arrays import INTS, REALS, held, one_array, strings, take, to_numpy
from mrcnn_batch.evaluate.errors import EvalInputError
from mrcnn_batch.evaluate.groundtruth import GroundTruth
from mrcnn_batch.evaluate.jsonio import (
    ResultColumns,
    id_problem,
    is_box,
    is_int,
    is_number,
    is_number_list,
    leading,
    read_results,
)
from mrcnn_batch.evaluate.params import MASK_IOU_TYPES
from mrcnn_batch.evaluate.similarity import COMPILED as COMPILED_RLE
from mrcnn_batch.evaluate.similarity import rle_areas
from mrcnn_batch.lazy import LazyModule

if TYPE_CHECKING:
    import pyarrow as pa
else:  # a results file's boxes or keypoints are read without it (jsonio.ResultColumns)
    pa = LazyModule("pyarrow")

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections for one IoU type. ``segm_counts`` holds compressed RLE strings (Arrow)."""

    iou_type: str
    image_id: np.ndarray  # (N,) int64
    category_id: np.ndarray  # (N,) int64, or a run's int32
    score: np.ndarray  # (N,) float64, or float32 as a run's tables hold it (widened where computed with)
    area: np.ndarray  # (N,) float64
    bbox: np.ndarray | None = None  # (N, 4) float64 or a run's float32 (mask results without boxes, for a mask IoU type: NaN)
    segm_counts: pa.Array | pa.ChunkedArray | None = None  # (N,) string/binary
    segm_size: np.ndarray | None = None  # (N, 2) int64 [height, width]
    kp_offsets: np.ndarray | None = None  # (N + 1,) int64
    kp_values: np.ndarray | None = None  # flat float64 [x, y, v, ...], or a run's float32

    def __len__(self) -> int:
        return len(self.image_id)

    def take(self, rows: np.ndarray) -> "Detections":
        rows = np.asarray(rows, dtype=np.int64)
        kp_offsets = kp_values = None
        if self.kp_offsets is not None:
            starts = self.kp_offsets[rows]
            lengths = self.kp_offsets[rows + 1] - starts
            kp_offsets = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(lengths, out=kp_offsets[1:])
            idx = np.repeat(starts - kp_offsets[:-1], lengths) + np.arange(kp_offsets[-1])
            kp_values = self.kp_values[idx]
        return replace(
            self,
            image_id=self.image_id[rows],
            category_id=self.category_id[rows],
            score=self.score[rows],
            area=self.area[rows],
            bbox=None if self.bbox is None else self.bbox[rows],
            segm_counts=None if self.segm_counts is None else take(self.segm_counts, rows),
            segm_size=None if self.segm_size is None else self.segm_size[rows],
            kp_offsets=kp_offsets,
            kp_values=kp_values,
        )

    def subset(self, image_ids: np.ndarray) -> "Detections":
        keep = np.isin(self.image_id, image_ids)
        return self if keep.all() else self.take(np.flatnonzero(keep))

    def rles(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """pycocotools RLE objects of these rows (built per call, never stored)."""
        rows = np.asarray(rows, np.int64)
        return rle_objects(take(self.segm_counts, rows), self.segm_size[rows])


def empty_detections(iou_type: str) -> Detections:
    z = np.zeros(0, np.int64)
    return Detections(
        iou_type, z, z.copy(), np.zeros(0), np.zeros(0), np.zeros((0, 4)),
        strings([]), np.zeros((0, 2), np.int64), np.zeros(1, np.int64), np.zeros(0),
    )


# --------------------------------------------------------------------------- results JSON


def load_results_json(
    url: str,
    *,
    gt: GroundTruth,
    iou_type: str,
    storage_options: dict[str, Any] | None = None,
    unknown_categories: str = "error",
) -> Detections:
    """Read a COCO results file (``[{image_id, category_id, score, bbox|segmentation|keypoints}]``)."""
    doc = read_results(url, storage_options=storage_options)
    return detections_from_results(
        doc, gt=gt, iou_type=iou_type, source=url, unknown_categories=unknown_categories
    )


def detections_from_results(
    anns: Any,
    *,
    gt: GroundTruth,
    iou_type: str,
    source: str = "<results>",
    unknown_categories: str = "error",
) -> Detections:
    """:func:`load_results_json` for an already parsed list of result dicts (or the columns
    ``jsonio.read_results`` gives: :class:`~mrcnn_batch.evaluate.jsonio.ResultColumns` or an
    Arrow table)."""
    columns = anns if isinstance(anns, ResultColumns) else None
    table = anns if not isinstance(anns, (list, ResultColumns)) and isinstance(anns, pa.Table) else None
    anns = leading(anns)  # the first result decides the mode, as loadRes
    if not isinstance(anns, list):
        raise EvalInputError(f"predictions {source}: expected a JSON list of results, found {type(anns).__name__}")
    if not anns:
        log.warning("predictions %s: no results; every AP is 0", source)
        return empty_detections(iou_type)
    first = anns[0]
    if not isinstance(first, dict):
        raise EvalInputError(f"predictions {source}: results[0] is not an object")
    if "bbox" in first and first["bbox"] != []:
        mode = "bbox"
    elif "segmentation" in first:
        mode = "segm"
    elif "keypoints" in first:
        mode = "keypoints"
    else:
        raise EvalInputError(f"predictions {source}: results[0] has no 'bbox', 'segmentation' or 'keypoints'")
    if iou_type in MASK_IOU_TYPES and mode == "keypoints":
        raise EvalInputError(f"predictions {source}: keypoint results have no 'segmentation' for {iou_type}")

    fast = None if columns is None else _plain_columns(columns, mode=mode, iou_type=iou_type)
    read_narrow = fast is not None  # (the compiled reader's values: float32 already where they can be)
    if columns is not None and fast is None:
        table = columns.table()
    if fast is None and table is not None:
        fast = _table_columns(table, mode=mode, iou_type=iou_type)
    if fast is not None and not isinstance(fast[4], list) and not _sizes_are_images(
            _fixed_list(fast[4].field("size"), 2, np.int64), fast[0], gt):
        fast = None  # the itemwise check names the mask whose size is not its image's
    if table is not None and fast is None:
        anns = table.to_pylist()  # every result has every field: the parsed list's dicts
    n = len(anns) if fast is None else len(fast[0])
    if fast is None:
        fast = _fast_columns(anns, mode=mode, iou_type=iou_type)
    if fast is None:
        fast = _checked_columns(anns, mode=mode, iou_type=iou_type, source=source)
    image_id, category_id, score, boxes, segms, kps = fast

    keep = check_ids(image_id, category_id, gt=gt, source=source, unknown_categories=unknown_categories)
    segm_counts = segm_size = kp_offsets = kp_values = None
    rles: list[dict[str, Any]] | None = []
    if not isinstance(segms, list):  # from the table: the strings and sizes as they are
        segm_counts, segm_size, rles = segms.field("counts"), _fixed_list(segms.field("size"), 2, np.int64), None
    elif segms:
        segm_counts, segm_size, rles = _fast_rles(segms, image_id, gt) or _rles_from_results(segms, image_id, gt, source)
    if isinstance(kps, tuple):  # from the columns: already offsets and values
        kp_offsets, kp_values = kps
    elif kps:
        lens = np.fromiter((len(k) for k in kps), np.int64, count=n)
        kp_offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lens, out=kp_offsets[1:])
        kp_values = np.fromiter((x for k in kps for x in k), np.float64, count=int(kp_offsets[-1]))
    if mode == "bbox":
        area = boxes[:, 2].astype(np.float64) * boxes[:, 3]  # (a float32 box: w * h in float64, as pycocotools)
    elif mode == "segm" and rles is None:  # from the table, for a mask evaluation
        area = table_rle_area(segm_counts, segm_size)
    elif mode == "segm":
        area = rle_area(rles)
        # boxes of masks without one (loadRes' toBbox), for a bbox evaluation of mask results;
        # a mask evaluation reads none (they stay NaN)
        missing = np.isnan(boxes[:, 0]) if iou_type not in MASK_IOU_TYPES else np.zeros(n, bool)
        if missing.all():
            boxes = mask_utils.toBbox(rles).astype(np.float64)
        elif missing.any():
            rows = np.flatnonzero(missing)
            boxes[rows] = mask_utils.toBbox([rles[i] for i in rows])
    else:
        kx0, ky0, kx1, ky1 = keypoint_extent(kp_offsets, kp_values)
        area = (kx1 - kx0) * (ky1 - ky0)
        boxes = np.stack([kx0, ky0, kx1 - kx0, ky1 - ky0], axis=1)
    if not read_narrow:
        if mode == "bbox":
            boxes = narrowed(boxes)
        if kp_values is not None:
            kp_values = narrowed(kp_values)
    dets = Detections(iou_type, image_id, category_id, score, area, boxes, segm_counts, segm_size, kp_offsets, kp_values)
    return dets if keep is None else dets.take(keep)


def narrowed(values: np.ndarray, *, block: int = 1 << 20) -> np.ndarray:
    """``values`` as float32 where every one of them is a float32 exactly (a run's own results,
    written from float32, are): half the memory, and the same numbers once widened where they
    are computed with (as a run's float32 columns are). Otherwise ``values`` as they are.
    Compared ``block`` values at a time (no float64 copy of the whole)."""
    if values.dtype != np.float64:
        return values
    narrow = np.empty(values.shape, np.float32)
    wide, out = values.reshape(-1), narrow.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):  # (a value beyond float32's range: kept wide)
        for i in range(0, len(wide), block):
            out[i:i + block] = wide[i:i + block]
            if not np.array_equal(out[i:i + block], wide[i:i + block]):
                return values
    return narrow


def _table_columns(table: pa.Table, *, mode: str, iou_type: str) -> tuple | None:
    """:func:`_fast_columns` from the Arrow table of a results file, for box results evaluated as
    boxes, keypoint results (without boxes) as keypoints and mask results (with or without
    boxes) as masks; None: anything else."""
    n, names = table.num_rows, table.column_names
    numeric = (pa.types.is_int64, pa.types.is_float64)

    def numbers(name: str) -> bool:
        t = table[name].type
        return any(f(t) for f in numeric) or (pa.types.is_list(t) and any(f(t.value_type) for f in numeric))

    masks = iou_type in MASK_IOU_TYPES
    if not numbers("score") or not ((mode, iou_type) in (("bbox", "bbox"), ("keypoints", "keypoints"))
                                    or (masks and mode in ("bbox", "segm") and "segmentation" in names)):
        return None
    score = to_numpy(table["score"]).astype(np.float64, copy=False)
    if not np.isfinite(score).all():
        return None
    image_id = to_numpy(table["image_id"]).astype(np.int64, copy=False)
    category_id = to_numpy(table["category_id"]).astype(np.int64, copy=False)
    segms: Any = []
    if masks:  # compressed RLEs: {"size": [h, w], "counts": str}, every part present
        segms = one_array(table["segmentation"])
        size = segms.field("size")
        if segms.field("counts").null_count or size.null_count or size.values.null_count:
            return None
        if (_lengths(size) != 2).any():
            return None
    if mode == "segm":
        return None if "bbox" in names else (image_id, category_id, score, np.full((n, 4), np.nan), segms, [])
    if mode == "bbox":
        boxes = one_array(table["bbox"])
        if not numbers("bbox") or boxes.values.null_count or (_lengths(boxes) != 4).any():
            return None
        return image_id, category_id, score, _fixed_list(boxes, 4), segms, []
    if "bbox" in names or "keypoints" not in names or not numbers("keypoints"):
        return None
    kps = one_array(table["keypoints"])
    if kps.values.null_count or not _triplets(_lengths(kps)):
        return None
    return image_id, category_id, score, np.full((n, 4), np.nan), [], _list_values(kps)


def _plain_columns(columns: ResultColumns, *, mode: str, iou_type: str) -> tuple | None:
    """:func:`_table_columns` from the compiled reader's columns (NumPy alone), for box results
    evaluated as boxes and keypoint results (without boxes) as keypoints; None: anything else
    (then the columns' Arrow table is read as :func:`_table_columns` reads it)."""
    if (mode, iou_type) not in (("bbox", "bbox"), ("keypoints", "keypoints")) or not np.isfinite(columns.score).all():
        return None
    n = columns.rows
    if mode == "bbox":
        at, values = columns.bbox
        if (np.diff(at) != 4).any():
            return None
        return columns.image_id, columns.category_id, columns.score, values.reshape(n, 4), [], []
    if columns.bbox is not None or columns.keypoints is None:
        return None
    at, values = columns.keypoints
    if not _triplets(np.diff(at)):
        return None
    return columns.image_id, columns.category_id, columns.score, np.full((n, 4), np.nan), [], (at.astype(np.int64), values)


def _triplets(lengths: np.ndarray) -> bool:
    """Whether every keypoint list holds [x, y, v] triplets, one at least."""
    return not ((lengths == 0).any() or (lengths % 3).any())


def _flat(lists: pa.Array) -> pa.Array:
    """``lists.flatten()``: the values of a list or fixed-size list array, its slice's only
    (without null lists, a slice of the values: ``flatten`` imports pyarrow.compute)."""
    if lists.null_count:
        return lists.flatten()
    if isinstance(lists, pa.FixedSizeListArray):
        width = lists.type.list_size
        return lists.values.slice(lists.offset * width, len(lists) * width)
    at = to_numpy(lists.offsets)
    return lists.values.slice(int(at[0]), int(at[-1] - at[0])) if len(at) else lists.values.slice(0, 0)


def _lengths(lists: pa.ListArray) -> np.ndarray:
    """Each list's length (a null list: 0), from the offsets (``value_lengths`` imports pyarrow.compute)."""
    return np.diff(to_numpy(lists.offsets))


def _sizes_are_images(sizes: np.ndarray, image_id: np.ndarray, gt: GroundTruth) -> bool:
    """Whether every mask's ``[height, width]`` is its image's (an image the ground truth has,
    with a size); where not, the itemwise check names the first that is not."""
    at = np.searchsorted(gt.image_ids, image_id)
    if len(gt.image_ids) == 0 or (at >= len(gt.image_ids)).any() or (gt.image_ids[np.minimum(at, len(gt.image_ids) - 1)] != image_id).any():
        return False
    hw = gt.image_sizes[at]
    return not (hw < 0).any() and bool((sizes == hw).all())


def _fast_columns(anns: list[Any], *, mode: str, iou_type: str) -> tuple | None:
    """The columns of well-formed results, checked in bulk; None: let the itemwise check speak."""
    n = len(anns)
    if iou_type == "keypoints" or mode == "keypoints":
        return None
    try:
        image_id = np.array([a["image_id"] for a in anns])
        category_id = np.array([a["category_id"] for a in anns])
        score = np.array([a["score"] for a in anns])
        if image_id.dtype.kind != "i" or category_id.dtype.kind != "i" or score.dtype.kind not in "if":
            return None
        if not np.isfinite(score).all():
            return None
        if mode == "bbox":
            boxes = np.array([a["bbox"] for a in anns])
            if boxes.shape != (n, 4) or boxes.dtype.kind not in "if":
                return None
        elif any("bbox" in a for a in anns):
            return None
        else:
            boxes = np.full((n, 4), np.nan)
        segms: list[Any] = []
        if iou_type in MASK_IOU_TYPES or mode == "segm":
            segms = [a["segmentation"] for a in anns]
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return (image_id.astype(np.int64), category_id.astype(np.int64), score.astype(np.float64),
            boxes.astype(np.float64), segms, [])


def _checked_columns(anns: list[Any], *, mode: str, iou_type: str, source: str) -> tuple:
    """The columns, every result checked, the first bad one named."""
    n = len(anns)
    image_id = np.empty(n, np.int64)
    category_id = np.empty(n, np.int64)
    score = np.empty(n, np.float64)
    boxes = np.full((n, 4), np.nan)
    segms: list[Any] = []
    kps: list[Any] = []
    for i, a in enumerate(anns):
        where = f"predictions {source}: results[{i}]"
        if not isinstance(a, dict):
            raise EvalInputError(f"{where} is not an object")
        for key in ("image_id", "category_id"):
            problem = id_problem(a.get(key))
            if problem:
                raise EvalInputError(f"{where}: {key!r} {problem}")
        s = a.get("score")
        if not is_number(s) or not np.isfinite(s):
            raise EvalInputError(f"{where}: 'score' missing or not a finite number")
        image_id[i], category_id[i], score[i] = a["image_id"], a["category_id"], s
        if mode == "bbox" or "bbox" in a:
            if not is_box(a.get("bbox")):
                raise EvalInputError(f"{where}: 'bbox' missing or not [x, y, w, h]")
            boxes[i] = a["bbox"]
        if iou_type in MASK_IOU_TYPES or mode == "segm":
            seg = a.get("segmentation")
            if seg is None and mode == "bbox":
                seg = _box_polygon(a["bbox"])
            if seg is None:
                raise EvalInputError(f"{where}: 'segmentation' missing")
            segms.append(seg)
        if iou_type == "keypoints" or mode == "keypoints":
            k = a.get("keypoints")
            if not is_number_list(k) or not k or len(k) % 3:
                raise EvalInputError(f"{where}: 'keypoints' missing or not [x, y, v] triplets")
            kps.append(k)
    return image_id, category_id, score, boxes, segms, kps


def check_ids(
    image_id: np.ndarray, category_id: np.ndarray, *, gt: GroundTruth, source: str, unknown_categories: str
) -> np.ndarray | None:
    """Refuse image ids absent from ``gt``; refuse (or drop, logged) unknown category ids.

    Returns the rows to keep, or None for all."""
    bad_img = np.setdiff1d(image_id, gt.image_ids)
    if len(bad_img):
        raise EvalInputError(
            f"predictions {source}: {len(bad_img)} image ids are not in the ground truth "
            f"{gt.source} (e.g. {bad_img[:5].tolist()})"
        )
    bad_cat = np.setdiff1d(category_id, gt.category_ids)
    if not len(bad_cat):
        return None
    msg = (
        f"predictions {source}: category ids {bad_cat[:10].tolist()} are not in the ground truth "
        f"{gt.source}"
    )
    if unknown_categories != "drop":
        raise EvalInputError(msg + " (pass unknown_categories='drop' / --drop-unknown-categories to ignore them)")
    keep = np.flatnonzero(~np.isin(category_id, bad_cat))
    log.warning("%s; dropping their %d detections", msg, len(category_id) - len(keep))
    return keep


def _box_polygon(bb: list[float]) -> list[list[float]]:
    x1, x2, y1, y2 = bb[0], bb[0] + bb[2], bb[1], bb[1] + bb[3]
    return [[x1, y1, x1, y2, x2, y2, x2, y1]]


def _fast_rles(segms: list[Any], image_id: np.ndarray, gt: GroundTruth) -> tuple | None:
    """Compressed RLEs of the ground truth's image sizes, checked in bulk (the results of
    ``infer``, ``export`` and most detectors); None: let the itemwise check speak."""
    if set(map(type, segms)) != {dict}:
        return None
    try:
        counts = [s["counts"] for s in segms]
        sizes = np.array([s["size"] for s in segms])
    except (KeyError, TypeError, ValueError):
        return None
    if sizes.shape != (len(segms), 2) or sizes.dtype.kind != "i" or set(map(type, counts)) != {str}:
        return None
    if not _sizes_are_images(sizes, image_id, gt):
        return None
    return strings(counts), sizes.astype(np.int64), segms


def _rles_from_results(
    segms: list[Any], image_id: np.ndarray, gt: GroundTruth, source: str
) -> tuple[pa.Array, np.ndarray, list[dict[str, Any]]]:
    counts: list[Any] = []
    rles: list[dict[str, Any]] = []
    sizes = np.empty((len(segms), 2), np.int64)
    hw = gt.image_sizes[np.searchsorted(gt.image_ids, image_id)].tolist()
    for i, s in enumerate(segms):
        h, w = hw[i]
        if isinstance(s, list) and all(is_number_list(p) and len(p) >= 6 for p in s):
            # polygons (e.g. the box of a bbox-only result), converted as COCO.annToRLE does
            if h < 0:
                raise EvalInputError(f"ground truth: image {image_id[i]} lacks height/width")
            rle = mask_utils.merge(mask_utils.frPyObjects(s, h, w))
        elif isinstance(s, dict) and isinstance(s.get("counts"), (str, bytes)) and _is_size(s.get("size")):
            rle = s
        elif isinstance(s, dict) and is_number_list(s.get("counts")) and _is_size(s.get("size")):
            rle = mask_utils.frPyObjects(s, *s["size"])  # uncompressed RLE
        else:
            raise EvalInputError(
                f"predictions {source}: results[{i}]: 'segmentation' must be a compressed RLE "
                "{'size': [h, w], 'counts': str}, an uncompressed RLE or polygons of at least 3 points "
                "[[x1, y1, x2, y2, x3, y3, ...], ...]"
            )
        if h >= 0 and (rle["size"][0], rle["size"][1]) != (h, w):
            raise EvalInputError(
                f"predictions {source}: results[{i}]: mask size {list(rle['size'])} differs from "
                f"image {image_id[i]}'s [{h}, {w}]"
            )
        sizes[i] = rle["size"]
        c = rle["counts"]
        counts.append(c.decode() if isinstance(c, bytes) else c)
        rles.append({"size": [int(h) for h in rle["size"]], "counts": c})
    return strings(counts), sizes, rles


def _is_size(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(x) and 0 <= x < 2**31 for x in v)


def rle_objects(counts: pa.Array, sizes: np.ndarray) -> list[dict[str, Any]]:
    """pycocotools RLE objects of compressed RLE strings ``counts`` and ``sizes (N, 2)``: the
    strings as bytes (as pycocotools reads them), one size list shared by the masks of a size."""
    if len(counts) == 0:
        return []
    data = counts.cast(pa.binary()).to_pylist()
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    keys, which = np.unique((sizes[:, 0] << 32) + sizes[:, 1], return_inverse=True)
    shared = np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1).tolist()
    return [{"size": shared[i], "counts": c} for i, c in zip(which.reshape(-1).tolist(), data)]


def table_rle_area(counts: pa.Array, sizes: np.ndarray, *, block: int = 1 << 16) -> np.ndarray:
    """:func:`rle_area` of compressed RLE strings, ``block`` masks at a time (bounded memory);
    by the compiled kernel where it was built."""
    if COMPILED_RLE:
        return np.concatenate([np.zeros(0)] + [rle_areas(counts.slice(i, block)).astype(np.float64)
                                               for i in range(0, len(counts), block)])
    return np.concatenate([np.zeros(0)] + [rle_area(rle_objects(counts.slice(i, block), sizes[i:i + block]))
                                           for i in range(0, len(counts), block)])


def rle_area(rles: list[dict[str, Any]]) -> np.ndarray:
    """Pixel counts of RLE masks (``maskUtils.area``; called in blocks of 255, as pycocotools
    2.0.x's ``area`` overflows a uint8 for longer lists under NumPy 2)."""
    out = np.zeros(len(rles), np.float64)
    for i in range(0, len(rles), 255):
        out[i:i + 255] = mask_utils.area(rles[i:i + 255])
    return out


def keypoint_extent(offsets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per detection ``(x0, y0, x1, y1)``: min and max of its keypoints' x and y (loadRes), float64."""
    starts = offsets[:-1] // 3
    x, y = values[0::3], values[1::3]
    return tuple(f.reduceat(v, starts).astype(np.float64, copy=False)
                 for f, v in ((np.minimum, x), (np.minimum, y), (np.maximum, x), (np.maximum, y)))


# --------------------------------------------------------------------------- run tables


def detections_from_table(table: pa.Table, *, iou_type: str, source: str) -> Detections:
    """A run's ``instances`` (bbox, segm) or ``keypoints`` table as :class:`Detections`.

    Rows are put in ``(image_id, instance_id)`` order, independent of how shards were read.
    """
    return detections_from_tables([table], count=1, iou_type=iou_type, source=source)


def detections_from_tables(tables: Iterable[pa.Table], *, count: int, iou_type: str, source: str) -> Detections:
    """:func:`detections_from_table` of the ``count`` tables (a run's shards, in order) as one:
    each is converted into the whole's arrays as it comes and let go, so the whole table is
    never held beside its arrays (a mask's string stays in its table's buffer)."""
    columns: dict[str, _Filled] = {}
    counts: list[pa.Array] = []
    counts_type = None
    masks = iou_type in MASK_IOU_TYPES

    def add(name: str, values: np.ndarray, done: int) -> None:
        columns.setdefault(name, _Filled(count)).add(values, done)

    held_real, every_area = None, True
    for done, table in enumerate(tables):
        add("image_id", to_numpy(table["image_id"]).astype(np.int64, copy=False), done)
        add("instance_id", to_numpy(table["instance_id"]), done)
        add("category_id", held(to_numpy(table["category_id"]), INTS), done)  # (compared, never computed with)
        # scores, boxes and keypoints kept as the table holds them (float32: half the memory;
        # every use widens them to float64 first, which changes no value)
        add("score", held(to_numpy(table["score"]), REALS), done)
        add("bbox", _fixed_list(table["bbox"], 4, _held_real(table["bbox"])), done)
        if masks:
            mask = table["mask"]  # (its chunks as they are: the strings are not copied)
            if mask.null_count:
                raise EvalInputError(f"run {source}: {mask.null_count} instances have no mask; {iou_type} needs a mask model")
            strings_of = _struct_field(mask, "counts")
            counts += strings_of.chunks
            counts_type = strings_of.type
            add("size", _fixed_list(_struct_field(mask, "size"), 2, np.int64), done)
            if "area" in table.column_names:
                add("area", to_numpy(table["area"]).astype(np.float64), done)
            else:  # (a table without it: every mask's count is counted)
                every_area = False
        elif iou_type == "keypoints":
            held_real = _held_real(table["keypoints"])
            add("kp_length", _list_lengths(table["keypoints"]), done)
            add("kp_values", _flat_values(table["keypoints"], held_real), done)
        del table
    got = {name: column.array() for name, column in columns.items()}
    n = len(got.get("image_id", ()))
    image_id = got.get("image_id", np.zeros(0, np.int64))
    category_id = got.get("category_id", np.zeros(0, np.int32))
    score = got.get("score", np.zeros(0, np.float32))
    bbox = got.get("bbox", np.zeros((0, 4), np.float32))
    segm_counts = segm_size = kp_offsets = kp_values = None
    if iou_type == "bbox":
        area = bbox[:, 2].astype(np.float64) * bbox[:, 3]
    elif masks:
        segm_counts = pa.chunked_array(counts, counts_type) if counts_type is not None else strings([])
        segm_size = got.get("size", np.zeros((0, 2), np.int64))
        area = _mask_area(got.get("area") if every_area else None, segm_counts, segm_size, source)
    else:
        lengths = got.get("kp_length", np.zeros(0, np.int64))
        kp_offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=kp_offsets[1:])
        kp_values = got.get("kp_values", np.zeros(0, held_real or np.float32))
        if n and not _triplets(lengths):
            raise EvalInputError(f"run {source}: keypoints rows must hold [x, y, v] triplets")
        if n:
            x0, y0, x1, y1 = keypoint_extent(kp_offsets, kp_values)
            area = (x1 - x0) * (y1 - y0)
        else:
            area = np.zeros(0)
    dets = Detections(iou_type, image_id, category_id, score, area, bbox, segm_counts, segm_size, kp_offsets, kp_values)
    instance_id = got.get("instance_id", np.zeros(0, np.int32))
    if n > 1 and not ((image_id[1:] > image_id[:-1])
                      | ((image_id[1:] == image_id[:-1]) & (instance_id[1:] >= instance_id[:-1]))).all():
        dets = dets.take(np.lexsort((instance_id, image_id)))  # (shards are written in order)
    return dets


class _Filled:
    """One column of :func:`detections_from_tables`' arrays, filled a table at a time: an array
    sized at the first table's rows times the tables to come, plus a quarter (its untouched end
    is never resident), doubled where that falls short."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.values: np.ndarray | None = None
        self.n = 0

    def add(self, part: np.ndarray, done: int) -> None:
        if self.values is None:
            guess = len(part) * (self.count - done) * 5 // 4 + 1
            self.values = np.empty((guess, *part.shape[1:]), part.dtype)
        elif self.n + len(part) > len(self.values):
            grown = np.empty((max(2 * len(self.values), self.n + len(part)), *part.shape[1:]), self.values.dtype)
            grown[:self.n] = self.values[:self.n]
            self.values = grown
        self.values[self.n:self.n + len(part)] = part
        self.n += len(part)

    def array(self) -> np.ndarray | None:
        return None if self.values is None else self.values[:self.n]


def _held_real(lists: pa.ChunkedArray) -> type:
    """The numpy type a list column's values are kept as: float32 where the table holds them so."""
    return np.float32 if lists.type.value_type == pa.float32() else np.float64


def _struct_field(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """A struct column's field, chunk by chunk, as they are (``pyarrow.compute.struct_field``)."""
    at = column.type.get_field_index(name)
    return pa.chunked_array([c.flatten()[at] for c in column.chunks], column.type.field(at).type)


def _mask_area(column: np.ndarray | None, counts: pa.Array, sizes: np.ndarray, source: str) -> np.ndarray:
    """The masks' pixel counts (``maskUtils.area``): the table's ``area`` column, which ``infer``
    writes as each mask's count, once it agrees with the masks' own counts on a sample spread over
    the table; where it does not (a table written otherwise), counted from every mask."""
    n = len(counts)
    if column is not None and n:
        sample = np.unique(np.linspace(0, n - 1, min(n, 4096)).astype(np.int64))
        if np.array_equal(table_rle_area(take(counts, sample), sizes[sample]), column[sample]):
            return column
        log.warning("run %s: the area column differs from the masks' pixel counts; counting them from the masks", source)
    return table_rle_area(counts, sizes)


def _fixed_list(col: pa.ChunkedArray | pa.Array, width: int, dtype: type = np.float64) -> np.ndarray:
    """``(N, width)`` values of lists of ``width`` items."""
    return _flat_values(col, dtype).reshape(-1, width)


def _list_values(col: pa.ChunkedArray | pa.Array, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """A list column's ``(N + 1,)`` int64 offsets from 0 and its values."""
    offsets = np.zeros(len(col) + 1, np.int64)
    np.cumsum(_list_lengths(col), out=offsets[1:])
    return offsets, _flat_values(col, dtype)


def _list_lengths(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Each list's length, chunk by chunk, as one array."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    return np.concatenate([np.zeros(0, np.int64), *(_lengths(c) for c in chunks)])


def _flat_values(col: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    """The values of a list column's lists, one after another, as ``dtype``: a view of a one-chunk
    column that holds ``dtype``; else converted chunk by chunk into one array (the chunks are
    never concatenated first, a copy of the whole column)."""
    flat = [_flat(c) for c in (col.chunks if isinstance(col, pa.ChunkedArray) else [col])]
    if len(flat) == 1:
        return to_numpy(flat[0]).astype(dtype, copy=False)
    values = np.empty(sum(len(f) for f in flat), dtype)
    at = 0
    for f in flat:
        values[at:at + len(f)] = to_numpy(f)
        at += len(f)
    return values
