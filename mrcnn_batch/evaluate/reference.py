"""pycocotools' ``COCOeval``, the reference every number of ``evaluate`` equals, run quietly.

One place for the sequence the demo's self-check, the tests, the demo model's training script
and the examples all need: ground truth from a dict, ``loadRes``, ``evaluate``, ``accumulate``,
``summarize`` -- with pycocotools' printing swallowed and its inputs left as they were
(``loadRes`` adds ``id``/``area`` to the results it is given, so it gets a copy).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def coco_ground_truth(doc: dict[str, Any]):
    """A ``pycocotools.coco.COCO`` of a COCO dict (a copy of it), indexed, without its prints."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(doc)
        gt.createIndex()
    return gt


def cocoeval(gt, results: list[dict[str, Any]], iou_type: str, *, sigmas: Sequence[float] | None = None,
             cat_ids: Sequence[int] | None = None):
    """pycocotools' ``COCOeval`` of ``results`` against ``gt`` (a ``COCO`` or a COCO dict),
    evaluated, accumulated and summarised: its ``stats`` and ``eval`` hold the reference.
    ``sigmas``: OKS sigmas for keypoints; ``cat_ids``: the categories evaluated (default all).
    An empty ``results`` cannot be loaded by pycocotools: ValueError."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        raise ValueError("pycocotools cannot load an empty results list")
    if isinstance(gt, dict):
        gt = coco_ground_truth(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(list(results))), iou_type)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=float)
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev
