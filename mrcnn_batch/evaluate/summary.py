"""Summary numbers: ``COCOeval.summarize``'s ``stats`` (same order, same arithmetic), per-category
AP, and the familiar text lines (returned, never printed).

The layout of ``stats`` is pycocotools': for bbox/segm AP, AP50, AP75, APs, APm, APl, AR1, AR10,
AR100, ARs, ARm, ARl; for keypoints AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl. A value
with no ground truth to measure is -1, as in pycocotools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrcnn_batch.evaluate.accumulate import Accumulated
from mrcnn_batch.evaluate.params import EvalParams


@dataclass(frozen=True)
class SummaryItem:
    name: str  # "AP", "AP50", "APs", "AR100", ...
    ap: bool  # precision (True) or recall (False)
    iou_thr: float | None  # None: averaged over all thresholds
    area: str
    max_dets: int


def _items(iou_type: str, max_dets: tuple[int, ...]) -> tuple[SummaryItem, ...]:
    if iou_type == "keypoints":
        return (
            SummaryItem("AP", True, None, "all", 20),
            SummaryItem("AP50", True, 0.5, "all", 20),
            SummaryItem("AP75", True, 0.75, "all", 20),
            SummaryItem("APm", True, None, "medium", 20),
            SummaryItem("APl", True, None, "large", 20),
            SummaryItem("AR", False, None, "all", 20),
            SummaryItem("AR50", False, 0.5, "all", 20),
            SummaryItem("AR75", False, 0.75, "all", 20),
            SummaryItem("ARm", False, None, "medium", 20),
            SummaryItem("ARl", False, None, "large", 20),
        )
    m0, m1, m2 = max_dets[0], max_dets[1], max_dets[2]
    return (
        SummaryItem("AP", True, None, "all", 100),
        SummaryItem("AP50", True, 0.5, "all", m2),
        SummaryItem("AP75", True, 0.75, "all", m2),
        SummaryItem("APs", True, None, "small", m2),
        SummaryItem("APm", True, None, "medium", m2),
        SummaryItem("APl", True, None, "large", m2),
        SummaryItem(f"AR{m0}", False, None, "all", m0),
        SummaryItem(f"AR{m1}", False, None, "all", m1),
        SummaryItem(f"AR{m2}", False, None, "all", m2),
        SummaryItem("ARs", False, None, "small", m2),
        SummaryItem("ARm", False, None, "medium", m2),
        SummaryItem("ARl", False, None, "large", m2),
    )


def summary_items(acc: Accumulated) -> tuple[SummaryItem, ...]:
    return items_for(acc.params)


def items_for(params: EvalParams) -> tuple[SummaryItem, ...]:
    """The summary numbers of an evaluation with these parameters, in ``stats`` order."""
    return _items(params.iou_type, params.max_dets)


def _value(acc: Accumulated, item: SummaryItem) -> float:
    p = acc.params
    iou_thrs = p.iou_thrs_array()
    aind = [i for i, lbl in enumerate(p.area_labels) if lbl == item.area]
    mind = [i for i, m in enumerate(p.max_dets) if m == item.max_dets]
    s = acc.precision if item.ap else acc.recall
    if item.iou_thr is not None:
        s = s[np.where(item.iou_thr == iou_thrs)[0]]
    s = s[:, :, :, aind, mind] if item.ap else s[:, :, aind, mind]
    valid = s[s > -1]
    return -1.0 if len(valid) == 0 else float(np.mean(valid))


def stats(acc: Accumulated) -> np.ndarray:
    """pycocotools' ``COCOeval.stats``."""
    return np.array([_value(acc, it) for it in summary_items(acc)])


def summary_lines(acc: Accumulated) -> list[str]:
    """The lines ``COCOeval.summarize`` prints, in its format."""
    p = acc.params
    out = []
    for it, v in zip(summary_items(acc), stats(acc)):
        title = "Average Precision" if it.ap else "Average Recall"
        kind = "(AP)" if it.ap else "(AR)"
        iou = f"{p.iou_thrs[0]:0.2f}:{p.iou_thrs[-1]:0.2f}" if it.iou_thr is None else f"{it.iou_thr:0.2f}"
        out.append(
            " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}".format(
                title, kind, iou, it.area, it.max_dets, v
            )
        )
    return out


def per_category(acc: Accumulated) -> dict[str, np.ndarray]:
    """Per category (``acc.category_ids`` order), area "all", largest maxDet: AP, AP50, AP75, AR.

    NaN where the category has no non-ignored ground truth (pycocotools' -1 everywhere).
    """
    p = acc.params
    iou_thrs = p.iou_thrs_array()
    out: dict[str, np.ndarray] = {}
    prec = acc.precision[:, :, :, 0, -1]  # (T, R, K)
    rec = acc.recall[:, :, 0, -1]  # (T, K)
    for name, thr in (("AP", None), ("AP50", 0.5), ("AP75", 0.75)):
        s = prec if thr is None else prec[np.where(thr == iou_thrs)[0]]
        out[name] = np.array([_mean_valid(s[:, :, k]) for k in range(len(acc.category_ids))])
    out["AR"] = np.array([_mean_valid(rec[:, k]) for k in range(len(acc.category_ids))])
    return out


def _mean_valid(s: np.ndarray) -> float:
    valid = s[s > -1]
    return float(np.mean(valid)) if len(valid) else float("nan")
