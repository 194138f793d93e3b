"""COCO evaluation with exactly pycocotools' semantics, per image, merged across shards.

The phases are pycocotools' own, one module each:

* ``groundtruth`` loads and validates COCO ground truth from any fsspec URL;
* ``predictions`` turns a run's tables or a COCO results JSON into columnar detections;
* ``similarity`` computes IoU (boxes, masks) and OKS (keypoints) per image and category;
* ``match`` matches detections to ground truth greedily, as ``COCOeval.evaluateImg`` does;
* ``accumulate`` builds the precision/recall arrays, as ``COCOeval.accumulate`` does;
* ``summary`` computes the summary ``stats`` and per-category AP, as ``COCOeval.summarize``;
* ``evaluator`` is the reset/process/evaluate API; ``distributed`` runs it over Ray;
* ``bootstrap`` re-accumulates per-image matches for resampled (weighted) image sets;
* ``compare`` compares two evaluations: B - A with paired bootstrap intervals over images;
* ``tide`` is TIDE's error analysis (tidecv's numbers): dAP per error type, confusion matrix;
* ``lvis`` is LVIS's federated evaluation (the lvis package's numbers): APr/APc/APf, AR@300;
* ``outputs`` writes ``metrics.json``, ``metrics.parquet`` and precision-recall plots.
"""

from mrcnn_batch.evaluate.compare import (
    BootstrapConfig,
    Comparison,
    compare_evaluators,
    compare_predictions,
    compare_runs,
)
from mrcnn_batch.evaluate.errors import EvalInputError, IncompleteRunError
from mrcnn_batch.evaluate.evaluator import COCOEvaluator, EvalResult
from mrcnn_batch.evaluate.groundtruth import GroundTruth, load_ground_truth
from mrcnn_batch.evaluate.lvis import (
    LVISGroundTruth,
    LVISResult,
    load_lvis_ground_truth,
    lvis_evaluate,
    lvis_run,
)
from mrcnn_batch.evaluate.params import IOU_TYPES, EvalParams
from mrcnn_batch.evaluate.predictions import Detections, load_results_json
from mrcnn_batch.evaluate.tide import TideParams, TideResult, tide_errors, tide_run

__all__ = [
    "IOU_TYPES",
    "BootstrapConfig",
    "COCOEvaluator",
    "Comparison",
    "Detections",
    "EvalInputError",
    "EvalParams",
    "EvalResult",
    "GroundTruth",
    "IncompleteRunError",
    "LVISGroundTruth",
    "LVISResult",
    "TideParams",
    "TideResult",
    "compare_evaluators",
    "compare_predictions",
    "compare_runs",
    "load_ground_truth",
    "load_lvis_ground_truth",
    "load_results_json",
    "lvis_evaluate",
    "lvis_run",
    "tide_errors",
    "tide_run",
]
