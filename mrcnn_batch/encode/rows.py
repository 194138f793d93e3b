"""Turning one image's detections into rows of the ``instances`` and ``keypoints`` tables.

Conventions (see ``schemas``): ``bbox`` is COCO ``[x, y, w, h]`` from torchvision's
``(x1, y1, x2, y2)``; ``instance_id`` is the detection's rank in the image (score order);
``area`` is the mask's pixel count for mask models and the box area otherwise; keypoints are
COCO triplets with ``v = 2``. With ``--refine-masks`` the masks are refined on the image's pixels
(``encode.refine``) and ``area`` is the refined mask's; the box stays the model's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from mrcnn_batch.encode.masks import paste_and_encode
from mrcnn_batch.encode.refine import refine_rles  # imports OpenCV only when called
from mrcnn_batch.predict.predictor import ImageDetections

log = logging.getLogger(__name__)
KEYPOINT_VISIBLE = 2.0


@dataclass
class Columns:
    """Column lists of one table, appended to image by image."""

    data: dict[str, list] = field(default_factory=dict)

    def extend(self, **cols) -> None:
        for k, v in cols.items():
            self.data.setdefault(k, []).extend(v)

    def __len__(self) -> int:
        first = next(iter(self.data.values()), [])
        return len(first)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float32, copy=True)
    out[:, 2:] -= out[:, :2]
    return out


def encode_detections(
    det: ImageDetections,
    *,
    image_id: int,
    height: int,
    width: int,
    categories: tuple[str, ...],
    mask_threshold: float,
    instances: Columns,
    keypoints: Columns,
    refine_masks: str | None = None,
    image: np.ndarray | None = None,
) -> tuple[int, int]:
    """Append the image's rows; return (number of instances, number of keypoint detections).
    ``refine_masks`` (``encode.refine.METHODS``) refines the masks on ``image`` (H x W x 3 uint8)."""
    boxes = det.boxes.float().cpu().numpy()
    n = len(boxes)
    xywh = xyxy_to_xywh(boxes)
    masks = None
    if det.masks is not None:
        masks, areas = paste_and_encode(
            det.masks, det.boxes, height=height, width=width, threshold=mask_threshold
        )
        if refine_masks is not None and n:
            masks, areas = _refined(image, masks, areas, boxes, image_id=image_id)
        areas = areas.astype(np.float64)
    else:
        areas = (xywh[:, 2].astype(np.float64) * xywh[:, 3])
    labels = det.labels.cpu().numpy()
    instances.extend(
        image_id=[image_id] * n,
        instance_id=list(range(n)),
        category_id=labels.tolist(),
        category=[categories[c] for c in labels],
        score=det.scores.float().cpu().numpy().tolist(),
        bbox=xywh.tolist(),
        area=areas.tolist(),
        mask=masks if masks is not None else [None] * n,
    )
    if det.keypoints is None:
        return n, 0
    kp = det.keypoints.float().cpu().numpy()
    k = len(kp)
    triplets = kp.copy()
    triplets[:, :, 2] = KEYPOINT_VISIBLE
    kp_labels = det.kp_labels.cpu().numpy()
    kp_instance = det.kp_instance if det.kp_instance is not None else np.full(k, -1)
    keypoints.extend(
        image_id=[image_id] * k,
        instance_id=list(range(k)),
        category_id=kp_labels.tolist(),
        category=[categories[c] for c in kp_labels],
        score=det.kp_scores.float().cpu().numpy().tolist(),
        bbox=xyxy_to_xywh(det.kp_boxes.float().cpu().numpy()).tolist(),
        keypoints=triplets.reshape(k, kp.shape[1] * 3).tolist(),
        keypoint_scores=det.keypoint_scores.float().cpu().numpy().tolist(),
        mask_instance_id=[int(i) if i >= 0 else None for i in kp_instance],
    )
    return n, k


def _refined(image, masks, areas, boxes, *, image_id):
    if image is None:
        raise ValueError(f"image {image_id}: mask refinement needs the image's pixels, none were given")
    masks, areas, stats = refine_rles(image, masks, areas, boxes)
    log.debug("image %d: masks refined %d, on a downscaled crop %d, kept (GrabCut found no foreground) %d, "
              "kept (nothing to refine) %d", image_id, stats.refined, stats.downscaled, stats.empty_fallback, stats.kept)
    return masks, areas
