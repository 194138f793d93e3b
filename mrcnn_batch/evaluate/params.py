"""Evaluation parameters: pycocotools' ``Params``, as a frozen dataclass.

The defaults are pycocotools' to the bit: IoU thresholds ``np.linspace(.5, .95, 10)``, recall
thresholds ``np.linspace(0, 1, 101)``, area ranges all/small/medium/large (keypoints:
all/medium/large), maxDets 1/10/100 (keypoints: 20).

Evaluation knows one IoU type more than a results file: ``boundary`` (Boundary IoU, see
``boundary.py``) scores the ``segm`` detections with the boundary-aware similarity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrcnn_batch.config import IOU_TYPES

EVAL_IOU_TYPES = IOU_TYPES + ("boundary",)  # what `eval` scores: the results-file types and boundary
MASK_IOU_TYPES = ("segm", "boundary")  # the types scored on masks (a results file's segmentations)
BOUNDARY_DILATION_RATIO = 0.02  # Boundary IoU's d / image diagonal (the paper's and the references')

_IOU_THRS = tuple(np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True).tolist())
_REC_THRS = tuple(np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True).tolist())
_DET_AREAS = ((0.0**2, 1e5**2), (0.0**2, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))
_KPT_AREAS = ((0.0**2, 1e5**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))


@dataclass(frozen=True)
class EvalParams:
    """What one IoU type is evaluated with (pycocotools ``Params`` with ``useCats=1``)."""

    iou_type: str
    iou_thrs: tuple[float, ...] = _IOU_THRS
    rec_thrs: tuple[float, ...] = _REC_THRS
    max_dets: tuple[int, ...] = (1, 10, 100)
    area_rngs: tuple[tuple[float, float], ...] = _DET_AREAS
    area_labels: tuple[str, ...] = ("all", "small", "medium", "large")
    boundary_dilation_ratio: float = BOUNDARY_DILATION_RATIO  # used by iou_type "boundary" only

    def __post_init__(self) -> None:
        if self.iou_type not in EVAL_IOU_TYPES:
            raise ValueError(f"iou_type must be one of {EVAL_IOU_TYPES}, got {self.iou_type!r}")
        r = self.boundary_dilation_ratio
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
            raise ValueError(f"boundary_dilation_ratio must be a positive number, got {r!r}")
        if len(self.area_rngs) != len(self.area_labels):
            raise ValueError("area_rngs and area_labels must have the same length")
        if list(self.max_dets) != sorted(self.max_dets):
            raise ValueError(f"max_dets must be ascending, got {self.max_dets}")

    @classmethod
    def default(cls, iou_type: str) -> "EvalParams":
        if iou_type == "keypoints":
            return cls(
                iou_type=iou_type,
                max_dets=(20,),
                area_rngs=_KPT_AREAS,
                area_labels=("all", "medium", "large"),
            )
        return cls(iou_type=iou_type)

    @property
    def max_det(self) -> int:
        """Detections kept per image and category (pycocotools' ``maxDets[-1]``)."""
        return self.max_dets[-1]

    def iou_thrs_array(self) -> np.ndarray:
        return np.asarray(self.iou_thrs, dtype=np.float64)

    def rec_thrs_array(self) -> np.ndarray:
        return np.asarray(self.rec_thrs, dtype=np.float64)

    def area_array(self) -> np.ndarray:
        return np.asarray(self.area_rngs, dtype=np.float64)

    def as_dict(self) -> dict:
        return {
            "iou_type": self.iou_type,
            "iou_thrs": list(self.iou_thrs),
            "rec_thrs": list(self.rec_thrs),
            "max_dets": list(self.max_dets),
            "area_rngs": [list(a) for a in self.area_rngs],
            "area_labels": list(self.area_labels),
            **({"boundary_dilation_ratio": self.boundary_dilation_ratio} if self.iou_type == "boundary" else {}),
        }
