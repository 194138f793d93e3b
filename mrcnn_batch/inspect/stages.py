"""What a detector computes for one image, stage by stage, read with forward hooks.

:class:`Taps` registers forward hooks on torchvision's modules -- ``transform``, ``backbone``,
``rpn.head``, ``rpn.anchor_generator``, ``rpn``, ``roi_heads`` and its pools, heads and
predictors -- and wraps ``rpn.filter_proposals`` (a method, not a module: the decoded proposals
go in, the proposals after NMS and their objectness come out). The hooks keep references and
change nothing: the network runs as it does for ``infer``. :func:`trace` then turns what they
saw into numbers: one :class:`Stage` (name, shape, dtype, min/max/mean) per tensor, the image's
sizes, the pyramid levels and their anchors, the RPN's counts.

Coordinates: every box a hook sees is in the frame of the resized image (``resized_size``,
before the padding to ``batch_size``); :meth:`Trace.to_original` maps boxes to the decoded
image, as ``transform.postprocess`` does. One network and one image per trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Self

import numpy as np
import torch
from torchvision.models.detection.transform import resize_boxes

# Modules whose forward is hooked, by their path on a torchvision GeneralizedRCNN; those a
# network lacks (no mask or keypoint branch) are skipped.
MODULES = (
    "transform",
    "backbone",
    "rpn",
    "rpn.head",
    "rpn.anchor_generator",
    "roi_heads",
    "roi_heads.box_roi_pool",
    "roi_heads.box_head",
    "roi_heads.box_predictor",
    "roi_heads.mask_roi_pool",
    "roi_heads.mask_head",
    "roi_heads.mask_predictor",
    "roi_heads.keypoint_roi_pool",
    "roi_heads.keypoint_head",
    "roi_heads.keypoint_predictor",
)
FILTER = "rpn.filter_proposals"


@dataclass(frozen=True)
class Stage:
    """One tensor a stage produced, in numbers (min/max/mean are None for an empty tensor)."""

    name: str
    source: str  # the module (or method) whose hook saw it
    shape: tuple[int, ...]
    dtype: str
    min: float | None
    max: float | None
    mean: float | None
    note: str = ""


def stage(name: str, source: str, value: torch.Tensor | np.ndarray, note: str = "") -> Stage:
    t = torch.as_tensor(value).detach()
    if t.numel() == 0:
        lo = hi = mean = None
    else:
        d = t.to("cpu", torch.float64)
        lo, hi, mean = float(d.min()), float(d.max()), float(d.mean())
    return Stage(name, source, tuple(int(s) for s in t.shape), str(t.dtype).removeprefix("torch."), lo, hi, mean, note)


@dataclass(frozen=True)
class Level:
    """One pyramid level: its feature map and the anchors laid on it."""

    name: str
    feature_shape: tuple[int, ...]  # 1 x C x H x W
    stride: tuple[int, int]  # batch pixels per feature cell (rows, columns), as the anchor generator takes it
    anchors_per_location: int
    anchors: int  # H * W * anchors_per_location


@dataclass
class Trace:
    """What the hooks saw for one image, in numbers and in the boxes the pictures need."""

    stages: list[Stage]
    original_size: tuple[int, int]  # (height, width) of the decoded image
    resized_size: tuple[int, int]  # after transform's resize
    batch_size: tuple[int, int]  # after padding to the size divisor
    levels: list[Level]
    centre_anchors: np.ndarray  # K x 4, resized frame: every anchor of the location nearest the image's centre
    centre_anchor_levels: list[str]  # the level of each
    rpn: dict[str, Any]  # counts and settings
    proposals: np.ndarray  # P x 4, resized frame, after NMS, in objectness order
    proposal_scores: np.ndarray  # P
    rois: int  # boxes the box head classified
    mask_logits: np.ndarray | None  # N x M x M: each detection's own label channel
    heatmaps: np.ndarray | None  # N x K x S x S keypoint logits

    @property
    def scale(self) -> tuple[float, float]:
        """Resized over original size, (rows, columns)."""
        return (self.resized_size[0] / self.original_size[0], self.resized_size[1] / self.original_size[1])

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes of the resized frame in the decoded image's pixels (``transform.postprocess``'s rule)."""
        if len(boxes) == 0:
            return np.zeros((0, 4), dtype=np.float32)
        return resize_boxes(torch.as_tensor(boxes), list(self.resized_size), list(self.original_size)).numpy()


class Taps:
    """Forward hooks on a network's stages while in a ``with`` block; ``seen[path]`` holds each
    stage's (inputs, output) of its last call."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self.seen: dict[str, tuple[Any, Any]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> Self:
        for path in MODULES:
            module = _module(self.net, path)
            if module is not None:
                self._handles.append(module.register_forward_hook(partial(self._keep, path)))
        rpn = self.net.rpn
        method = rpn.filter_proposals

        def filter_proposals(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            self.seen[FILTER] = (args, out)
            return out

        rpn.filter_proposals = filter_proposals  # an instance attribute, removed on exit
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.net.rpn.__dict__.pop("filter_proposals", None)

    def _keep(self, path: str, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        self.seen[path] = (inputs, output)


def _module(net: torch.nn.Module, path: str) -> torch.nn.Module | None:
    obj: Any = net
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def trace(seen: dict[str, tuple[Any, Any]], net: torch.nn.Module) -> Trace:
    """The numbers of one image's forward pass from what :class:`Taps` saw."""
    missing = [p for p in ("transform", "backbone", "rpn.head", "rpn.anchor_generator", FILTER, "roi_heads") if p not in seen]
    if missing:
        raise RuntimeError(f"the forward pass did not run through {', '.join(missing)}: not a torchvision R-CNN?")
    stages: list[Stage] = []
    (images, *_), (batch, _) = seen["transform"]
    image = images[0]
    original = (int(image.shape[-2]), int(image.shape[-1]))
    resized = tuple(int(s) for s in batch.image_sizes[0])
    padded = (int(batch.tensors.shape[-2]), int(batch.tensors.shape[-1]))
    stages.append(stage("transform input", "transform", image, "float C x H x W in [0, 1]"))
    stages.append(stage("batch tensor", "transform", batch.tensors,
                        f"normalised, resized to {resized[0]} x {resized[1]}, padded to {padded[0]} x {padded[1]}"))

    features = seen["backbone"][1]
    for name, f in features.items():
        stages.append(stage(f"feature map {name}", "backbone", f, "FPN level"))

    objectness, deltas = seen["rpn.head"][1]
    anchors = seen["rpn.anchor_generator"][1][0]
    per_location = anchors_per_location(net)
    levels = []
    for (name, f), a in zip(features.items(), per_location):
        h, w = int(f.shape[-2]), int(f.shape[-1])
        levels.append(Level(name, tuple(int(s) for s in f.shape), (padded[0] // h, padded[1] // w), a, h * w * a))
    offset = 0
    for level, obj, d in zip(levels, objectness, deltas):
        stages.append(stage(f"RPN objectness {level.name}", "rpn.head", obj, f"logits, {level.anchors_per_location} per location"))
        stages.append(stage(f"RPN box deltas {level.name}", "rpn.head", d))
        stages.append(stage(f"anchors {level.name}", "rpn.anchor_generator", anchors[offset : offset + level.anchors],
                            f"{level.feature_shape[-2]} x {level.feature_shape[-1]} locations x {level.anchors_per_location}"))
        offset += level.anchors
    stages.append(stage("anchors (all levels)", "rpn.anchor_generator", anchors, "x1, y1, x2, y2 in batch pixels"))
    centre, centre_levels = _centre_anchors(anchors, levels, resized)

    (decoded, flat_objectness, _, per_level), (kept_boxes, kept_scores) = seen[FILTER]
    rpn = net.rpn
    pre_nms = sum(min(int(rpn.pre_nms_top_n()), int(n)) for n in per_level)
    stages.append(stage("proposals before NMS", "rpn.filter_proposals", decoded[0], "decoded from every anchor"))
    stages.append(stage("objectness before NMS", "rpn.filter_proposals", flat_objectness.reshape(-1), "logits"))
    stages.append(stage("proposals after NMS", "rpn.filter_proposals", kept_boxes[0], "clipped, in objectness order"))
    stages.append(stage("objectness after NMS", "rpn.filter_proposals", kept_scores[0], "sigmoid probabilities"))
    rpn_facts = {
        "decoded": int(decoded.shape[1]),
        "kept_for_nms": pre_nms,
        "after_nms": int(kept_boxes[0].shape[0]),
        "pre_nms_top_n_per_level": int(rpn.pre_nms_top_n()),
        "post_nms_top_n": int(rpn.post_nms_top_n()),
        "nms_iou": float(rpn.nms_thresh),
        "score_threshold": float(rpn.score_thresh),
    }

    rois = 0
    if "roi_heads.box_roi_pool" in seen:
        (_, boxes, _), pooled = seen["roi_heads.box_roi_pool"]
        rois = int(boxes[0].shape[0])
        stages.append(stage("RoIs", "roi_heads.box_roi_pool", boxes[0], "the RPN's proposals, batch pixels"))
        stages.append(stage("RoI features", "roi_heads.box_roi_pool", pooled))
    if "roi_heads.box_head" in seen:
        stages.append(stage("box head features", "roi_heads.box_head", seen["roi_heads.box_head"][1]))
    if "roi_heads.box_predictor" in seen:
        logits, regression = seen["roi_heads.box_predictor"][1]
        stages.append(stage("class logits", "roi_heads.box_predictor", logits))
        stages.append(stage("box regression", "roi_heads.box_predictor", regression, "deltas per class"))
    result = seen["roi_heads"][1][0][0]
    for key in ("boxes", "scores", "labels"):
        stages.append(stage(f"head detections: {key}", "roi_heads", result[key], "batch pixels" if key == "boxes" else ""))

    mask_logits = None
    for path, name in (("roi_heads.mask_roi_pool", "mask RoI features"), ("roi_heads.mask_head", "mask head features")):
        if path in seen:
            stages.append(stage(name, path, seen[path][1]))
    if "roi_heads.mask_predictor" in seen:
        all_logits = seen["roi_heads.mask_predictor"][1]
        stages.append(stage("mask logits (all classes)", "roi_heads.mask_predictor", all_logits))
        labels = result["labels"].to(all_logits.device)
        own = all_logits[torch.arange(len(labels), device=all_logits.device), labels]
        mask_logits = own.float().cpu().numpy()
        stages.append(stage("mask logits (own label)", "roi_heads.mask_predictor", own, "one M x M map per detection"))
    if "masks" in result:
        stages.append(stage("mask probabilities", "roi_heads", result["masks"], "sigmoid of the own-label logits"))

    heatmaps = None
    for path, name in (("roi_heads.keypoint_roi_pool", "keypoint RoI features"), ("roi_heads.keypoint_head", "keypoint head features")):
        if path in seen:
            stages.append(stage(name, path, seen[path][1]))
    if "roi_heads.keypoint_predictor" in seen:
        maps = seen["roi_heads.keypoint_predictor"][1]
        heatmaps = maps.float().cpu().numpy()
        stages.append(stage("keypoint heatmaps", "roi_heads.keypoint_predictor", maps, "logits, one map per keypoint"))
    for key in ("keypoints", "keypoints_scores"):
        if key in result:
            stages.append(stage(f"head detections: {key}", "roi_heads", result[key]))

    return Trace(
        stages=stages, original_size=original, resized_size=resized, batch_size=padded, levels=levels,
        centre_anchors=centre, centre_anchor_levels=centre_levels, rpn=rpn_facts,
        proposals=kept_boxes[0].float().cpu().numpy(), proposal_scores=kept_scores[0].float().cpu().numpy(),
        rois=rois, mask_logits=mask_logits, heatmaps=heatmaps,
    )


def anchors_per_location(net: torch.nn.Module) -> list[int]:
    """Anchors per location of each level, as the anchor generator states them."""
    return [int(a) for a in net.rpn.anchor_generator.num_anchors_per_location()]


def _centre_anchors(anchors: torch.Tensor, levels: list[Level], resized: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Every anchor (all sizes and ratios, every level) of the location nearest the resized
    image's centre. The generator lays them out level by level, location by location (row-major),
    then anchor by anchor."""
    rows, names, offset = [], [], 0
    for level in levels:
        h, w = level.feature_shape[-2], level.feature_shape[-1]
        y = min(int(resized[0] / 2 // level.stride[0]), h - 1)
        x = min(int(resized[1] / 2 // level.stride[1]), w - 1)
        start = offset + (y * w + x) * level.anchors_per_location
        rows.append(anchors[start : start + level.anchors_per_location].float().cpu())
        names += [level.name] * level.anchors_per_location
        offset += level.anchors
    return (torch.cat(rows).numpy() if rows else np.zeros((0, 4), np.float32)), names
