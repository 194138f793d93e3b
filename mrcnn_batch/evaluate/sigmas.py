"""OKS sigmas per keypoint category, from the first source that has them.

1. ``--kpt-sigmas`` / ``kpt_sigmas=`` given explicitly (applies to every keypoint category);
2. the ground-truth category's own ``oks_sigmas`` list (one per keypoint);
3. the run's model metadata (``oks_sigmas`` with its ``keypoint_category_id``);
4. COCO's 17 person sigmas, for a category with 17 keypoints.

COCO's sigmas are used as pycocotools computes them (``np.array([.26, ...]) / 10.0``), which
differs from the decimal literals in the last bit; a source giving COCO's values gets
pycocotools' array, so that every OKS is pycocotools' to the bit.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from pycocotools.cocoeval import Params

from mrcnn_batch.evaluate.errors import EvalInputError
from mrcnn_batch.evaluate.groundtruth import GroundTruth

log = logging.getLogger(__name__)

COCO_SIGMAS = np.asarray(Params(iouType="keypoints").kpt_oks_sigmas, dtype=np.float64)


def resolve_sigmas(
    gt: GroundTruth,
    *,
    kpt_sigmas: Sequence[float] | None = None,
    model_metadata: dict[str, Any] | None = None,
) -> dict[int, np.ndarray]:
    """``{category_id: sigmas}`` for every keypoint category of ``gt``."""
    out: dict[int, np.ndarray] = {}
    meta = model_metadata or {}
    for cid in gt.keypoint_category_ids():
        cat = gt.category(cid)
        k = _num_keypoints(gt, cid)
        if kpt_sigmas:
            source, sigmas = "--kpt-sigmas", kpt_sigmas
        elif cat.oks_sigmas:
            source, sigmas = "the ground truth's category", cat.oks_sigmas
        elif meta.get("oks_sigmas") and meta.get("keypoint_category_id") in (cid, None):
            source, sigmas = f"model {meta.get('name', '?')}", meta["oks_sigmas"]
        elif k == len(COCO_SIGMAS):
            source, sigmas = "COCO's person keypoints (default)", COCO_SIGMAS
        else:
            raise EvalInputError(
                f"no OKS sigmas for keypoint category {cid} ({cat.name}) with {k} keypoints: give "
                "--kpt-sigmas, or 'oks_sigmas' in the ground truth's category"
            )
        arr = np.asarray(sigmas, dtype=np.float64)
        if k and len(arr) != k:
            raise EvalInputError(
                f"OKS sigmas from {source}: {len(arr)} values, category {cid} ({cat.name}) has {k} keypoints"
            )
        if len(arr) == len(COCO_SIGMAS) and np.allclose(arr, COCO_SIGMAS, rtol=0, atol=1e-12):
            arr = COCO_SIGMAS
        log.info("OKS sigmas of category %d (%s) from %s", cid, cat.name, source)
        out[cid] = arr
    return out


def _num_keypoints(gt: GroundTruth, cid: int) -> int:
    cat = gt.category(cid)
    if cat.keypoints:
        return len(cat.keypoints)
    lens = (gt.kp_offsets[1:] - gt.kp_offsets[:-1])[gt.ann_category_id == cid]
    lens = lens[lens > 0]
    return int(lens[0]) // 3 if len(lens) else 0
