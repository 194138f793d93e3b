"""A run as COCO JSON, for the COCO API and annotation tools (CVAT, Label Studio, FiftyOne).

Two formats, both read from the run's committed tables:

* **coco-results** (``results_<iou_type>.json``): the list ``COCO.loadRes`` and ``COCOeval``
  read, one file per IoU type, each holding only its own field -- ``bbox`` for bbox,
  ``segmentation`` (compressed RLE) for segm, ``keypoints`` for keypoints -- as torchvision's
  reference scripts write them. ``loadRes`` derives a result's ``area`` from the *first*
  result's fields (a ``bbox`` present means ``w * h`` for every result), so mixing fields in one
  file would change segm and keypoint AP; kept apart, pycocotools' numbers on these files equal
  ``mrcnn-batch eval``'s on the run.
* **coco** (``coco.json``): a COCO dataset: ``images`` (every ``ok`` image; ``file_name`` is its
  URI relative to ``image_root`` when given, else the full URI, which is also ``coco_url``),
  ``categories`` (the model's, with ``keypoints`` and ``skeleton`` on its keypoint category),
  and ``annotations``: one per instance (``bbox``, ``area`` = mask pixels where a mask exists,
  RLE ``segmentation``, ``iscrowd`` 0, and the prediction's ``score``). A keypoint detection
  joins its instance (``mask_instance_id``) as ``keypoints``/``num_keypoints``; one without an
  instance becomes an annotation of its own (box and keypoints). Detections of a label that is
  not a declared category (torchvision's ``N/A`` placeholders) are left out, counted in
  ``info.dropped_detections`` and named in a warning.

* **coco-dir**: the COCO *directory* layout that datumaro, CVAT's "COCO 1.0" and detectron2 read:
  ``annotations/instances_<subset>.json`` (the coco dataset above, ``file_name`` relative to
  ``images/<subset>/``), ``annotations/person_keypoints_<subset>.json`` where the model has
  keypoints (the keypoint category and its annotations only, as COCO ships them), and the
  images themselves copied, byte for byte, into ``images/<subset>/`` (``file_name``: the path
  below ``image_root`` when given, else the file's name, prefixed with its image id where two
  images share a name).

Coordinates are the tables' own: ``[x, y, w, h]`` in original-image pixels, keypoint triplets
``[x, y, v]`` with ``v = 2``. Rows are written in (image id, instance id) order.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections import Counter
from typing import Any, Sequence

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from mrcnn_batch.config import IOU_TYPES
from mrcnn_batch.run.layout import RunDir, RunMeta, open_run

log = logging.getLogger(__name__)

FORMATS = ("coco-results", "coco", "coco-dir")
PLACEHOLDERS = ("labels that are not among the model's categories (torchvision's COCO models keep 'N/A' placeholders "
                "for COCO's unused ids, e.g. 12, 26, 29, 30, 45, 66, 68, 69, 71, 83): a dataset names only categories "
                "it declares")


def run_iou_types(run: RunDir) -> tuple[str, ...]:
    """The IoU types a run's model produced."""
    model = run.run_meta().model
    return ("bbox",) + (("segm",) if model.get("has_masks") else ()) + (("keypoints",) if model.get("has_keypoints") else ())


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("image_id", "ascending"), ("instance_id", "ascending")])


def coco_results(run: RunDir, *, iou_type: str) -> list[dict[str, Any]]:
    """The run's detections as a COCO results list of one IoU type."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"unknown IoU type {iou_type!r}; expected one of {', '.join(IOU_TYPES)}")
    if iou_type == "keypoints":
        t = _sorted(run.read_table("keypoints"))
        return [
            {"image_id": r["image_id"], "category_id": r["category_id"], "keypoints": r["keypoints"], "score": r["score"]}
            for r in t.select(["image_id", "instance_id", "category_id", "keypoints", "score"]).to_pylist()
        ]
    t = _sorted(run.read_table("instances"))
    if iou_type == "bbox":
        return [
            {"image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"], "score": r["score"]}
            for r in t.select(["image_id", "instance_id", "category_id", "bbox", "score"]).to_pylist()
        ]
    rows = t.select(["image_id", "instance_id", "category_id", "mask", "score"]).to_pylist()
    missing = [r["image_id"] for r in rows if r["mask"] is None]
    if missing:
        raise ValueError(f"run {run.url}: instances without a mask (e.g. image {missing[0]}); segm needs a mask model")
    return [
        {"image_id": r["image_id"], "category_id": r["category_id"],
         "segmentation": {"size": r["mask"]["size"], "counts": r["mask"]["counts"]}, "score": r["score"]}
        for r in rows
    ]


def run_categories(meta: RunMeta) -> list[dict[str, Any]]:
    """The COCO ``categories`` of a run: its model's declared categories, with ``keypoints`` and
    ``skeleton`` on the keypoint category."""
    model = meta.model
    kp_cat = model.get("keypoint_category_id")
    cats = []
    for c in model.get("categories") or []:
        cat: dict[str, Any] = {"id": int(c["id"]), "name": c["name"], "supercategory": ""}
        if model.get("has_keypoints") and kp_cat is not None and int(c["id"]) == int(kp_cat):
            cat["keypoints"] = list(model.get("keypoint_names") or [])
            cat["skeleton"] = [list(e) for e in model.get("skeleton") or []]
        cats.append(cat)
    return cats


def _prefixes(image_root: str | None) -> list[str]:
    """``image_root`` as URI prefixes: a local path also as the ``file://`` URI ``infer`` records."""
    if not image_root:
        return []
    roots = [image_root.rstrip("/") + "/"]
    if "://" not in image_root:
        roots.append("file://" + os.path.abspath(image_root).rstrip("/") + "/")
    return roots


def coco_dataset(run: RunDir, *, image_root: str | None = None) -> dict[str, Any]:
    """The run's predictions as a COCO dataset (images, categories, scored annotations)."""
    meta = run.run_meta()
    images = run.read_table("images")
    images = images.filter(pc.equal(pc.cast(images["status"], "string"), "ok")).sort_by("image_id")
    roots = _prefixes(image_root)
    coco_images = []
    for r in images.select(["image_id", "uri", "width", "height"]).to_pylist():
        root = next((p for p in roots if r["uri"].startswith(p)), None)
        name = r["uri"][len(root):] if root else r["uri"]
        coco_images.append({"id": r["image_id"], "file_name": name, "coco_url": r["uri"],
                            "width": r["width"], "height": r["height"]})
    ok = {im["id"] for im in coco_images}
    categories = run_categories(meta)
    declared = {c["id"] for c in categories}
    dropped: Counter[int] = Counter()
    annotations: list[dict[str, Any]] = []
    by_instance: dict[tuple[int, int], dict[str, Any]] = {}
    for r in _sorted(run.read_table("instances")).to_pylist():
        if r["image_id"] not in ok:
            continue
        if r["category_id"] not in declared:
            dropped[r["category_id"]] += 1
            continue
        ann: dict[str, Any] = {
            "id": len(annotations) + 1, "image_id": r["image_id"], "category_id": r["category_id"],
            "bbox": r["bbox"], "area": r["area"], "iscrowd": 0, "score": r["score"],
        }
        if r["mask"] is not None:
            ann["segmentation"] = {"size": r["mask"]["size"], "counts": r["mask"]["counts"]}
        annotations.append(ann)
        by_instance[(r["image_id"], r["instance_id"])] = ann
    for r in _sorted(run.read_table("keypoints")).to_pylist():
        if r["image_id"] not in ok:
            continue
        if r["category_id"] not in declared:
            dropped[r["category_id"]] += 1
            continue
        n = sum(1 for v in r["keypoints"][2::3] if v > 0)
        target = by_instance.get((r["image_id"], r["mask_instance_id"])) if r["mask_instance_id"] is not None else None
        if target is None:
            x, y, w, h = r["bbox"]
            target = {"id": len(annotations) + 1, "image_id": r["image_id"], "category_id": r["category_id"],
                      "bbox": r["bbox"], "area": float(w) * float(h), "iscrowd": 0, "score": r["score"]}
            annotations.append(target)
        target["keypoints"] = r["keypoints"]
        target["num_keypoints"] = n
    info: dict[str, Any] = {"description": f"mrcnn-batch predictions of run {meta.run_id}",
                            "model": meta.model.get("name"), "run_id": meta.run_id}
    if dropped:
        info["dropped_detections"] = {"by_label": {str(k): v for k, v in sorted(dropped.items())}, "why": PLACEHOLDERS}
        log.warning("%s: %d detection(s) of label(s) %s left out of coco.json: %s", run.url, sum(dropped.values()),
                    ", ".join(map(str, sorted(dropped))), PLACEHOLDERS)
    return {"info": info, "images": coco_images, "annotations": annotations, "categories": categories}


def person_keypoints(dataset: dict[str, Any]) -> dict[str, Any] | None:
    """The keypoint part of a COCO dataset, as COCO ships ``person_keypoints_*.json``: the
    category that has keypoints and its annotations (None when no category has keypoints)."""
    cats = [c for c in dataset["categories"] if "keypoints" in c]
    if not cats:
        return None
    ids = {c["id"] for c in cats}
    none = {"keypoints": [0.0] * (3 * len(cats[0]["keypoints"])), "num_keypoints": 0}
    # copies: the instances file keeps its annotations as they are (no keypoints where none were found)
    anns = [{**none, **a} for a in dataset["annotations"] if a["category_id"] in ids]
    return {**dataset, "annotations": anns, "categories": cats}


def _dataset_file_names(images: list[dict[str, Any]], image_root: str | None) -> dict[int, str]:
    """Each image's ``file_name`` under ``images/<subset>/``: its path below ``image_root`` when
    given, else its file name; the image id goes in front where two would share a name."""
    names = {}
    for im in images:
        name = im["file_name"] if image_root and "://" not in im["file_name"] else posixpath.basename(im["coco_url"])
        names[im["id"]] = name.lstrip("/").replace("::", "-") or f"{im['id']}"
    counts = Counter(names.values())
    return {i: (n if counts[n] == 1 else f"{i}-{posixpath.basename(n)}") for i, n in names.items()}


def export_run(
    url: str,
    out_dir: str | None = None,
    *,
    format: str = "coco-results",
    iou_types: Sequence[str] | None = None,
    image_root: str | None = None,
    subset: str = "default",
    storage_options: dict[str, Any] | None = None,
    output_storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Write a run's export into ``out_dir`` (default ``RUN/export/``); returns the URLs written
    (for ``coco-dir``, its JSON files; the images copied beside them are counted in the log)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    run = open_run(url, storage_options=storage_options)
    target = out_dir or posixpath.join(url.rstrip("/"), "export")
    opts = dict(storage_options or {}) if output_storage_options is None else dict(output_storage_options)
    fs, root = fsspec.core.url_to_fs(target, **opts)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    docs: dict[str, Any] = {}
    if format == "coco":
        docs["coco.json"] = coco_dataset(run, image_root=image_root)
    elif format == "coco-dir":
        if not subset or "/" in subset or subset in (".", ".."):
            raise ValueError(f"subset must be a plain name, got {subset!r}")
        dataset = coco_dataset(run, image_root=image_root)
        names = _dataset_file_names(dataset["images"], image_root)
        images_dir = posixpath.join(root, "images", subset)
        for im in dataset["images"]:
            path = posixpath.join(images_dir, names[im["id"]])
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with fsspec.open(im["coco_url"], "rb", **(storage_options or {})) as src, fs.open(path, "wb") as dst:
                dst.write(src.read())
            im["file_name"] = names[im["id"]]
        fs.makedirs(posixpath.join(root, "annotations"), exist_ok=True)
        docs[f"annotations/instances_{subset}.json"] = dataset
        keypoints = person_keypoints(dataset)
        if keypoints is not None:
            docs[f"annotations/person_keypoints_{subset}.json"] = keypoints
        log.info("copied %d images into %s", len(dataset["images"]), fs.unstrip_protocol(images_dir))
    else:
        available = run_iou_types(run)
        types = tuple(iou_types) if iou_types else available
        bad = [t for t in types if t not in available]
        if bad:
            raise ValueError(f"run {url} has no {', '.join(bad)} predictions (its model gives {', '.join(available)})")
        for t in types:
            docs[f"results_{t}.json"] = coco_results(run, iou_type=t)
    written = []
    for name, doc in docs.items():
        path = posixpath.join(root, name)
        with fs.open(path, "wb") as f:
            f.write(json.dumps(doc, allow_nan=False).encode())
        written.append(fs.unstrip_protocol(path))
    log.info("exported %s of %s to %s", format, url, ", ".join(written))
    return written
