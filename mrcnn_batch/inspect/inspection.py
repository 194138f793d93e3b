"""One image through one model, stage by stage: the orchestration of ``mrcnn-batch inspect``.

The image is read and decoded as ``infer`` reads it (``read.fetch_all``, ``read.decode_image``),
the model built and loaded as ``infer`` builds it (``models.loaded``), run through the same
:class:`~mrcnn_batch.predict.Predictor` while :class:`~mrcnn_batch.inspect.stages.Taps` watches,
and its detections turned into rows by ``encode.rows`` (masks pasted by ``encode.masks``). So the
final detections are ``infer``'s rows for that image, by construction, not by a second
implementation. The result is an :class:`Inspection`; :func:`inspection_json` is its JSON.

A composite model (``components``: two networks, joined afterwards) is refused: inspect one of
its components by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mrcnn_batch.config import (
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_SCORE_THRESHOLD,
    local_url,
    local_weights,
)
from mrcnn_batch.encode.rows import Columns, encode_detections
from mrcnn_batch.errors import UsageError
from mrcnn_batch.inspect.stages import Stage, Taps, Trace, stage, trace
from mrcnn_batch.models.loaded import build_model, resolve_weights
from mrcnn_batch.models.registry import ModelSpec, get_spec
from mrcnn_batch.predict.predictor import Predictor, pick_device
from mrcnn_batch.read import TooLarge, decode_image, fetch_all


@dataclass
class Inspection:
    """An image, the model and settings it was inspected with, and what each stage produced."""

    uri: str
    spec: ModelSpec  # as the weights define it (their own categories)
    weights_source: str
    weights_sha256: str
    settings: dict[str, Any]
    image: np.ndarray  # H x W x 3 uint8, as decoded
    trace: Trace
    instances: dict[str, list]  # infer's instances rows for this image (column -> values)
    keypoints: dict[str, list]  # infer's keypoints rows
    boxes: np.ndarray  # N x 4 (x1, y1, x2, y2), decoded-image pixels
    mask_probabilities: np.ndarray | None  # N x M x M

    @property
    def stages(self) -> list[Stage]:
        return [stage("decoded image", "read.decode_image", self.image, "H x W x 3 uint8 RGB"), *self.trace.stages]


def inspect_image(
    uri: str,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    storage_options: dict[str, Any] | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    min_size: int | None = None,
    max_size: int | None = None,
    rpn_proposals: int | None = None,
    device: str = "cpu",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Inspection:
    """Run image ``uri`` through ``model`` with every stage watched; the settings are infer's
    (``rpn_proposals``: the proposals kept after the RPN's NMS, None for the model's own)."""
    uri = local_url(uri)
    options = dict(storage_options or {})
    spec = get_spec(model)
    if spec.components:
        raise UsageError(
            f"model {model!r} joins two networks ({' + '.join(spec.components)}); inspect looks inside one:"
            f" pass --model {spec.components[0]} or --model {spec.components[1]}"
        )
    image = read_image(uri, storage_options=options, max_pixels=max_pixels)
    loaded_weights = resolve_weights(spec, local_weights(weights), storage_options=options)
    settings = {
        "score_threshold": score_threshold,
        "mask_threshold": mask_threshold,
        "max_detections": max_detections,
        "min_size": min_size or spec.default_min_size,
        "max_size": max_size or spec.default_max_size,
        "rpn_proposals": rpn_proposals,
        "device": device,
    }
    loaded = build_model(model, loaded_weights, min_size=settings["min_size"], max_size=settings["max_size"],
                         score_threshold=score_threshold, max_detections=max_detections, rpn_proposals=rpn_proposals)
    predictor = Predictor(loaded, device=pick_device(device))
    net = loaded.networks["main"]
    with Taps(net) as taps:
        det = predictor([image])[0]
    seen = trace(taps.seen, net)

    height, width = image.shape[:2]
    instances, keypoints = Columns(), Columns()
    encode_detections(det, image_id=0, height=height, width=width, categories=loaded.spec.categories,
                      mask_threshold=mask_threshold, instances=instances, keypoints=keypoints)
    return Inspection(
        uri=uri, spec=loaded.spec, weights_source=loaded.weights_source, weights_sha256=loaded.weights_sha256,
        settings=settings, image=image, trace=seen, instances=instances.data, keypoints=keypoints.data,
        boxes=det.boxes.float().cpu().numpy(),
        mask_probabilities=None if det.masks is None else det.masks[:, 0].float().cpu().numpy(),
    )


def read_image(uri: str, *, storage_options: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The decoded pixels of ``uri`` (``infer``'s reader and decoder); a clear error otherwise."""
    blob = fetch_all([uri], storage_options=storage_options, threads=1)[0]
    if isinstance(blob, FileNotFoundError):
        raise UsageError(f"image {uri!r} does not exist")
    if isinstance(blob, TooLarge):
        raise UsageError(f"image {uri!r}: {blob}")
    if isinstance(blob, BaseException):
        raise UsageError(f"cannot read image {uri!r}: {type(blob).__name__}: {blob}")
    decoded = decode_image(blob, max_pixels=max_pixels)
    if decoded.status != "ok":
        raise UsageError(f"image {uri!r} cannot be inspected ({decoded.status}): {decoded.error}")
    return decoded.array


def inspection_json(ins: Inspection) -> dict[str, Any]:
    """The numbers of an inspection, JSON-ready (no NaN: a non-finite number is null)."""
    t = ins.trace
    spec = ins.spec
    detections = []
    rows = ins.instances
    for i in range(len(rows.get("instance_id", []))):
        detections.append({
            "instance_id": rows["instance_id"][i],
            "label": rows["category_id"][i],
            "category": rows["category"][i],
            "score": rows["score"][i],
            "box_xyxy": [float(v) for v in ins.boxes[i]],
            "bbox": rows["bbox"][i],
            "area": rows["area"][i],
        })
    kp = ins.keypoints
    keypoints = [
        {"instance_id": kp["instance_id"][i], "label": kp["category_id"][i], "category": kp["category"][i],
         "score": kp["score"][i], "bbox": kp["bbox"][i], "keypoints": kp["keypoints"][i],
         "keypoint_scores": kp["keypoint_scores"][i], "mask_instance_id": kp["mask_instance_id"][i]}
        for i in range(len(kp.get("instance_id", [])))
    ]
    out = {
        "image": {
            "uri": ins.uri,
            "original_size": list(t.original_size),
            "resized_size": list(t.resized_size),
            "batch_size": list(t.batch_size),
            "scale": list(t.scale),
        },
        "model": {
            "name": spec.name, "has_masks": spec.has_masks, "has_keypoints": spec.has_keypoints,
            "weights": ins.weights_source, "weights_sha256": ins.weights_sha256,
            "keypoint_names": list(spec.keypoint_names),
        },
        "settings": ins.settings,
        "stages": [
            {"name": s.name, "source": s.source, "shape": list(s.shape), "dtype": s.dtype,
             "min": s.min, "max": s.max, "mean": s.mean, "note": s.note}
            for s in ins.stages
        ],
        "levels": [
            {"name": lv.name, "feature_shape": list(lv.feature_shape), "stride": list(lv.stride),
             "anchors_per_location": lv.anchors_per_location, "anchors": lv.anchors}
            for lv in t.levels
        ],
        "anchors": {
            "total": sum(lv.anchors for lv in t.levels),
            "centre": [{"level": name, "box": [float(v) for v in box]} for name, box in zip(t.centre_anchor_levels, t.centre_anchors)],
        },
        "rpn": t.rpn,
        "rois": t.rois,
        "detections": detections,
        "keypoint_detections": keypoints,
    }
    return _finite(out)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.Tensor):
        return _finite(value.tolist())
    return value
