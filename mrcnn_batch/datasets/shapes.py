"""A deterministic synthetic instance-segmentation and keypoint dataset ("shapes").

Each image is a textured background with a few overlapping, textured shapes of three
categories -- ``ellipse``, ``rectangle`` and ``triangle`` -- drawn back to front. Every shape is
rasterised once, exactly, on the pixel grid, and that one boolean array is both what is painted
into the image and (minus the parts of later shapes that cover it) the instance's mask; the
image is saved losslessly (PNG), so the masks are exact, not approximations of a drawing.

Data contract (the dataset's, stated once here):

* Pixel ``(row, col)`` covers the continuous square ``[col, col+1) x [row, row+1)``; a pixel
  belongs to a shape when its centre ``(col + 0.5, row + 0.5)`` lies inside the shape's
  geometry (boundary included). Keypoints are continuous coordinates in that same frame, the
  convention of COCO and of torchvision's keypoint heads.
* Category ids: ``CATEGORIES[i]`` is the name of id ``i``; id 0 is the background.
* Triangles carry three keypoints, in this order: ``apex`` (the vertex opposite the base,
  always the top-most), ``left_base`` and ``right_base`` (the base's vertices, left and right
  in image coordinates). Triangles are isosceles, apex up, rotated by at most
  ``max_triangle_rotation_deg``, so the order is unambiguous. The generator keeps every
  triangle vertex unoccluded, so each is labelled ``v = 2``. Other categories carry all-zero
  keypoints and ``num_keypoints = 0`` (COCO's convention for unlabelled instances).
* ``bbox`` is ``[x, y, w, h]`` of the visible mask's pixels (COCO convention), ``area`` the
  visible mask's pixel count, ``segmentation`` the visible mask as COCO compressed RLE.
* Image ``k`` of a dataset with seed ``s`` depends only on ``(s, k)`` and the config, never on
  how many images come before it: the training stream and the held-out set are the same
  generator, drawn with different seeds (``HELDOUT_SEED`` is never used for training).

Written layout under any fsspec URL: ``images/NNNNNN.png`` and ``annotations.json`` (COCO,
``file_name`` relative to ``images/``).
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

logger = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("__background__", "ellipse", "rectangle", "triangle")
TRIANGLE_ID = 3
KEYPOINT_NAMES: tuple[str, ...] = ("apex", "left_base", "right_base")
SKELETON: tuple[tuple[int, int], ...] = ((1, 2), (2, 3), (3, 1))  # 1-based, as COCO's
# OKS sigmas within COCO's own range (0.025 nose .. 0.107 hips): the base corners are like
# hips (a corner of a broad structure), the narrower apex a little tighter, like ankles.
OKS_SIGMAS: tuple[float, ...] = (0.089, 0.107, 0.107)

HELDOUT_SEED = 20_240_601  # the held-out set's seed; training refuses it
IMAGES_DIR = "images"
ANNOTATIONS_FILE = "annotations.json"


@dataclass(frozen=True)
class SyntheticConfig:
    """What the generator draws. Sizes are ``(height, width)`` in pixels."""

    image_sizes: tuple[tuple[int, int], ...] = (
        (160, 160), (160, 208), (192, 192), (176, 240), (208, 160), (224, 224),
    )
    min_shapes: int = 2
    max_shapes: int = 6
    min_extent: float = 26.0  # a shape's longer side, pixels
    max_extent: float = 80.0
    min_visible_fraction: float = 0.5  # of a shape's own area, after occlusion
    max_triangle_rotation_deg: float = 25.0
    min_color_distance: float = 90.0  # RGB distance of a shape's colour from the background
    max_attempts: int = 40  # placements tried per shape before giving up on it


@dataclass(frozen=True)
class Sample:
    """One generated image and its exact annotations (``N`` instances, back to front)."""

    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) bool, visible parts
    labels: np.ndarray  # (N,) int64 category ids
    boxes: np.ndarray  # (N, 4) float32 xyxy of the visible mask, pixel edges
    keypoints: np.ndarray  # (N, 3, 3) float32 [x, y, v]; zeros for non-triangles
    shapes: tuple[dict[str, Any], ...]  # each shape's geometry, as drawn (for checks)


# --------------------------------------------------------------------------- geometry


def rasterize(shape: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The exact boolean mask of a shape's full geometry (pixel centres inside)."""
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    kind = shape["kind"]
    if kind in ("ellipse", "rectangle"):
        cx, cy = shape["center"]
        a, b = shape["radii"]
        c, s = math.cos(shape["angle"]), math.sin(shape["angle"])
        u = (xs - cx) * c + (ys - cy) * s
        v = -(xs - cx) * s + (ys - cy) * c
        if kind == "ellipse":
            return (u / a) ** 2 + (v / b) ** 2 <= 1.0
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if kind == "triangle":
        (x0, y0), (x1, y1), (x2, y2) = shape["vertices"]
        d0 = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
        d1 = (x2 - x1) * (ys - y1) - (y2 - y1) * (xs - x1)
        d2 = (x0 - x2) * (ys - y2) - (y0 - y2) * (xs - x2)
        neg = (d0 < 0) | (d1 < 0) | (d2 < 0)
        pos = (d0 > 0) | (d1 > 0) | (d2 > 0)
        return ~(neg & pos)
    raise ValueError(f"unknown shape kind {kind!r}; expected ellipse, rectangle or triangle")


def _draw_shape(rng: np.random.Generator, *, height: int, width: int,
                config: SyntheticConfig) -> dict[str, Any]:
    category = int(rng.integers(1, len(CATEGORIES)))
    extent = float(rng.uniform(config.min_extent, config.max_extent))
    if category == TRIANGLE_ID:
        apex_angle = math.radians(rng.uniform(50.0, 80.0))
        h = extent
        half_base = h * math.tan(apex_angle / 2)
        if 2 * half_base > extent:  # keep the longer side within extent
            half_base = extent / 2
            h = half_base / math.tan(apex_angle / 2)
        theta = math.radians(rng.uniform(-1.0, 1.0) * config.max_triangle_rotation_deg)
        c, s = math.cos(theta), math.sin(theta)
        local = [(x * c - y * s, x * s + y * c)
                 for x, y in ((0.0, -2 * h / 3), (-half_base, h / 3), (half_base, h / 3))]
        xs, ys = [p[0] for p in local], [p[1] for p in local]
        cx = rng.uniform(2 - min(xs), width - 2 - max(xs))  # every vertex 2 px inside
        cy = rng.uniform(2 - min(ys), height - 2 - max(ys))
        vertices = tuple((cx + x, cy + y) for x, y in local)
        return {"kind": "triangle", "category_id": category, "vertices": vertices}
    aspect = float(rng.uniform(0.45, 1.0))
    radii = (extent / 2, extent * aspect / 2)
    reach = extent / 2 if category == 1 else extent / 2 * math.sqrt(1 + aspect**2)
    cx = rng.uniform(reach + 1, width - reach - 1)
    cy = rng.uniform(reach + 1, height - reach - 1)
    return {
        "kind": CATEGORIES[category],
        "category_id": category,
        "center": (cx, cy),
        "radii": radii,
        "angle": float(rng.uniform(0.0, math.pi)),
    }


# --------------------------------------------------------------------------- texture


def _texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray,
             amplitude: float) -> np.ndarray:
    """A colour field: base colour, two random sinusoidal gratings, and pixel noise."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    field = np.zeros((height, width, 3), dtype=np.float32) + base.astype(np.float32)
    for _ in range(2):
        freq = rng.uniform(0.03, 0.35)
        angle = rng.uniform(0, math.pi)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(freq * (xs * math.cos(angle) + ys * math.sin(angle)) + phase)
        tint = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
        field += amplitude * wave[:, :, None] * tint
    field += rng.normal(0.0, amplitude / 3, size=(height, width, 3)).astype(np.float32)
    return field


def _pick_color(rng: np.random.Generator, avoid: np.ndarray, min_distance: float) -> np.ndarray:
    for _ in range(100):
        color = rng.uniform(0, 255, size=3)
        if np.linalg.norm(color - avoid) >= min_distance:
            return color
    return 255.0 - avoid  # the complement is always far enough


# --------------------------------------------------------------------------- samples


def generate_sample(*, seed: int, index: int, config: SyntheticConfig = SyntheticConfig()) -> Sample:
    """Image ``index`` of the dataset with ``seed``: a pure function of its arguments."""
    rng = np.random.default_rng([int(seed), int(index)])
    height, width = config.image_sizes[int(rng.integers(len(config.image_sizes)))]
    bg_color = rng.uniform(30, 225, size=3)
    image = _texture(rng, height, width, bg_color, amplitude=float(rng.uniform(10, 40)))

    target = int(rng.integers(config.min_shapes, config.max_shapes + 1))
    shapes: list[dict[str, Any]] = []
    full: list[np.ndarray] = []
    for _ in range(target):
        for _attempt in range(config.max_attempts):
            shape = _draw_shape(rng, height=height, width=width, config=config)
            geom = rasterize(shape, height, width)
            if geom.sum() < 30 or not _keeps_earlier_visible(shape, geom, shapes, full, config):
                continue
            shapes.append(shape)
            full.append(geom)
            break

    n = len(shapes)
    masks = np.zeros((n, height, width), dtype=bool)
    covered = np.zeros((height, width), dtype=bool)
    for i in range(n - 1, -1, -1):  # front to back: what later shapes cover is not visible
        masks[i] = full[i] & ~covered
        covered |= full[i]
    for shape, geom in zip(shapes, full):  # paint back to front
        color = _pick_color(rng, bg_color, config.min_color_distance)
        rows, cols = np.flatnonzero(geom.any(axis=1)), np.flatnonzero(geom.any(axis=0))
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        local = geom[window]
        fill = _texture(rng, local.shape[0], local.shape[1], color,
                        amplitude=float(rng.uniform(5, 25)))
        image[window][local] = fill[local]
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    labels = np.array([s["category_id"] for s in shapes], dtype=np.int64)
    keypoints = np.zeros((n, len(KEYPOINT_NAMES), 3), dtype=np.float32)
    for i, shape in enumerate(shapes):
        if shape["kind"] == "triangle":
            for k, (x, y) in enumerate(shape["vertices"]):
                keypoints[i, k] = (x, y, 2.0)
    boxes = np.stack([_mask_box(m) for m in masks]) if n else np.zeros((0, 4), np.float32)
    return Sample(image_u8, masks, labels, boxes.astype(np.float32), keypoints, tuple(shapes))


def _keeps_earlier_visible(shape: dict[str, Any], geom: np.ndarray, shapes: list[dict[str, Any]],
                           full: list[np.ndarray], config: SyntheticConfig) -> bool:
    """Whether placing ``shape`` on top keeps every earlier shape visible enough."""
    if not shapes:
        return True
    union = geom.copy()
    for i in range(len(shapes) - 1, -1, -1):
        earlier = shapes[i]
        visible = full[i] & ~union
        if visible.sum() < config.min_visible_fraction * full[i].sum():
            return False
        if earlier["kind"] == "triangle":
            for x, y in earlier["vertices"]:
                if _point_covered(x, y, union):
                    return False
        union |= full[i]
    return True


def _point_covered(x: float, y: float, cover: np.ndarray) -> bool:
    """Whether any pixel within 2 px of a point is covered (a margin around the vertex)."""
    h, w = cover.shape
    r0, r1 = max(int(y) - 2, 0), min(int(y) + 3, h)
    c0, c1 = max(int(x) - 2, 0), min(int(x) + 3, w)
    return bool(cover[r0:r1, c0:c1].any())


def _mask_box(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


# --------------------------------------------------------------------------- COCO


def coco_categories() -> list[dict[str, Any]]:
    """The dataset's COCO ``categories``; the triangle's carries keypoints and skeleton."""
    cats = []
    for i, name in enumerate(CATEGORIES[1:], start=1):
        cat: dict[str, Any] = {"id": i, "name": name, "supercategory": "shape"}
        if i == TRIANGLE_ID:
            cat["keypoints"] = list(KEYPOINT_NAMES)
            cat["skeleton"] = [list(e) for e in SKELETON]
        cats.append(cat)
    return cats


def sample_annotations(sample: Sample, *, image_id: int, first_ann_id: int) -> list[dict[str, Any]]:
    """COCO annotations of one sample (ids from ``first_ann_id`` on)."""
    anns = []
    for i in range(len(sample.labels)):
        rle = mask_utils.encode(np.asfortranarray(sample.masks[i].astype(np.uint8)))
        x0, y0, x1, y1 = (float(v) for v in sample.boxes[i])
        kps = sample.keypoints[i]
        anns.append({
            "id": first_ann_id + i,
            "image_id": image_id,
            "category_id": int(sample.labels[i]),
            "segmentation": {"size": [int(s) for s in rle["size"]],
                             "counts": rle["counts"].decode("ascii")},
            "area": float(sample.masks[i].sum()),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "iscrowd": 0,
            "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
            "num_keypoints": int((kps[:, 2] > 0).sum()),
        })
    return anns


def build_coco(*, seed: int, num_images: int, config: SyntheticConfig = SyntheticConfig(),
               first_image_id: int = 1) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The COCO dict and the images (in ``images`` order) of a dataset."""
    images, annotations, arrays = [], [], []
    for k in range(num_images):
        sample = generate_sample(seed=seed, index=k, config=config)
        image_id = first_image_id + k
        h, w = sample.image.shape[:2]
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "height": h, "width": w})
        annotations += sample_annotations(sample, image_id=image_id,
                                          first_ann_id=len(annotations) + 1)
        arrays.append(sample.image)
    coco = {
        "info": {"description": "mrcnn-batch synthetic shapes", "seed": int(seed),
                 "num_images": int(num_images)},
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    return coco, arrays


def write_dataset(url: str, *, seed: int, num_images: int,
                  config: SyntheticConfig = SyntheticConfig(),
                  storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``images/NNNNNN.png`` and ``annotations.json`` under ``url``; return the COCO dict."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    coco, arrays = build_coco(seed=seed, num_images=num_images, config=config)
    fs.makedirs(f"{root}/{IMAGES_DIR}", exist_ok=True)
    for info, array in zip(coco["images"], arrays):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        with fs.open(f"{root}/{IMAGES_DIR}/{info['file_name']}", "wb") as f:
            f.write(buf.getvalue())
    with fs.open(f"{root}/{ANNOTATIONS_FILE}", "w") as f:
        json.dump(coco, f)
    logger.info("wrote %d synthetic images (seed %d, %d instances) to %s",
                num_images, seed, len(coco["annotations"]), url)
    return coco
