"""The pictures of an inspection, drawn with Pillow and returned as PNG bytes.

Pure functions of arrays: boxes are (x1, y1, x2, y2) in the decoded image's pixels and are
drawn on a copy of the image scaled to :data:`DISPLAY_SIDE` on its long side; probability maps
are coloured by :func:`colour` (0 dark blue, 0.5 teal, 1 yellow); heatmaps are logits, each
coloured from its own minimum to its own maximum.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DISPLAY_SIDE = 560  # long side of the drawn image, in pixels (small images are enlarged, up to MAX_ZOOM)
MAX_ZOOM = 3.0
TILE = 112  # side of a drawn M x M mask or heatmap
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))
_STOPS = np.array([[0.0, 40, 20, 90], [0.5, 30, 150, 140], [1.0, 250, 230, 40]])  # value, R, G, B


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def colour(values: np.ndarray) -> np.ndarray:
    """H x W values in [0, 1] as H x W x 3 uint8 colours."""
    v = np.clip(np.nan_to_num(values.astype(np.float64)), 0, 1)
    rgb = [np.interp(v, _STOPS[:, 0], _STOPS[:, c]) for c in (1, 2, 3)]
    return np.stack(rgb, -1).round().astype(np.uint8)


def zoom(height: int, width: int) -> float:
    """The factor from image pixels to drawn pixels."""
    return min(DISPLAY_SIDE / max(height, width, 1), MAX_ZOOM)


def _canvas(image: np.ndarray) -> tuple[Image.Image, float]:
    h, w = image.shape[:2]
    f = zoom(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return Image.fromarray(image).resize(size, Image.Resampling.BILINEAR), f


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple[int, int, int]) -> None:
    font = _font()
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)
    draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), fill=fill)
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def anchors_picture(image: np.ndarray, boxes: np.ndarray, levels: Sequence[str]) -> bytes:
    """Every anchor of one location (the image's centre), coloured by pyramid level, on a canvas
    that holds the image and every anchor (anchors reach past the image)."""
    h, w = image.shape[:2]
    b = boxes.astype(np.float64).reshape(-1, 4)
    x0, y0 = float(np.min(np.r_[0.0, b[:, 0]])), float(np.min(np.r_[0.0, b[:, 1]]))
    x1, y1 = float(np.max(np.r_[w, b[:, 2]])), float(np.max(np.r_[h, b[:, 3]]))
    f = min(DISPLAY_SIDE / max(x1 - x0, y1 - y0, 1), MAX_ZOOM)
    pad = 4
    out = Image.new("RGB", (round((x1 - x0) * f) + 2 * pad, round((y1 - y0) * f) + 2 * pad), (236, 238, 242))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    ox, oy = pad - x0 * f, pad - y0 * f
    out.paste(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR), (round(ox), round(oy)))
    draw = ImageDraw.Draw(out)
    names = list(dict.fromkeys(levels))
    for box, level in zip(b, levels):
        c = PALETTE[names.index(level) % len(PALETTE)]
        draw.rectangle((box[0] * f + ox, box[1] * f + oy, box[2] * f + ox, box[3] * f + oy), outline=c, width=2)
    for i, name in enumerate(names):
        _label(draw, (pad + 2, pad + 2 + 14 * i), f"level {name}", PALETTE[i % len(PALETTE)])
    return png(out)


def proposals_picture(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> bytes:
    """Proposals (in objectness order) numbered by rank, the best drawn last (on top)."""
    im, f = _canvas(image)
    draw = ImageDraw.Draw(im)
    for rank in range(len(boxes) - 1, -1, -1):
        box = boxes[rank] * f
        c = PALETTE[rank % len(PALETTE)]
        draw.rectangle(tuple(box), outline=c, width=2 if scores[rank] >= 0.5 else 1)
        _label(draw, (box[0] + 2, box[1] + 2), str(rank + 1), c)
    return png(im)


def detections_picture(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    captions: Sequence[str],
    *,
    keypoints: Sequence[np.ndarray] = (),
    skeleton: Sequence[tuple[int, int]] = (),
) -> bytes:
    """Final boxes with their captions; keypoints (P x 3 arrays) as dots joined by the skeleton
    (1-based pairs)."""
    im, f = _canvas(image)
    draw = ImageDraw.Draw(im)
    for box, label, text in zip(boxes, labels, captions):
        c = PALETTE[int(label) % len(PALETTE)]
        draw.rectangle(tuple(box * f), outline=c, width=2)
        _label(draw, (box[0] * f + 2, box[1] * f + 2), text, c)
    for kp in keypoints:
        pts = kp[:, :2] * f
        for a, b in skeleton:
            if 0 < a <= len(pts) and 0 < b <= len(pts):
                draw.line((*pts[a - 1], *pts[b - 1]), fill=(255, 255, 255), width=2)
        for x, y in pts:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(255, 40, 40), outline=(0, 0, 0))
    return png(im)


def mask_pair(image: np.ndarray, box: np.ndarray, probabilities: np.ndarray, pasted: np.ndarray) -> bytes:
    """A detection's M x M mask probabilities (left) beside its pasted mask over the image
    around its box (right)."""
    left = Image.fromarray(colour(probabilities)).resize((TILE, TILE), Image.Resampling.NEAREST)
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box.astype(np.float64)
    mx, my = 0.15 * (x2 - x1) + 2, 0.15 * (y2 - y1) + 2
    cx0, cy0 = int(max(0, np.floor(x1 - mx))), int(max(0, np.floor(y1 - my)))
    cx1, cy1 = int(min(w, np.ceil(x2 + mx))), int(min(h, np.ceil(y2 + my)))
    if cx1 <= cx0 or cy1 <= cy0:  # the box misses the image
        cx0, cy0, cx1, cy1 = 0, 0, w, h
    crop = image[cy0:cy1, cx0:cx1].astype(np.float64)
    on = pasted[cy0:cy1, cx0:cx1].astype(bool)
    crop[on] = 0.45 * crop[on] + 0.55 * np.array([230.0, 25, 75])
    right = Image.fromarray(crop.round().astype(np.uint8))
    scale = TILE / right.height
    right = right.resize((max(1, min(2 * TILE, round(right.width * scale))), TILE), Image.Resampling.NEAREST)
    ImageDraw.Draw(right).rectangle(
        ((x1 - cx0) * scale, (y1 - cy0) * scale, (x2 - cx0) * scale, (y2 - cy0) * scale), outline=(255, 255, 255), width=1
    )
    out = Image.new("RGB", (TILE + 8 + right.width, TILE), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (TILE + 8, 0))
    return png(out)


def heatmaps_picture(maps: np.ndarray, names: Sequence[str], *, per_row: int = 6) -> bytes:
    """K heatmaps (K x S x S logits) of one detection in a grid, each named below."""
    k = len(maps)
    cols = max(1, min(per_row, k))
    rows = max(1, -(-k // cols))
    cell_h = TILE + 14
    out = Image.new("RGB", (cols * (TILE + 4), rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, m in enumerate(maps):
        lo, hi = float(np.min(m)), float(np.max(m))
        tile = colour((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m))
        x, y = (i % cols) * (TILE + 4), (i // cols) * cell_h
        out.paste(Image.fromarray(tile).resize((TILE, TILE), Image.Resampling.BILINEAR), (x, y))
        name = names[i] if i < len(names) else str(i)
        draw.text((x + 1, y + TILE + 1), name[:18], fill=(30, 35, 48), font=_font())
    return png(out)
