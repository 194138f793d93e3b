"""Real COCO data with published metrics: our numbers are the published ones and pycocotools'
own (every stat, and the precision/recall/scores arrays, to 1e-12)."""

from __future__ import annotations

import numpy as np
import pytest

from eval_fixtures import DATA, assert_same_as_pycoco, load, pycoco
from mrcnn_batch.evaluate import COCOEvaluator, load_ground_truth, load_results_json

# tests/data/coco/SOURCES.md
PUBLISHED = {
    ("instances_val2014_100.json", "instances_val2014_fakebbox100_results.json", "bbox"): (
        [0.5046, 0.6970, 0.5730, 0.5856, 0.5194, 0.5014, 0.3868, 0.5937, 0.5954, 0.6398, 0.5664, 0.5643], 5e-5),
    ("instances_val2014_100.json", "instances_val2014_fakesegm100_results.json", "segm"): (
        [0.3195, 0.5623, 0.2989, 0.3874, 0.3102, 0.3269, 0.2682, 0.4154, 0.4168, 0.4694, 0.3768, 0.3815], 5e-5),
    ("fce_keypoints_gt.json", "fce_keypoints_dt.json", "keypoints"): (
        [0.50488, 0.72277, 0.63366, 0.46634, 0.75050, 0.51818, 0.72727, 0.63636, 0.46667, 0.75], 5e-6),
    ("test_coco.json", "xtcocoapi_example_coco_preds.json", "keypoints"): (
        [0.8609, 0.9931, 0.9109, 0.7756, 0.9373, 0.8750, 1.0, 0.9167, 0.7800, 0.9429], 5e-5),
    ("test_coco.json", "test_coco_det_AP_H_56.json", "bbox"): (
        [0.7891, 0.9824, 0.9824, 0.6505, 0.7666, 0.8722, 0.2786, 0.8286, 0.8429, 0.6500, 0.8200, 0.9143], 5e-5),
}


def _evaluate(gt_name: str, dt_name: str, iou_type: str):
    gt = load_ground_truth(str(DATA / gt_name), iou_types=(iou_type,))
    ev = COCOEvaluator(gt, iou_types=(iou_type,))
    ev.process(load_results_json(str(DATA / dt_name), gt=gt, iou_type=iou_type), image_ids=gt.image_ids)
    return ev.evaluate()[iou_type]


@pytest.mark.parametrize("case", list(PUBLISHED), ids=lambda c: f"{c[1]}-{c[2]}")
def test_published_numbers_and_pycocotools(case):
    gt_name, dt_name, iou_type = case
    expected, tol = PUBLISHED[case]
    r = _evaluate(gt_name, dt_name, iou_type)
    np.testing.assert_allclose(r.stats, expected, rtol=0, atol=tol)
    assert_same_as_pycoco(r, pycoco(load(gt_name), load(dt_name), iou_type))


def test_cocoapi_fake_results_text_file():
    """cocoapi's own printed summary (results/val2014_fake_eval_res.txt), line for line."""
    squash = lambda s: " ".join(s.split())  # noqa: E731  (the old file pads "(AP)" by one space less)
    text = squash((DATA / "val2014_fake_eval_res.txt").read_text())
    for iou_type, dt in (("bbox", "instances_val2014_fakebbox100_results.json"),
                         ("segm", "instances_val2014_fakesegm100_results.json")):
        r = _evaluate("instances_val2014_100.json", dt, iou_type)
        for line in r.lines:
            assert squash(line) in text


def test_ground_truth_as_predictions_scores_one():
    """mmpose: test_coco.json's own annotations as predictions give 1.0 everywhere."""
    gt_doc = load("test_coco.json")
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0}
             for a in gt_doc["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    gt = load_ground_truth(str(DATA / "test_coco.json"), iou_types=("keypoints",))
    ev = COCOEvaluator(gt, iou_types=("keypoints",))
    ev.process(preds, image_ids=gt.image_ids)
    r = ev.evaluate()["keypoints"]
    np.testing.assert_array_equal(r.stats, np.ones(10))
    assert_same_as_pycoco(r, pycoco(gt_doc, preds, "keypoints"))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_segm_results_evaluated_as_bbox_and_segm(iou_type):
    """loadRes' handling kept: a segm-only results file's boxes come from its masks."""
    dt = "instances_val2014_fakesegm100_results.json"
    r = _evaluate("instances_val2014_100.json", dt, iou_type)
    assert_same_as_pycoco(r, pycoco(load("instances_val2014_100.json"), load(dt), iou_type))


def test_keypoint_results_as_bbox():
    """A keypoints file with boxes: loadRes takes box areas for every result (its first has one)."""
    r = _evaluate("fce_keypoints_gt.json", "fce_keypoints_dt.json", "bbox")
    assert_same_as_pycoco(r, pycoco(load("fce_keypoints_gt.json"), load("fce_keypoints_dt.json"), "bbox"))


def test_per_category_ap_is_pycocotools_slices():
    r = _evaluate("instances_val2014_100.json", "instances_val2014_fakebbox100_results.json", "bbox")
    e = pycoco(load("instances_val2014_100.json"), load("instances_val2014_fakebbox100_results.json"), "bbox")
    prec = e.eval["precision"][:, :, :, 0, -1]
    for k in range(prec.shape[2]):
        s = prec[:, :, k]
        expected = np.mean(s[s > -1]) if (s > -1).any() else np.nan
        np.testing.assert_allclose(r.per_category["AP"][k], expected, rtol=0, atol=1e-12)
