"""Overlays of a run's predictions on its images: masks, boxes, labels, keypoint skeletons.

Drawing is torchvision's (``draw_segmentation_masks``, ``draw_bounding_boxes``,
``draw_keypoints``) on ``(3, H, W)`` uint8 tensors. Rows come from the run's committed tables
as written (``schemas``): ``bbox`` is COCO ``[x, y, w, h]`` in original-image pixels, ``mask``
COCO compressed RLE of the full image, ``keypoints`` COCO triplets; images are fetched and
decoded exactly as ``infer`` read them (same EXIF handling, same pixel limit), so the rows land
on the pixels the model saw. The skeleton is the model's, from the run's ``_run.json``.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import unquote

import fsspec
import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import (
    draw_bounding_boxes,
    draw_keypoints,
    draw_segmentation_masks,
)

from mrcnn_batch.arrays import from_numpy, is_word
from mrcnn_batch.encode.masks import decode_rle
from mrcnn_batch.read.decode import decode_image
from mrcnn_batch.read.fetch import fetch_all
from mrcnn_batch.run.layout import RunDir
from mrcnn_batch.schemas import TABLES

log = logging.getLogger(__name__)

#: Category colours, indexed by ``category_id % len(PALETTE)`` (matplotlib's tab10 + tab20b).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (57, 59, 121), (99, 121, 57), (140, 109, 49), (132, 60, 57), (123, 65, 115),
    (82, 84, 163), (181, 207, 107), (231, 186, 82), (214, 97, 107), (206, 109, 189),
)


@dataclass(frozen=True)
class OverlayStyle:
    """What an overlay draws, and how."""

    score_threshold: float = 0.5  # instances and keypoint detections below are not drawn
    masks: bool = True
    boxes: bool = True
    labels: bool = True
    keypoints: bool = True
    mask_alpha: float = 0.5
    box_width: int = 2
    keypoint_radius: int = 3
    skeleton_width: int = 2


@dataclass(frozen=True)
class ImageRecord:
    """One ``images`` row with its ``instances`` and ``keypoints`` rows (dicts, by instance id)."""

    image_id: int
    uri: str
    status: str
    error: str | None
    width: int | None
    height: int | None
    instances: tuple[dict[str, Any], ...] = ()
    keypoints: tuple[dict[str, Any], ...] = ()


def category_color(category_id: int) -> tuple[int, int, int]:
    return PALETTE[int(category_id) % len(PALETTE)]


def image_records(run: RunDir, *, image_ids: Sequence[int] | None = None, limit: int | None = None,
                  status: str | None = "ok") -> list[ImageRecord]:
    """The committed images (by id; only ``status`` ones unless ``None``) with their rows.

    ``image_ids`` picks images (in that order); otherwise the first ``limit`` by image id.
    """
    images = run.read_table("images")
    if image_ids is not None:
        wanted = [int(i) for i in image_ids]
        images = images.filter(pc.is_in(images["image_id"], value_set=from_numpy(np.array(wanted, np.int64))))
        found = set(images["image_id"].to_pylist())
        absent = [i for i in wanted if i not in found]
        if absent:
            raise KeyError(f"run {run.url}: no committed image with id {', '.join(map(str, absent[:5]))}")
    else:
        if status is not None:
            images = images.filter(from_numpy(is_word(images["status"], status)))
        images = images.sort_by("image_id")
        if limit is not None:
            images = images.slice(0, limit)
    rows = images.to_pylist()
    if image_ids is not None:
        order = {int(i): k for k, i in enumerate(image_ids)}
        rows.sort(key=lambda r: order[r["image_id"]])
    inst = _rows_by_image(run, "instances", rows)
    kps = _rows_by_image(run, "keypoints", rows)
    return [
        ImageRecord(
            image_id=r["image_id"], uri=r["uri"], status=r["status"], error=r["error"],
            width=r["width"], height=r["height"],
            instances=tuple(inst.get(r["image_id"], ())), keypoints=tuple(kps.get(r["image_id"], ())),
        )
        for r in rows
    ]


def _rows_by_image(run: RunDir, table: str, images: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """The rows of ``table`` of these images (rows of the images table), read from their own
    shards' files alone (not every shard's, as a dataset filter would open them)."""
    if not images:
        return {}
    ids = from_numpy(np.array([r["image_id"] for r in images], np.int64))  # (pa.array imports pandas)
    t = run.read_shards(table, sorted({r["shard"] for r in images}), TABLES[table].names)
    t = t.filter(pc.is_in(t["image_id"], value_set=ids))
    out: dict[int, list[dict[str, Any]]] = {}
    for row in t.sort_by([("image_id", "ascending"), ("instance_id", "ascending")]).to_pylist():
        out.setdefault(row["image_id"], []).append(row)
    return out


def load_images(records: Sequence[ImageRecord], *, storage_options: dict[str, Any], max_pixels: int,
                exif_transpose: bool = True) -> list[np.ndarray | None]:
    """Each record's image as ``(H, W, 3)`` uint8, decoded as ``infer`` decoded it (None: failed)."""
    data = fetch_all([r.uri for r in records], storage_options=storage_options)
    out: list[np.ndarray | None] = []
    for rec, d in zip(records, data):
        if isinstance(d, BaseException):
            log.warning("image %d (%s): cannot read it: %s", rec.image_id, rec.uri, d)
            out.append(None)
            continue
        dec = decode_image(d, max_pixels=max_pixels, exif_transpose=exif_transpose)
        if dec.status != "ok":
            log.warning("image %d (%s): %s: %s", rec.image_id, rec.uri, dec.status, dec.error)
        out.append(dec.array)
    return out


def load_run_images(run: RunDir, records: Sequence[ImageRecord], *,
                    storage_options: dict[str, Any]) -> list[np.ndarray | None]:
    """``load_images`` with the run's own read settings (pixel limit, EXIF handling)."""
    read = run.run_meta().config.get("read") or {}
    return load_images(records, storage_options=storage_options, max_pixels=int(read.get("max_pixels") or 10**9),
                       exif_transpose=bool(read.get("exif_transpose", True)))


def run_skeleton(run: RunDir) -> list[list[int]]:
    """The model's keypoint skeleton (1-based edges) from the run's metadata."""
    return list(run.run_meta().model.get("skeleton") or [])


def draw_overlay(
    image: np.ndarray | torch.Tensor,
    instances: Sequence[dict[str, Any]],
    keypoints: Sequence[dict[str, Any]] = (),
    *,
    skeleton: Sequence[Sequence[int]] = (),
    style: OverlayStyle = OverlayStyle(),
) -> torch.Tensor:
    """``image`` (``(H, W, 3)`` array or ``(3, H, W)`` tensor, uint8) with the rows drawn on it.

    ``skeleton`` edges are 1-based keypoint indices (COCO's convention).
    """
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1) if isinstance(image, np.ndarray) else image
    h, w = int(img.shape[1]), int(img.shape[2])
    k = max(1, round(max(h, w) / SCALE_PX))  # lines, points and labels grow with the image
    shown = [r for r in instances if r["score"] >= style.score_threshold]
    colors = [category_color(r["category_id"]) for r in shown]
    if style.masks:
        masks = [(decode_rle(r["mask"]), c) for r, c in zip(shown, colors) if r.get("mask") is not None]
        masks = [(m, c) for m, c in masks if m.shape == (h, w)]
        if masks:
            stack = torch.from_numpy(np.stack([m for m, _ in masks]))
            img = draw_segmentation_masks(img, stack, alpha=style.mask_alpha, colors=[c for _, c in masks])
    kp_shown = [r for r in keypoints if r["score"] >= style.score_threshold]
    if style.boxes and (shown or kp_shown):
        boxed = shown or kp_shown  # keypoint-only detections carry their own boxes
        boxes = torch.tensor([_xyxy(r["bbox"]) for r in boxed], dtype=torch.float32)
        box_colors = [category_color(r["category_id"]) for r in boxed]
        img = draw_bounding_boxes(img, boxes, colors=box_colors, width=style.box_width * k)
        if style.labels:
            img = _draw_labels(img, [(f"{r['category']} {r['score']:.2f}", _xyxy(r["bbox"]), c) for r, c in zip(boxed, box_colors)],
                               size=LABEL_POINTS * k)
    if style.keypoints and kp_shown:
        edges = [(int(a) - 1, int(b) - 1) for a, b in skeleton]
        for r in kp_shown:
            trip = torch.tensor(r["keypoints"], dtype=torch.float32).reshape(-1, 3)
            img = draw_keypoints(
                img, trip[None, :, :2], connectivity=edges or None, colors=_contrast(category_color(r["category_id"])),
                radius=style.keypoint_radius * k, width=style.skeleton_width * k, visibility=(trip[None, :, 2] > 0),
            )
    return img


SCALE_PX = 640  # an image this long (or shorter) is drawn at the style's sizes; k times longer, k times thicker
LABEL_POINTS = 11  # label text height at that size


def _draw_labels(img: torch.Tensor, labels: list[tuple[str, list[float], tuple[int, int, int]]], *, size: int) -> torch.Tensor:
    """White text on the box's colour at each box's top-left corner, kept inside the image,
    in a font of ``size`` pixels (Pillow's own scalable font; its fixed bitmap font where
    Pillow was built without FreeType)."""
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow without FreeType
        font = ImageFont.load_default()
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(pil)
    pad = max(1, size // 5)
    for text, (x0, y0, _, _), color in labels:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        x = min(max(0.0, x0), max(0.0, pil.width - tw))
        y = y0 - th if y0 - th >= 0 else min(max(0.0, y0), max(0.0, pil.height - th))
        draw.rectangle((x, y, x + tw, y + th), fill=color)
        draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def _xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _contrast(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour that stands out on ``color`` (for keypoints drawn over their mask)."""
    return (255, 255, 255) if sum(color) < 384 else (0, 0, 0)


def to_png(image: torch.Tensor | np.ndarray) -> bytes:
    """PNG bytes of a ``(3, H, W)`` tensor or ``(H, W, 3)`` array (uint8)."""
    arr = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def render_records(run: RunDir, records: Sequence[ImageRecord], *, storage_options: dict[str, Any],
                   style: OverlayStyle = OverlayStyle()) -> list[tuple[ImageRecord, torch.Tensor | None]]:
    """Each record with its overlay (None where its image can no longer be read)."""
    skeleton = run_skeleton(run)
    arrays = load_run_images(run, records, storage_options=storage_options)
    return [
        (rec, None if arr is None else draw_overlay(arr, rec.instances, rec.keypoints, skeleton=skeleton, style=style))
        for rec, arr in zip(records, arrays)
    ]


def overlay_name(uri: str, image_id: int) -> str:
    """``dog-3913895878567093081.png`` for ``.../dog.jpg``: the image's file stem, so a person
    finds it, and its id, so two ``dog.jpg`` in different folders do not collide. Anything but
    letters, digits, ``.``, ``_`` and ``-`` becomes ``_``; the stem is cut at 80. A tar member is
    named by its own file name."""
    stem = posixpath.splitext(unquote(posixpath.basename(uri.split("::")[0].rstrip("/"))))[0]
    stem = _UNSAFE.sub("_", stem)[:80].strip("._") or "image"
    return f"{stem}-{image_id}.png"


_UNSAFE = re.compile(r"[^\w.-]+")


def render_run(
    url: str,
    out_dir: str | None = None,
    *,
    image_ids: Sequence[int] | None = None,
    limit: int | None = 32,
    storage_options: dict[str, Any] | None = None,
    output_storage_options: dict[str, Any] | None = None,
    style: OverlayStyle = OverlayStyle(),
) -> list[str]:
    """Write ``<stem>-<image_id>.png`` overlays of a run's images under ``out_dir`` (default
    ``RUN/render/``); the first ``limit`` ok images by id unless ``image_ids`` is given.
    ``storage_options`` read the run and its images. Returns the URLs written."""
    run = RunDir(url, dict(storage_options or {}))
    records = image_records(run, image_ids=image_ids, limit=limit)
    target = out_dir or posixpath.join(url.rstrip("/"), "render")
    opts = dict(storage_options or {}) if output_storage_options is None else dict(output_storage_options)
    fs, root = fsspec.core.url_to_fs(target, **opts)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    written = []
    for rec, img in render_records(run, records, storage_options=dict(storage_options or {}), style=style):
        if img is None:
            continue
        path = posixpath.join(root, overlay_name(rec.uri, rec.image_id))
        with fs.open(path, "wb") as f:
            f.write(to_png(img))
        written.append(fs.unstrip_protocol(path))
    log.info("rendered %d overlays into %s", len(written), target)
    return written
