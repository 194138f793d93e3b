"""TIDE error analysis against its reference, ``tidecv`` 1.0.1 (run here, on the same files).

Every number (AP, the six main dAPs, the two special dAPs) and every error count is compared
with tidecv's on cocoapi's 100-image fixtures (bbox and segm, with crowds and 340 tied scores)
and on generated sets: boxes on a small integer grid (IoUs exactly at 0.5 and 0.1, equal IoUs,
equal scores, more than 100 detections in an image, images without objects or detections) and
the evaluation tests' random sets. Tolerance: 1e-12 on tidecv's 0-100 scale. Both sides do the
same floating-point operations in the same order (the order of equal scores and of the sums
over recall points and categories is reproduced), so the differences are 0 on all of these;
the tolerance only leaves room for a platform's last-bit rounding of the same operations.
Two inputs on which tidecv raises an exception instead of giving a number are pinned in
``test_where_tidecv_fails``, with the paper's answer.

tidecv is used as its README shows, ``TIDE().evaluate(datasets.COCO(gt), datasets.COCOResult(r))``,
without plotting; its ``TIDE()`` sets seaborn's style into matplotlib's global settings, so it
is built inside ``matplotlib.rc_context()`` to leave the other tests' settings alone.
"""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pyarrow.parquet as pq
import pytest
from eval_fixtures import DATA, random_case, write_run
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from mrcnn_batch.cli import EXIT_USAGE, app
from mrcnn_batch.evaluate import EvalInputError, tide_errors
from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict, load_ground_truth
from mrcnn_batch.evaluate.predictions import detections_from_results, load_results_json
from mrcnn_batch.evaluate.tide import ERROR_TYPES, SPECIAL_TYPES, TideParams

tidecv = pytest.importorskip("tidecv")

ATOL = 1e-12
FIXTURES = {"bbox": "instances_val2014_fakebbox100_results.json", "segm": "instances_val2014_fakesegm100_results.json"}


def reference(gt_path, results_path, iou_type: str) -> dict:
    """tidecv's AP, main and special dAPs and error counts."""
    from tidecv import TIDE, datasets

    gt, preds = datasets.COCO(str(gt_path)), datasets.COCOResult(str(results_path))
    with matplotlib.rc_context():
        tide = TIDE()
    run = tide.evaluate(gt, preds, mode=TIDE.BOX if iou_type == "bbox" else TIDE.MASK)
    return {
        "ap": run.ap,
        "main": next(iter(tide.get_main_errors().values())),
        "special": next(iter(tide.get_special_errors().values())),
        "counts": {e.short_name: n for e, n in run.count_errors().items()},
    }


def assert_same_as_tidecv(result, ref) -> None:
    assert result.ap == pytest.approx(ref["ap"], rel=0, abs=ATOL)
    for name in ERROR_TYPES:
        assert result.main[name] == pytest.approx(ref["main"][name], rel=0, abs=ATOL), name
    for name in SPECIAL_TYPES:
        assert result.special[name] == pytest.approx(ref["special"][name], rel=0, abs=ATOL), name
    assert result.counts == ref["counts"]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_cocoapi_fixtures_equal_tidecv(iou_type):
    gt_path, res_path = DATA / "instances_val2014_100.json", DATA / FIXTURES[iou_type]
    gt = load_ground_truth(str(gt_path), iou_types=(iou_type,))
    result = tide_errors(gt, load_results_json(str(res_path), gt=gt, iou_type=iou_type))
    ref = reference(gt_path, res_path, iou_type)
    assert_same_as_tidecv(result, ref)
    # the figures the README quotes
    expected_ap = {"bbox": 64.20498881733425, "segm": 51.80081155512982}[iou_type]
    assert result.ap == pytest.approx(expected_ap, rel=0, abs=ATOL)


def grid_case(seed: int, iou_type: str) -> tuple[dict, list]:
    """Boxes with integer corners on a 12x12 image: many IoUs exactly 0.5 or 0.1 or equal, few
    distinct scores, crowds, a category without objects (5), images with 110 detections."""
    rng = np.random.default_rng(seed)
    cats = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3, 5)]
    images, anns, results = [], [], []
    ids = rng.choice(np.arange(1, 500), size=int(rng.integers(3, 15)), replace=False).tolist()
    for img in ids:  # not in id order: the file's order decides ties, as in tidecv
        images.append({"id": img, "height": 12, "width": 12, "file_name": f"{img}.jpg"})
        objs = []
        for _ in range(int(rng.choice([0, 1, 2, 4, 6]))):
            x, y = (int(v) for v in rng.integers(0, 8, 2))
            w, h = (int(v) for v in rng.integers(1, 5, 2))
            objs.append({"id": len(anns) + len(objs) + 1, "image_id": img, "category_id": int(rng.choice([1, 2, 3])),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.15),
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        anns += objs
        for _ in range(int(rng.choice([0, 1, 3, 8, 20, 110]))):
            if objs and rng.random() < 0.7:
                x, y, w, h = objs[int(rng.integers(len(objs)))]["bbox"]
                x, y = max(0, x + int(rng.integers(-1, 2))), max(0, y + int(rng.integers(-1, 2)))
                w, h = max(1, w + int(rng.integers(-1, 2))), max(1, h + int(rng.integers(-1, 2)))
            else:
                x, y = (int(v) for v in rng.integers(0, 9, 2))
                w, h = (int(v) for v in rng.integers(1, 4, 2))
            results.append(_result(img, int(rng.choice([1, 2, 3, 5])), float(rng.choice([0.1, 0.5, 0.5, 0.9, 1.0])),
                                   [x, y, w, h], iou_type))
    if not results:
        results.append(_result(ids[0], 1, 0.3, [1, 1, 2, 2], iou_type))
    return {"images": images, "annotations": anns, "categories": cats}, results


def _result(img: int, cat: int, score: float, box: list, iou_type: str, size=(12, 12)) -> dict:
    r = {"image_id": img, "category_id": cat, "score": score}
    if iou_type == "bbox":
        return {**r, "bbox": box}
    x, y, w, h = box
    rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], *size)[0]
    return {**r, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("kind,seed", [("grid", s) for s in (4, 10, 12, 25)] + [("random", s) for s in (0, 3, 7)])
def test_generated_sets_equal_tidecv(tmp_path, iou_type, kind, seed):
    gt_doc, results = grid_case(seed, iou_type) if kind == "grid" else random_case(seed, iou_type=iou_type)
    (tmp_path / "gt.json").write_text(json.dumps(gt_doc))
    (tmp_path / "res.json").write_text(json.dumps(results))
    gt = ground_truth_from_dict(gt_doc, iou_types=(iou_type,))
    result = tide_errors(gt, detections_from_results(results, gt=gt, iou_type=iou_type))
    assert_same_as_tidecv(result, reference(tmp_path / "gt.json", tmp_path / "res.json", iou_type))


# --------------------------------------------------------------------------- the confusion matrix

# Categories 1, 2, 3. Image 1: objects A (1), B (2), C (1), D (3); image 2: no object.
HAND_GT = {
    "images": [{"id": 1, "height": 100, "width": 100, "file_name": "1.jpg"},
               {"id": 2, "height": 100, "width": 100, "file_name": "2.jpg"}],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "fox"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},  # A
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 0, 10, 10], "area": 100, "iscrowd": 0},  # B
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [40, 0, 10, 10], "area": 100, "iscrowd": 0},  # C
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [60, 0, 10, 10], "area": 100, "iscrowd": 0},  # D
    ],
}
HAND_DETS = [
    {"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0, 0, 10, 10]},  # on A: true positive
    {"image_id": 1, "category_id": 1, "score": 0.8, "bbox": [0, 0, 10, 10]},  # on A again: Dupe
    {"image_id": 1, "category_id": 3, "score": 0.7, "bbox": [20, 0, 10, 10]},  # B called fox: Cls
    {"image_id": 1, "category_id": 2, "score": 0.6, "bbox": [80, 80, 5, 5]},  # nothing there: Bkg
    {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [40, 0, 10, 30]},  # C, IoU 1/3: Loc
    {"image_id": 1, "category_id": 2, "score": 0.4, "bbox": [5, 0, 10, 10]},  # half on A, not a dog: Both
    {"image_id": 2, "category_id": 1, "score": 0.3, "bbox": [0, 0, 10, 10]},  # an image without objects: Bkg
]


def test_confusion_matrix_of_a_hand_made_case(tmp_path):
    gt = ground_truth_from_dict(HAND_GT, iou_types=("bbox",))
    r = tide_errors(gt, detections_from_results(HAND_DETS, gt=gt, iou_type="bbox"))
    # rows: object cat, dog, fox, background; columns: detected cat, dog, fox, missed
    assert r.confusion.tolist() == [
        [1, 0, 0, 0],  # A found as cat (C: a Loc error lies on it, so not missed)
        [0, 0, 1, 0],  # B detected as fox
        [0, 0, 0, 1],  # D missed
        [1, 1, 0, 0],  # background detected as cat (image 2) and as dog
    ]
    assert r.counts == {"Cls": 1, "Loc": 1, "Both": 1, "Dupe": 1, "Bkg": 2, "Miss": 1}
    assert r.category_counts.tolist() == [[0, 1, 0, 1, 1, 0], [0, 0, 1, 0, 1, 0], [1, 0, 0, 0, 0, 1]]
    doc = r.as_dict()
    assert doc["confusion"]["rows"] == ["cat", "dog", "fox", "background"]
    assert doc["confusion"]["columns"] == ["cat", "dog", "fox", "missed"]
    json.dumps(doc, allow_nan=False)
    # and tidecv sees the same errors and numbers (its loader needs segmentations and sizes)
    doc_gt = json.loads(json.dumps(HAND_GT))
    for a in doc_gt["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    (tmp_path / "gt.json").write_text(json.dumps(doc_gt))
    (tmp_path / "res.json").write_text(json.dumps(HAND_DETS))
    assert_same_as_tidecv(r, reference(tmp_path / "gt.json", tmp_path / "res.json", "bbox"))


def test_thresholds_are_parameters():
    gt = ground_truth_from_dict(HAND_GT, iou_types=("bbox",))
    dets = detections_from_results(HAND_DETS, gt=gt, iou_type="bbox")
    loose = tide_errors(gt, dets, params=TideParams(pos_threshold=0.3))
    assert loose.counts["Loc"] == 0 and loose.confusion[0, 0] == 2  # C's detection (IoU 1/3) now matches
    with pytest.raises(EvalInputError, match="background_threshold <= pos_threshold"):
        TideParams(pos_threshold=0.05)


# --------------------------------------------------------------------------- where tidecv has no number

ONE_IMAGE = {"images": [{"id": 1, "height": 20, "width": 20, "file_name": "1.jpg"}],
             "categories": [{"id": 1, "name": "a"}], "annotations": []}
ONE_OBJECT = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0,
               "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}]


def test_where_tidecv_fails(tmp_path):
    """Two inputs on which tidecv 1.0.1 stops with an exception, and the answer by the paper's
    definitions here. (1) No object and one detection: fixing Bkg leaves no category to average,
    tidecv divides by zero (``ClassedAPDataObject.get_mAP``); here that dAP is NaN (null in
    metrics.json), the others 0. (2) A Loc error scored -2: tidecv's best-score search starts at
    -1 and never records it (``BestGTMatch``: KeyError 'best_id'); here it is the object's best
    error, so fixing Loc makes it a true positive: dAP 100."""
    cases = [(ONE_IMAGE, [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [1, 1, 5, 5]}], ZeroDivisionError),
             ({**ONE_IMAGE, "annotations": ONE_OBJECT},
              [{"image_id": 1, "category_id": 1, "score": -2.0, "bbox": [0, 0, 10, 30]}], KeyError)]
    for gt_doc, results, failure in cases:
        (tmp_path / "gt.json").write_text(json.dumps(gt_doc))
        (tmp_path / "res.json").write_text(json.dumps(results))
        with pytest.raises(failure):
            reference(tmp_path / "gt.json", tmp_path / "res.json", "bbox")
    gt = ground_truth_from_dict(cases[0][0], iou_types=("bbox",))
    r = tide_errors(gt, detections_from_results(cases[0][1], gt=gt, iou_type="bbox"))
    assert r.ap == 0 and np.isnan(r.main["Bkg"]) and r.as_dict()["main_errors"]["Bkg"] is None
    assert [r.main[n] for n in ERROR_TYPES if n != "Bkg"] == [0] * 5
    gt = ground_truth_from_dict(cases[1][0], iou_types=("bbox",))
    r = tide_errors(gt, detections_from_results(cases[1][1], gt=gt, iou_type="bbox"))
    assert r.ap == 0 and r.main["Loc"] == 100 and r.counts["Loc"] == 1


# --------------------------------------------------------------------------- the command line


def _eval(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)], terminal_width=200)


def test_cli_eval_tide_on_a_results_file(tmp_path):
    gt_path, res_path = DATA / "instances_val2014_100.json", DATA / FIXTURES["bbox"]
    res = _eval("--predictions", res_path, "-a", gt_path, "--out", tmp_path, "--tide", "--no-plots")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.index("Average Recall") < out.index("TIDE bbox (tidecv 1.0.1's AP at IoU 0.50, 0-100): 64.20")
    assert "dAP        22.25    0.23    0.00    0.02    0.00    8.52      6.82     17.68" in out
    doc = json.loads((tmp_path / "metrics.json").read_text())
    tide = doc["tide"]["bbox"]
    assert tide["ap"] == pytest.approx(64.20498881733425, rel=0, abs=ATOL)
    assert tide["counts"] == {"Cls": 83, "Loc": 1, "Both": 0, "Dupe": 1, "Bkg": 0, "Miss": 97}
    assert len(tide["confusion"]["counts"]) == 81 and len(tide["per_category"]) == 80
    plain = tmp_path / "plain"
    assert _eval("--predictions", res_path, "-a", gt_path, "--out", plain, "--no-plots").exit_code == 0
    assert "tide" not in json.loads((plain / "metrics.json").read_text())  # off by default
    assert pq.read_table(plain / "metrics.parquet").equals(pq.read_table(tmp_path / "metrics.parquet"))


def test_cli_eval_tide_on_a_run(tmp_path):
    gt_doc, results = random_case(5, iou_type="segm")
    rng = np.random.default_rng(0)
    for r in results:  # a run's rows carry boxes too
        r["bbox"] = mask_utils.toBbox(r["segmentation"]).tolist()
        r["score"] = float(np.float32(r["score"]))  # as the run's float32 column holds it
    ids = [im["id"] for im in gt_doc["images"]]
    rng.shuffle(ids)
    run = write_run(tmp_path / "run", gt_doc, results, shards=[ids[:5], ids[5:]],
                    model={"name": "m", "has_masks": True, "has_keypoints": False})
    (tmp_path / "gt.json").write_text(json.dumps(gt_doc))
    res = _eval(run, "-a", tmp_path / "gt.json", "--iou-types", "bbox,segm", "--tide", "--no-plots")
    assert res.exit_code == 0, res.output
    assert "TIDE bbox" in res.stdout and "TIDE segm" in res.stdout
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    gt = ground_truth_from_dict(gt_doc, iou_types=("bbox", "segm"))
    for t in ("bbox", "segm"):
        # a run orders an image's detections by instance, as its results were listed
        want = tide_errors(gt, detections_from_results(results, gt=gt, iou_type=t)).as_dict()
        assert doc["tide"][t] == json.loads(json.dumps(want))


def test_cli_eval_tide_refuses_keypoints_only():
    res = _eval("--predictions", DATA / "fce_keypoints_dt.json", "-a", DATA / "fce_keypoints_gt.json",
                "--out", "/nonexistent-never-written", "--tide")
    assert res.exit_code == EXIT_USAGE, res.output
    assert "--tide analyses bbox and segm; the evaluated types are keypoints" in res.output


def test_cli_eval_help_shows_tide_plainly():
    res = CliRunner().invoke(app, ["eval", "--help"], terminal_width=200)
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if "--tide" in ln)
    assert "<bool>" not in line and "TIDE" in line
