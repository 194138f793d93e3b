"""COCO ground truth: loaded once from any fsspec URL, validated, held as columns.

What pycocotools reads from each annotation, and so what is required here for each IoU type:
``id``, ``image_id``, ``category_id``, ``area`` (the area ranges use the annotation's own
``area``, never a computed one) for all; ``iscrowd`` and ``bbox`` for ``bbox``; ``iscrowd``,
``segmentation`` (polygons, uncompressed or compressed RLE) and the image's ``height``/``width``
for ``segm`` and ``boundary``; ``bbox``, ``keypoints`` and ``num_keypoints`` for ``keypoints``.

pycocotools' handling, kept: an annotation's ``ignore`` field is overridden by ``iscrowd``
(``COCOeval._prepare``); for keypoints an annotation with ``num_keypoints == 0`` is ignored.
Annotations keep their file order within an image: it decides ties in matching.

Refused with an error that names the problem (pycocotools would silently misbehave or crash):
duplicate image, category or annotation ids, ids outside int64, annotations of unknown images
or categories, missing or malformed fields, keypoint lists whose length is not 3 x the
category's keypoints, and segmentations pycocotools cannot rasterise: an empty polygon list, or
a first polygon of fewer than 3 points (``frPyObjects`` reads 4 numbers as a box, fewer as
nothing). Shorter polygons after the first are kept: pycocotools adds no pixel for them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any

import numpy as np

from mrcnn_batch.arrays import ranges
from mrcnn_batch.evaluate.errors import EvalInputError
from mrcnn_batch.evaluate.jsonio import (
    compiled_ground_truth, id_problem, is_box, is_int, is_int64, is_number, is_number_list, parse_document, read_document,
)
from mrcnn_batch.evaluate.params import EVAL_IOU_TYPES, MASK_IOU_TYPES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    keypoints: tuple[str, ...] = ()
    oks_sigmas: tuple[float, ...] | None = None


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Ground truth as columns. Annotation rows are stably sorted by image id."""

    source: str
    image_ids: np.ndarray  # (I,) int64, sorted, unique
    image_sizes: np.ndarray  # (I, 2) int64 [height, width]; -1 where absent
    categories: tuple[Category, ...]  # sorted by id
    ann_id: np.ndarray  # (N,) int64
    ann_image_id: np.ndarray  # (N,) int64
    ann_category_id: np.ndarray  # (N,) int64
    area: np.ndarray  # (N,) float64
    iscrowd: np.ndarray  # (N,) int8; -1 where absent
    bbox: np.ndarray  # (N, 4) float64; nan where absent
    num_keypoints: np.ndarray  # (N,) int64; -1 where absent
    kp_offsets: np.ndarray  # (N + 1,) int64 into kp_values
    kp_values: np.ndarray  # flat float64 [x, y, v, ...]
    segmentation: list[Any] | None = field(default=None, repr=False)  # raw COCO objects
    # the images' file_name, aligned with image_ids (None where absent); on the driver only:
    # subsets for tasks drop it
    file_names: tuple[str | None, ...] | None = field(default=None, repr=False)
    # each image's position in the file's "images" list, aligned with image_ids (TIDE orders
    # equal scores by it, as tidecv does); on the driver only, like file_names
    file_index: np.ndarray | None = field(default=None, repr=False)

    @property
    def category_ids(self) -> np.ndarray:
        return np.array([c.id for c in self.categories], dtype=np.int64)

    def category(self, category_id: int) -> Category:
        for c in self.categories:
            if c.id == category_id:
                return c
        raise KeyError(category_id)

    def keypoint_category_ids(self) -> list[int]:
        """Categories evaluated for keypoints: those declaring keypoint names, else those
        whose annotations carry keypoints."""
        declared = [c.id for c in self.categories if c.keypoints]
        if declared:
            return declared
        has = self.kp_offsets[1:] > self.kp_offsets[:-1]
        return sorted({int(c) for c in self.ann_category_id[has]})

    def image_size(self, image_id: int) -> tuple[int, int]:
        i = int(np.searchsorted(self.image_ids, image_id))
        return int(self.image_sizes[i, 0]), int(self.image_sizes[i, 1])

    def subset(self, image_ids: np.ndarray) -> "GroundTruth":
        """The ground truth of these images only (a partition for one task)."""
        image_ids = np.unique(np.asarray(image_ids, dtype=np.int64))
        img_keep = np.isin(self.image_ids, image_ids)
        ann_keep = np.isin(self.ann_image_id, image_ids)
        if img_keep.all() and ann_keep.all():  # all of it (one task): no copies
            return replace(self, file_names=None, file_index=None)
        kept = replace(self, image_ids=self.image_ids[img_keep], image_sizes=self.image_sizes[img_keep], file_names=None,
                       file_index=None)
        return _take(kept, np.flatnonzero(ann_keep))

    def parts(self, groups: Iterable[np.ndarray]) -> Iterator[GroundTruth]:
        """``subset(ids)`` of each group of image ids in turn, each group's images and annotations
        found by binary search (both are sorted by image id), not by a pass over all of them (a
        run of a million annotations in thousands of groups)."""
        for ids in groups:
            ids = np.unique(np.asarray(ids, dtype=np.int64))
            at = np.searchsorted(self.image_ids, ids)
            found = at < len(self.image_ids)
            found[found] = self.image_ids[at[found]] == ids[found]  # (ids it has not are passed over)
            img_rows = at[found]
            lo, hi = np.searchsorted(self.ann_image_id, ids, "left"), np.searchsorted(self.ann_image_id, ids, "right")
            ann_rows = ranges(lo, hi - lo)
            if len(img_rows) == len(self.image_ids) and len(ann_rows) == len(self.ann_id):
                yield replace(self, file_names=None, file_index=None)
                continue
            kept = replace(self, image_ids=self.image_ids[img_rows], image_sizes=self.image_sizes[img_rows],
                           file_names=None, file_index=None)
            yield _take(kept, ann_rows)


def load_ground_truth(
    url: str,
    *,
    iou_types: tuple[str, ...] = ("bbox",),
    storage_options: dict[str, Any] | None = None,
) -> GroundTruth:
    """Load COCO ground truth from ``url`` and check it has what ``iou_types`` need.

    Without masks to evaluate, a plain file's annotations are read by the compiled reader
    straight into columns (``jsonio.compiled_ground_truth``: no Python object per annotation,
    segmentations skipped) and checked in bulk as :func:`_fast_annotations` checks them; any
    other file, or one those checks decline, is parsed whole and read as before."""
    data = read_document(url, storage_options=storage_options, what="ground truth")
    if not any(t in MASK_IOU_TYPES for t in iou_types):
        compiled = compiled_ground_truth(data)
        if compiled is not None:
            images, categories, rows, columns = compiled
            doc = {"images": images, "categories": categories, "annotations": []}
            gt = ground_truth_from_dict(doc, iou_types=iou_types, source=url, _columns=(rows, columns))
            if gt is not None:
                return gt
    return ground_truth_from_dict(parse_document(data, url, what="ground truth"), iou_types=iou_types, source=url)


def ground_truth_from_dict(
    doc: Any, *, iou_types: tuple[str, ...] = ("bbox",), source: str = "<dict>", _columns: tuple | None = None
) -> GroundTruth | None:
    """Build :class:`GroundTruth` from a parsed COCO annotations document. (``_columns``: the
    annotations as the compiled reader gave them, for :func:`load_ground_truth`; None is
    returned where they are not all plain, and the document is then read whole.)"""
    for t in iou_types:
        if t not in EVAL_IOU_TYPES:
            raise EvalInputError(f"unknown IoU type {t!r}; expected one of {', '.join(EVAL_IOU_TYPES)}")
    if not isinstance(doc, dict):
        raise EvalInputError(f"ground truth {source}: expected a JSON object, found {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise EvalInputError(f"ground truth {source}: missing or non-list {key!r}")

    masks = any(t in MASK_IOU_TYPES for t in iou_types)
    image_ids, sizes, file_names, file_index = _images(doc["images"], source, need_size=masks)
    categories = _categories(doc["categories"], source)
    cat_by_id = {c.id: c for c in categories}
    kp_cats = {c.id for c in categories if c.keypoints}

    anns = doc["annotations"]
    n = len(anns)
    ann_id = np.empty(n, np.int64)
    ann_img = np.empty(n, np.int64)
    ann_cat = np.empty(n, np.int64)
    area = np.empty(n, np.float64)
    iscrowd = np.full(n, -1, np.int8)
    bbox = np.full((n, 4), np.nan, np.float64)
    num_kp = np.full(n, -1, np.int64)
    kp_lens = np.zeros(n, np.int64)
    kp_lists: list[list[float]] = []
    segm: list[Any] | None = [] if masks else None
    known_images = set(image_ids.tolist())
    need_bbox = "bbox" in iou_types or "keypoints" in iou_types
    need_crowd = "bbox" in iou_types or masks
    if _columns is not None:
        fast = _compiled_annotations(*_columns, image_ids, categories, keypoints="keypoints" in iou_types)
        if fast is None:
            return None
    else:
        fast = _fast_annotations(anns, image_ids, categories, masks=masks, keypoints="keypoints" in iou_types)
    if fast is not None:
        ann_id, ann_img, ann_cat, area, iscrowd, bbox, segm, kp = fast
        n = len(ann_id)
        if kp is not None:
            num_kp, kp_lens, kp_lists = kp
        else:
            num_kp, kp_lens = np.full(n, -1, np.int64), np.zeros(n, np.int64)
        anns = []  # checked in bulk
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise EvalInputError(f"ground truth {source}: annotations[{i}] is not an object")
        where = f"ground truth {source}: annotation {a.get('id', f'#{i}')!r}"
        for key in ("id", "image_id", "category_id"):
            problem = id_problem(a.get(key))
            if problem:
                raise EvalInputError(f"{where}: {key!r} {problem}")
        if not is_number(a.get("area")):
            raise EvalInputError(f"{where}: 'area' missing or not a number")
        ann_id[i], ann_img[i], ann_cat[i], area[i] = a["id"], a["image_id"], a["category_id"], a["area"]
        if a["image_id"] not in known_images:
            raise EvalInputError(f"{where}: image_id {a['image_id']} is not in 'images'")
        if a["category_id"] not in cat_by_id:
            raise EvalInputError(f"{where}: category_id {a['category_id']} is not in 'categories'")
        crowd = a.get("iscrowd")
        if crowd is not None:
            if not (is_int(crowd) or isinstance(crowd, bool)):
                raise EvalInputError(f"{where}: 'iscrowd' must be 0 or 1, found {crowd!r}")
            iscrowd[i] = int(bool(crowd))
        elif need_crowd:
            lvis = any(isinstance(im, dict) and "neg_category_ids" in im for im in doc["images"][:1])
            raise EvalInputError(f"{where}: 'iscrowd' missing (pycocotools requires it)"
                                 + ("; this is LVIS ground truth: evaluate it with --lvis (evaluate.lvis)" if lvis else ""))
        if "bbox" in a:
            if not is_box(a["bbox"]):
                raise EvalInputError(f"{where}: 'bbox' must be [x, y, w, h], found {a['bbox']!r}")
            bbox[i] = a["bbox"]
        elif need_bbox:
            raise EvalInputError(f"{where}: 'bbox' missing")
        if segm is not None:
            s = a.get("segmentation")
            problem = _segmentation_problem(s)
            if problem:
                raise EvalInputError(f"{where}: 'segmentation' {problem}")
            segm.append(s)
        if "keypoints" in iou_types and (a["category_id"] in kp_cats or "keypoints" in a):
            kps, nk = a.get("keypoints"), a.get("num_keypoints")
            if not is_number_list(kps) or len(kps) % 3:
                raise EvalInputError(f"{where}: 'keypoints' missing or not [x, y, v] triplets")
            cat = cat_by_id[a["category_id"]]
            if cat.keypoints and len(kps) != 3 * len(cat.keypoints):
                raise EvalInputError(
                    f"{where}: {len(kps) // 3} keypoints, category {cat.id} ({cat.name}) "
                    f"declares {len(cat.keypoints)}"
                )
            if not is_int64(nk):
                raise EvalInputError(f"{where}: 'num_keypoints' missing or not a 64-bit integer")
            num_kp[i] = nk
            kp_lens[i] = len(kps)
            kp_lists.append(kps)

    _check_unique(ann_id, f"ground truth {source}: annotation")
    order = np.argsort(ann_img, kind="stable")
    kp_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(kp_lens, out=kp_offsets[1:])
    kp_values = kp_lists if isinstance(kp_lists, np.ndarray) else np.fromiter(
        chain.from_iterable(kp_lists), dtype=np.float64, count=int(kp_offsets[-1])
    )
    gt = GroundTruth(
        source=source,
        image_ids=image_ids,
        image_sizes=sizes,
        categories=categories,
        ann_id=ann_id,
        ann_image_id=ann_img,
        ann_category_id=ann_cat,
        area=area,
        iscrowd=iscrowd,
        bbox=bbox,
        num_keypoints=num_kp,
        kp_offsets=kp_offsets,
        kp_values=kp_values,
        segmentation=segm,
        file_names=file_names,
        file_index=file_index,
    )
    if "keypoints" in iou_types:
        _check_keypoint_lengths(gt)
    if (ann_id == 0).any():
        log.warning(
            "ground truth %s has an annotation with id 0: pycocotools counts a detection "
            "matched to it as a false positive, and so does this evaluation", source
        )
    return _take(gt, order) if not np.all(order == np.arange(n)) else gt


def _fast_annotations(anns: list[Any], image_ids: np.ndarray, categories: tuple[Category, ...], *,
                      masks: bool, keypoints: bool = False) -> tuple | None:
    """The columns of well-formed annotations (ids, area, iscrowd and bbox present; polygons or
    valid RLEs; keypoint lists of their category's length), checked in bulk, as the itemwise
    loop would read them; None: let it speak."""
    try:
        if set(map(type, anns)) != {dict}:
            return None
        ids = []
        for key in ("id", "image_id", "category_id"):
            values = [a[key] for a in anns]
            if set(map(type, values)) != {int}:
                return None
            ids.append(np.array(values))
            if ids[-1].dtype != np.int64:  # beyond 64 bits: the loop names it
                return None
        area, crowd = [a["area"] for a in anns], [a["iscrowd"] for a in anns]
        boxes = [a["bbox"] for a in anns]
        if not set(map(type, area)) <= {int, float} or not set(map(type, crowd)) <= {int, bool}:
            return None
        if set(map(type, boxes)) != {list} or {len(b) for b in boxes} != {4} or not set(map(type, chain.from_iterable(boxes))) <= {int, float}:
            return None
        segm = [a["segmentation"] for a in anns] if masks else None
        kp = _fast_keypoints(anns, categories) if keypoints else None
        if keypoints and kp is None:
            return None
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not (np.isin(ids[1], image_ids).all() and np.isin(ids[2], [c.id for c in categories]).all()):
        return None
    if segm is not None:
        polygons = [s for s in segm if type(s) is list]
        if any(not s or type(s[0]) is not list or len(s[0]) <= 4 for s in polygons):
            return None
        if any(type(p) is not list for s in polygons for p in s[1:]):
            return None
        if not set(map(type, chain.from_iterable(chain.from_iterable(polygons)))) <= {int, float}:
            return None
        if any(_segmentation_problem(s) for s in segm if type(s) is not list):
            return None
    return (*ids, np.array(area, np.float64), (np.array(crowd) != 0).astype(np.int8),
            np.array(boxes, np.float64), segm, kp)


def _compiled_annotations(rows: int, columns: tuple, image_ids: np.ndarray, categories: tuple[Category, ...], *,
                          keypoints: bool) -> tuple | None:
    """:func:`_fast_annotations`' columns (without masks) from the compiled reader's, with its
    checks (known images and categories; keypoint lists where they must be, of their category's
    length, with an integer ``num_keypoints``); None: let the whole document speak."""
    ids, img, cat, area, crowd, bbox, kp, kp_at, has_kp, nk, has_nk = columns
    ids, img, cat = (np.frombuffer(b, np.int64) for b in (ids, img, cat))
    if not (np.isin(img, image_ids).all() and np.isin(cat, [c.id for c in categories]).all()):
        return None
    kp_columns = None
    if keypoints:
        widths = _keypoint_widths(categories)
        has_kp, has_nk = np.frombuffer(has_kp, np.uint8) > 0, np.frombuffer(has_nk, np.uint8) > 0
        which = np.flatnonzero(np.isin(cat, list(widths)) | has_kp)
        if not (has_kp[which].all() and has_nk[which].all()):
            return None  # a keypoint category's annotation without them: the itemwise loop words it
        lens = np.diff(np.frombuffer(kp_at, np.int32).astype(np.int64))[which]
        counts = _keypoint_counts(rows, which, cat[which].tolist(), lens, np.frombuffer(nk, np.int64)[which], widths)
        if counts is None:
            return None
        kp_columns = *counts, np.frombuffer(kp, np.float64).copy()  # (lists of the others are empty)
    return (ids.copy(), img.copy(), cat.copy(), np.frombuffer(area, np.float64).copy(),
            (np.frombuffer(crowd, np.int64) != 0).astype(np.int8), np.frombuffer(bbox, np.float64).reshape(-1, 4).copy(),
            None, kp_columns)


def _fast_keypoints(anns: list[Any], categories: tuple[Category, ...]) -> tuple | None:
    """``num_keypoints``, list lengths and lists of the annotations that carry keypoints (those
    of keypoint categories, and any with a ``keypoints`` field), checked in bulk; None: declined."""
    widths = _keypoint_widths(categories)
    which = [i for i, a in enumerate(anns) if a["category_id"] in widths or "keypoints" in a]
    lists = [anns[i]["keypoints"] for i in which]
    counts = [anns[i]["num_keypoints"] for i in which]
    if not set(map(type, lists)) <= {list} or not set(map(type, counts)) <= {int}:
        return None
    if not set(map(type, chain.from_iterable(lists))) <= {int, float}:
        return None
    lens = np.array([len(k) for k in lists], np.int64)
    nk = np.array(counts, np.int64) if counts else np.zeros(0, np.int64)  # beyond 64 bits: OverflowError
    checked = _keypoint_counts(len(anns), which, [anns[i]["category_id"] for i in which], lens, nk, widths)
    return None if checked is None else (*checked, lists)


def _keypoint_widths(categories: tuple[Category, ...]) -> dict[int, int]:
    """Each keypoint category's list length (3 numbers a keypoint)."""
    return {c.id: 3 * len(c.keypoints) for c in categories if c.keypoints}


def _keypoint_counts(n: int, which: Any, cats: list[int], lens: np.ndarray, nk: np.ndarray,
                     widths: dict[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``num_keypoints`` and list length of each of ``n`` annotations (-1 and 0 where it has no
    list), where the lists of ``which`` (of categories ``cats``, lengths ``lens``, counts ``nk``)
    are triplets of their category's length; None otherwise (the itemwise loop words it)."""
    need = np.array([widths.get(c, -1) for c in cats], np.int64)
    if (lens % 3).any() or ((need >= 0) & (lens != need)).any():
        return None
    num_kp, kp_lens = np.full(n, -1, np.int64), np.zeros(n, np.int64)
    num_kp[which], kp_lens[which] = nk, lens
    return num_kp, kp_lens


def _take(gt: GroundTruth, rows: np.ndarray) -> GroundTruth:
    starts, lengths = gt.kp_offsets[rows], gt.kp_offsets[rows + 1] - gt.kp_offsets[rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    kp_idx = ranges(starts, lengths)
    return replace(
        gt,
        ann_id=gt.ann_id[rows],
        ann_image_id=gt.ann_image_id[rows],
        ann_category_id=gt.ann_category_id[rows],
        area=gt.area[rows],
        iscrowd=gt.iscrowd[rows],
        bbox=gt.bbox[rows],
        num_keypoints=gt.num_keypoints[rows],
        kp_offsets=offsets,
        kp_values=gt.kp_values[kp_idx],
        segmentation=None if gt.segmentation is None else [gt.segmentation[i] for i in rows],
    )


def _images(images: list[Any], source: str, *, need_size: bool) -> tuple[np.ndarray, np.ndarray, tuple, np.ndarray]:
    ids = np.empty(len(images), np.int64)
    sizes = np.full((len(images), 2), -1, np.int64)
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not is_int(img.get("id")):
            raise EvalInputError(f"ground truth {source}: images[{i}] has no integer 'id'")
        problem = id_problem(img["id"])
        if problem:
            raise EvalInputError(f"ground truth {source}: images[{i}]: 'id' {problem}")
        ids[i] = img["id"]
        h, w = img.get("height"), img.get("width")
        if is_int64(h) and is_int64(w):
            sizes[i] = (h, w)
        elif need_size:
            raise EvalInputError(
                f"ground truth {source}: image {img['id']} lacks integer 'height'/'width' "
                "(needed to rasterise polygons for segm)"
            )
    _check_unique(ids, f"ground truth {source}: image")
    order = np.argsort(ids, kind="stable")
    names = [img.get("file_name") for img in images]
    named = tuple(names[i] if isinstance(names[i], str) else None for i in order)
    return ids[order], sizes[order], named, order.astype(np.int64)


def _categories(cats: list[Any], source: str) -> tuple[Category, ...]:
    out = []
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not is_int(c.get("id")):
            raise EvalInputError(f"ground truth {source}: categories[{i}] has no integer 'id'")
        problem = id_problem(c["id"])
        if problem:
            raise EvalInputError(f"ground truth {source}: categories[{i}]: 'id' {problem}")
        names = c.get("keypoints") or ()
        if not isinstance(names, (list, tuple)):
            raise EvalInputError(f"ground truth {source}: category {c['id']}: 'keypoints' must be a list")
        sigmas = c.get("oks_sigmas")
        if sigmas is not None:
            if not is_number_list(sigmas) or (names and len(sigmas) != len(names)):
                raise EvalInputError(
                    f"ground truth {source}: category {c['id']}: 'oks_sigmas' must be one number "
                    f"per keypoint ({len(names)}), found {sigmas!r}"
                )
            sigmas = tuple(float(s) for s in sigmas)
        out.append(Category(c["id"], str(c.get("name", c["id"])), tuple(map(str, names)), sigmas))
    _check_unique(np.array([c.id for c in out], np.int64), f"ground truth {source}: category")
    return tuple(sorted(out, key=lambda c: c.id))


def _check_unique(ids: np.ndarray, what: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        raise EvalInputError(f"{what} ids are not unique: {dup[:10].tolist()} appear more than once")


def _check_keypoint_lengths(gt: GroundTruth) -> None:
    lens = (gt.kp_offsets[1:] - gt.kp_offsets[:-1]) // 3
    for cid in gt.keypoint_category_ids():
        sel = (gt.ann_category_id == cid) & (lens > 0)
        found = np.unique(lens[sel])
        if len(found) > 1:
            raise EvalInputError(
                f"ground truth {gt.source}: category {cid} annotations have different keypoint "
                f"counts {found.tolist()}"
            )


_SEGM_FORMS = "polygons [[x1, y1, x2, y2, x3, y3, ...], ...] or an RLE {'size': [h, w], 'counts': ...}"


def _segmentation_problem(s: Any) -> str | None:
    """What makes ``s`` a segmentation pycocotools cannot rasterise, or None (see the top)."""
    if isinstance(s, list):
        if not s:
            return f"is an empty list; expected {_SEGM_FORMS}"
        if not all(is_number_list(p) for p in s):
            return f"holds a polygon that is not a list of numbers; expected {_SEGM_FORMS}"
        if len(s[0]) <= 4:
            return (
                f"polygon 0 has {len(s[0])} numbers, fewer than 3 points [x1, y1, x2, y2, x3, y3, ...]; "
                "pycocotools cannot rasterise such a first polygon (it reads 4 numbers as a box)"
            )
        return None
    if isinstance(s, dict):
        size, counts = s.get("size"), s.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int64(v) and v >= 0 for v in size)):
            return f"RLE 'size' must be [height, width], found {size!r}"
        if not (isinstance(counts, str) or is_number_list(counts)):
            return f"RLE 'counts' must be a string or a list of run lengths, found {type(counts).__name__}"
        return None
    return f"missing or not {_SEGM_FORMS}"
