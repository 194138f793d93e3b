"""The evaluator API, detectron2-style: ``reset()``, ``process(...)``, ``evaluate()``.

``process`` matches a batch of images right away (matching is per image) and keeps only the
compact per-detection outcome; ``evaluate`` merges the batches in image-id order, accumulates
and summarises. Batches may come in any order and from anywhere (``add`` takes results
computed elsewhere, e.g. by Ray tasks): the numbers are the same as one pycocotools run.

    ev = COCOEvaluator(load_ground_truth(url, iou_types=("bbox",)), iou_types=("bbox",))
    ev.process(results_list_or_detections, image_ids=batch_image_ids)
    ev.evaluate()["bbox"].stats
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from mrcnn_batch.evaluate.accumulate import Accumulated, accumulate, merge
from mrcnn_batch.evaluate.errors import EvalInputError, IncompleteRunError
from mrcnn_batch.evaluate.groundtruth import Category, GroundTruth
from mrcnn_batch.evaluate.match import MatchResult, ground_truth_counts, match_images
from mrcnn_batch.evaluate.params import EVAL_IOU_TYPES, EvalParams
from mrcnn_batch.evaluate.predictions import Detections, check_ids, detections_from_results
from mrcnn_batch.evaluate.sigmas import resolve_sigmas
from mrcnn_batch.evaluate.summary import per_category, stats, summary_items, summary_lines
from mrcnn_batch.memory import give_back_freed_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class EvalResult:
    """The evaluation of one IoU type."""

    iou_type: str
    stats: np.ndarray  # pycocotools' COCOeval.stats, same order
    stat_names: tuple[str, ...]
    per_category: dict[str, np.ndarray]  # AP, AP50, AP75, AR per category (NaN: no ground truth)
    categories: tuple[Category, ...]
    accumulated: Accumulated  # precision / recall / scores arrays
    lines: tuple[str, ...]  # pycocotools' summary lines
    partial: bool  # True: only the processed images were evaluated
    num_images: int
    num_gt_images: int
    oks_sigmas: dict[int, list[float]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return dict(zip(self.stat_names, self.stats.tolist()))


@dataclass(frozen=True)
class EvalSetup:
    """What is fixed for one evaluation: categories, parameters and OKS sigmas per IoU type."""

    iou_types: tuple[str, ...]
    params: dict[str, EvalParams]
    category_ids: dict[str, np.ndarray]
    sigmas: dict[int, np.ndarray]

    @classmethod
    def create(
        cls,
        gt: GroundTruth,
        *,
        iou_types: Sequence[str],
        params: Mapping[str, EvalParams] | None = None,
        kpt_sigmas: Sequence[float] | None = None,
        model_metadata: dict[str, Any] | None = None,
    ) -> "EvalSetup":
        iou_types = tuple(iou_types)
        for t in iou_types:
            if t not in EVAL_IOU_TYPES:
                raise EvalInputError(f"unknown IoU type {t!r}; expected one of {', '.join(EVAL_IOU_TYPES)}")
        p = {t: (params or {}).get(t) or EvalParams.default(t) for t in iou_types}
        cats = {t: gt.category_ids for t in iou_types}
        sigmas: dict[int, np.ndarray] = {}
        if "keypoints" in iou_types:
            cats["keypoints"] = np.array(gt.keypoint_category_ids(), np.int64)
            if len(cats["keypoints"]) == 0:
                raise EvalInputError(f"ground truth {gt.source} has no keypoint categories")
            sigmas = resolve_sigmas(gt, kpt_sigmas=kpt_sigmas, model_metadata=model_metadata)
        return cls(iou_types, p, cats, sigmas)


class COCOEvaluator:
    """COCO evaluation of predictions against ``gt``, batch by batch."""

    def __init__(
        self,
        gt: GroundTruth,
        *,
        iou_types: Sequence[str] = ("bbox",),
        params: Mapping[str, EvalParams] | None = None,
        kpt_sigmas: Sequence[float] | None = None,
        model_metadata: dict[str, Any] | None = None,
        unknown_categories: str = "error",
    ) -> None:
        self.gt = gt
        self.setup = EvalSetup.create(
            gt, iou_types=iou_types, params=params, kpt_sigmas=kpt_sigmas, model_metadata=model_metadata
        )
        self.unknown_categories = unknown_categories
        self.reset()

    @property
    def iou_types(self) -> tuple[str, ...]:
        return self.setup.iou_types

    def reset(self) -> None:
        self._results: dict[str, list[MatchResult]] = {t: [] for t in self.iou_types}
        self._seen: set[int] = set()

    def process(
        self,
        predictions: Sequence[dict[str, Any]] | Detections | Mapping[str, Detections],
        *,
        image_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Match the predictions of a batch of images.

        ``predictions``: COCO result dicts, or :class:`Detections` (one IoU type, or a mapping by
        IoU type). ``image_ids``: the images this batch covers, including those without any
        prediction; default: the images that have predictions.
        """
        dets = self._as_detections(predictions)
        if image_ids is None:
            image_ids = np.unique(np.concatenate([d.image_id for d in dets.values()]))
        image_ids = np.unique(np.asarray(image_ids, np.int64))
        absent = np.setdiff1d(image_ids, self.gt.image_ids)
        if len(absent):
            raise EvalInputError(f"images {absent[:5].tolist()} are not in the ground truth {self.gt.source}")
        again = self._seen.intersection(image_ids.tolist())
        if again:
            raise EvalInputError(f"images {sorted(again)[:5]} were already processed")
        part = self.gt.subset(image_ids)
        for t in self.iou_types:
            d = dets[t]
            outside = np.setdiff1d(d.image_id, image_ids)
            if len(outside):
                raise EvalInputError(f"predictions for images {outside[:5].tolist()} outside this batch's image_ids")
            self.add(t, match_images(
                part, d, params=self.setup.params[t], category_ids=self.setup.category_ids[t],
                sigmas=self.setup.sigmas, image_ids=image_ids,
            ))

    def add(self, iou_type: str, result: MatchResult) -> None:
        """Add a batch matched elsewhere (``match_images`` on disjoint images)."""
        if iou_type == self.iou_types[0]:
            again = self._seen.intersection(result.image_ids.tolist())
            if again:
                raise EvalInputError(f"images {sorted(again)[:5]} were already processed")
            self._seen.update(result.image_ids.tolist())
        self._results[iou_type].append(result)

    def matches(self, iou_type: str) -> MatchResult:
        """The per-detection outcome of every image processed so far (merged, in any order)."""
        if not self._results[iou_type]:
            raise EvalInputError("no images were processed")
        return merge(self._results[iou_type])

    def subset(self, image_ids: Sequence[int] | np.ndarray) -> COCOEvaluator:
        """A new evaluator holding the matches of these of the processed images only (matching
        is per image, so they are what processing those images alone would give)."""
        image_ids = np.unique(np.asarray(image_ids, np.int64))
        out = copy.copy(self)
        out.reset()
        for t in self.iou_types:
            m = self.matches(t)
            ids = np.intersect1d(m.image_ids, image_ids)
            keep = np.isin(m.image_id, ids)
            npig = ground_truth_counts(self.gt, params=self.setup.params[t], category_ids=self.setup.category_ids[t],
                                       image_ids=ids).sum(axis=0)
            out.add(t, MatchResult(iou_type=m.iou_type, image_ids=ids, category_index=m.category_index[keep],
                                   image_id=m.image_id[keep], rank=m.rank[keep], score=m.score[keep],
                                   codes=m.codes[keep], npig=npig, cells=m.cells))
        return out

    def evaluate(self, *, allow_partial: bool = False) -> dict[str, EvalResult]:
        """Accumulate and summarise. Refuses unless every ground-truth image was processed,
        or ``allow_partial`` (then only the processed images are evaluated, and it says so)."""
        missing = len(self.gt.image_ids) - len(self._seen)
        if missing and not allow_partial:
            raise IncompleteRunError(
                f"{missing} of the {len(self.gt.image_ids)} ground-truth images were not processed; "
                "their objects would count as missed. Pass allow_partial=True (--allow-partial) to "
                "evaluate the processed images only"
            )
        out = {}
        for t in self.iou_types:
            res = self._results[t]
            if not res:
                raise EvalInputError("no images were processed")
            merged = merge(res)
            self._results[t] = [merged]  # (the parts are let go before accumulating)
            del res
            give_back_freed_memory()  # matching's temporaries: accumulation takes fresh pages, not more
            acc = accumulate(merged, params=self.setup.params[t], category_ids=self.setup.category_ids[t])
            cat_ids = self.setup.category_ids[t]
            out[t] = EvalResult(
                iou_type=t,
                stats=stats(acc),
                stat_names=tuple(it.name for it in summary_items(acc)),
                per_category=per_category(acc),
                categories=tuple(self.gt.category(int(c)) for c in cat_ids),
                accumulated=acc,
                lines=tuple(summary_lines(acc)),
                partial=bool(missing),
                num_images=len(merged.image_ids),
                num_gt_images=len(self.gt.image_ids),
                oks_sigmas={int(c): s.tolist() for c, s in self.setup.sigmas.items()} if t == "keypoints" else {},
            )
        return out

    def _as_detections(self, predictions: Any) -> dict[str, Detections]:
        if isinstance(predictions, Detections):
            predictions = {predictions.iou_type: predictions}
        if isinstance(predictions, Mapping):
            out = {}
            for t in self.iou_types:
                if t not in predictions:
                    raise EvalInputError(f"no {t} predictions given")
                d = predictions[t]
                keep = check_ids(d.image_id, d.category_id, gt=self.gt, source="predictions",
                                 unknown_categories=self.unknown_categories)
                out[t] = d if keep is None else d.take(keep)
            return out
        results = list(predictions)
        return {
            t: detections_from_results(
                [dict(r) for r in results], gt=self.gt, iou_type=t, unknown_categories=self.unknown_categories
            )
            for t in self.iou_types
        }
