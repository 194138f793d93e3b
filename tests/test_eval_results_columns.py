"""A results file of boxes or keypoints read into NumPy columns: no pyarrow imported, and values
that are all float32 (a run's own export) held as float32, evaluated as pycocotools does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from eval_fixtures import (
    CUSTOM_SIGMAS,
    as_run_results,
    assert_same_as_pycoco,
    float32_threshold_case,
    pycoco,
    random_case,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_batch.evaluate import jsonio
from mrcnn_batch.evaluate.distributed import evaluate_detections
from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict
from mrcnn_batch.evaluate.predictions import load_results_json, narrowed

compiled = pytest.mark.skipif(jsonio._results is None, reason="the compiled results reader was not built")


def test_narrowed_keeps_float32_only_where_every_value_is_one():
    exact = np.array([0.5, 1.25, 3.0, float(np.float32(0.1)), -2.0**-140, 0.0])
    got = narrowed(exact, block=4)
    assert got.dtype == np.float32 and np.array_equal(got.astype(np.float64), exact)
    for last in (0.1, 1e300, np.nan):  # not a float32, beyond its range, NaN: the float64 values as they are
        wide = np.append(exact, last)
        assert narrowed(wide, block=4) is wide
    boxes = exact[:4].reshape(1, 4)
    assert narrowed(boxes).shape == (1, 4)
    assert narrowed(np.zeros(0)).dtype == np.float32
    run = np.ones(3, np.float32)
    assert narrowed(run) is run


@pytest.mark.parametrize("iou_type", ["bbox", "keypoints"])
@pytest.mark.parametrize("exported", [True, False])
def test_results_file_evaluates_as_pycocotools_whether_held_as_float32_or_not(tmp_path, iou_type, exported):
    gt_doc, results = random_case(11, iou_type=iou_type)
    if exported:  # float32 values, as a run's export writes them
        results = as_run_results(results, iou_type=iou_type)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    gt = ground_truth_from_dict(gt_doc, iou_types=(iou_type,))
    dets = load_results_json(str(path), gt=gt, iou_type=iou_type)
    held = dets.bbox if iou_type == "bbox" else dets.kp_values
    assert held.dtype == (np.float32 if exported else np.float64)
    out = evaluate_detections({iou_type: dets}, gt, workers=0)
    sigmas = CUSTOM_SIGMAS if iou_type == "keypoints" else None
    assert_same_as_pycoco(out[iou_type], pycoco(gt_doc, results, iou_type, sigmas=sigmas))


def test_float32_boxes_of_a_results_file_are_compared_in_float64(tmp_path):
    # read from a results file, the boxes of the float32 threshold case are held as float32 and
    # computed with in float64
    gt_doc, results = float32_threshold_case()
    (tmp_path / "r.json").write_text(json.dumps(results))
    gt = ground_truth_from_dict(gt_doc, iou_types=("bbox",))
    dets = load_results_json(str(tmp_path / "r.json"), gt=gt, iou_type="bbox")
    assert dets.bbox.dtype == np.float32
    out = evaluate_detections({"bbox": dets}, gt, workers=0)
    assert_same_as_pycoco(out["bbox"], pycoco(gt_doc, results, "bbox"))


WITHOUT_PYARROW = """
import json, sys
from mrcnn_batch.evaluate.distributed import evaluate_detections
from mrcnn_batch.evaluate.groundtruth import load_ground_truth
from mrcnn_batch.evaluate.predictions import load_results_json
gt_path, results, iou_type = sys.argv[1:]
gt = load_ground_truth(gt_path, iou_types=(iou_type,))
out = evaluate_detections({iou_type: load_results_json(results, gt=gt, iou_type=iou_type)}, gt, workers=0)
print(json.dumps({"pyarrow": "pyarrow" in sys.modules, "stats": list(out[iou_type].stats)}))
"""


@compiled
@pytest.mark.parametrize("iou_type", ["bbox", "keypoints"])
def test_a_results_file_of_boxes_or_keypoints_is_evaluated_without_pyarrow(tmp_path, iou_type):
    # pyarrow takes 27 MiB and 0.1 CPU s to import: more than such an evaluation of 5,000 images
    gt_doc, results = random_case(5, iou_type=iou_type)
    (tmp_path / "gt.json").write_text(json.dumps(gt_doc))
    (tmp_path / "r.json").write_text(json.dumps(results))
    done = subprocess.run([sys.executable, "-c", WITHOUT_PYARROW, str(tmp_path / "gt.json"), str(tmp_path / "r.json"), iou_type],
                          capture_output=True, text=True, check=True)
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["pyarrow"] is False
    sigmas = CUSTOM_SIGMAS if iou_type == "keypoints" else None
    np.testing.assert_allclose(got["stats"], pycoco(gt_doc, results, iou_type, sigmas=sigmas).stats, rtol=0, atol=1e-12)


floats = st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),  # float32 exactly
                   st.floats(allow_nan=False, allow_infinity=False))


@compiled
@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(floats, min_size=3, max_size=9).filter(lambda v: len(v) % 3 == 0), min_size=1, max_size=8),
       st.sampled_from(["bbox", "keypoints"]), st.integers(1, 400))
def test_the_compiled_reader_holds_values_as_float32_exactly_where_all_are_float32(lists, field, chunk):
    # read in pieces of any size: values already moved as float32 are widened back where a later
    # piece holds one that is not a float32
    if field == "bbox":
        lists = [(v * 2)[:4] for v in lists]
    results = [{"image_id": 1, "category_id": 1, "score": 0.5, field: v} for v in lists]
    data = json.dumps(results).encode()
    columns = jsonio.compiled_results(data, chunk=chunk)
    at, values = getattr(columns, field)
    flat = [x for v in lists for x in v]
    all32 = all(abs(x) <= float(np.finfo(np.float32).max) and float(np.float32(x)) == x for x in flat)
    assert values.dtype == (np.float32 if all32 else np.float64)
    assert values.astype(np.float64).tolist() == flat  # the same numbers either way
    assert np.diff(at).tolist() == [len(v) for v in lists] and at[0] == 0
    assert columns.table().equals(jsonio.results_table(data))  # (Arrow's table: float64 lists)


@compiled
@pytest.mark.parametrize("field", ["bbox", "keypoints"])
def test_float32_values_already_moved_are_widened_back_where_a_later_piece_holds_another(field):
    values = [[0.5 * i, 1.25, 2.0, 3.0] for i in range(40)] + [[0.1, 1.0, 2.0, 3.0]] + [[7.5, 1.0, 2.0, 3.0]]
    if field == "keypoints":
        values = [v[:3] for v in values]
    results = [{"image_id": i, "category_id": 1, "score": 0.5, field: v} for i, v in enumerate(values)]
    data = json.dumps(results).encode()
    for chunk in (64, 1000, len(data) + 1):  # many pieces before the value that is not a float32, or one
        at, got = getattr(jsonio.compiled_results(data, chunk=chunk), field)
        assert got.dtype == np.float64 and got.tolist() == [x for v in values for x in v], chunk
        assert np.diff(at).tolist() == [len(v) for v in values]
    at, got = getattr(jsonio.compiled_results(json.dumps(results[:40]).encode(), chunk=64), field)
    assert got.dtype == np.float32 and got.tolist() == [x for v in values[:40] for x in v]
