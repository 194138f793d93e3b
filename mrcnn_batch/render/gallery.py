"""A gallery of single instances: the best-scoring instances of each category, one tile each.

Each tile is the instance's own overlay (its mask, box, label and keypoints only, drawn by
``overlays.draw_overlay``) cropped around its box with a margin and scaled to a square tile;
tiles are laid out one category per row with torchvision's ``make_grid``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from mrcnn_batch.render.overlays import ImageRecord, OverlayStyle, draw_overlay, image_records, load_run_images, run_skeleton, to_png
from mrcnn_batch.run.layout import RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GalleryStyle:
    per_category: int = 8  # tiles per category row
    tile: int = 112  # tile side, pixels
    margin: float = 0.25  # crop margin around the box, as a fraction of its larger side
    padding: int = 4  # between tiles
    overlay: OverlayStyle = OverlayStyle(box_width=1)


def instance_tile(image: np.ndarray, instance: dict[str, Any], keypoints: Sequence[dict[str, Any]] = (), *,
                  skeleton: Sequence[Sequence[int]] = (), style: GalleryStyle = GalleryStyle()) -> torch.Tensor:
    """One instance drawn alone on its image, cropped around its box, as a ``(3, tile, tile)`` tile."""
    overlay = replace(style.overlay, score_threshold=0.0)
    img = draw_overlay(image, [instance], keypoints, skeleton=skeleton, style=overlay)
    h, w = int(img.shape[1]), int(img.shape[2])
    x, y, bw, bh = (float(v) for v in instance["bbox"])
    side = max(bw, bh) * (1 + 2 * style.margin) + 2
    cx, cy = x + bw / 2, y + bh / 2
    x0, y0 = max(0, int(math.floor(cx - side / 2))), max(0, int(math.floor(cy - side / 2)))
    x1, y1 = min(w, int(math.ceil(cx + side / 2))), min(h, int(math.ceil(cy + side / 2)))
    crop = img[:, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    scale = style.tile / max(crop.shape[1], crop.shape[2])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[2] * scale)))
    resized = F.interpolate(crop[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    tile = torch.zeros((3, style.tile, style.tile), dtype=torch.uint8)
    oy, ox = (style.tile - size[0]) // 2, (style.tile - size[1]) // 2
    tile[:, oy:oy + size[0], ox:ox + size[1]] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return tile


def instance_gallery(
    records: Sequence[ImageRecord],
    images: Sequence[np.ndarray | None],
    *,
    skeleton: Sequence[Sequence[int]] = (),
    score_threshold: float = 0.5,
    style: GalleryStyle = GalleryStyle(),
) -> tuple[torch.Tensor, list[str]] | None:
    """The gallery of ``records`` (with their decoded ``images``): a ``(3, H, W)`` grid, one
    row per category (best scores first), and the categories of its rows. None: no instance."""
    by_cat: dict[str, list[tuple[float, int, dict[str, Any]]]] = {}
    for k, (rec, arr) in enumerate(zip(records, images)):
        if arr is None:
            continue
        for inst in rec.instances:
            if inst["score"] >= score_threshold:
                by_cat.setdefault(inst["category"], []).append((float(inst["score"]), k, inst))
    if not by_cat:
        return None
    tiles: list[torch.Tensor] = []
    rows = sorted(by_cat)
    for cat in rows:
        best = sorted(by_cat[cat], key=lambda t: -t[0])[: style.per_category]
        for _, k, inst in best:
            rec = records[k]
            kps = [r for r in rec.keypoints if r.get("mask_instance_id") == inst["instance_id"]]
            tiles.append(instance_tile(images[k], inst, kps, skeleton=skeleton, style=style))
        blank = torch.full((3, style.tile, style.tile), 255, dtype=torch.uint8)
        tiles += [blank] * (style.per_category - len(best))
    grid = make_grid(tiles, nrow=style.per_category, padding=style.padding, pad_value=255)
    return grid, rows


def render_gallery(run: RunDir, *, storage_options: dict[str, Any], images: int = 40, score_threshold: float = 0.5,
                   style: GalleryStyle = GalleryStyle()) -> tuple[bytes, list[str]] | None:
    """The gallery (PNG bytes, row categories) of the first ``images`` ok images of a run."""
    records = image_records(run, limit=images)
    arrays = load_run_images(run, records, storage_options=storage_options)
    got = instance_gallery(records, arrays, skeleton=run_skeleton(run), score_threshold=score_threshold, style=style)
    return None if got is None else (to_png(got[0]), got[1])
