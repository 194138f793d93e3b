"""Bad ground truth and bad predictions: a clear error naming the problem (or pycocotools'
documented handling, where it has one)."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from mrcnn_batch.cli import app
from mrcnn_batch.evaluate import COCOEvaluator, EvalInputError, load_ground_truth
from mrcnn_batch.evaluate.errors import IncompleteRunError
from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict
from mrcnn_batch.evaluate.predictions import detections_from_results

GT = {
    "images": [{"id": 1, "height": 20, "width": 30}, {"id": 2, "height": 20, "width": 30}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "p", "keypoints": ["x", "y"]}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0,
         "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [2, 2, 5, 5], "area": 25, "iscrowd": 0,
         "segmentation": [[2, 2, 7, 2, 7, 7]], "keypoints": [3, 3, 2, 4, 4, 2], "num_keypoints": 2},
    ],
}


def _gt(edit):
    doc = copy.deepcopy(GT)
    edit(doc)
    return doc


def _set(path, value):
    def edit(doc):
        obj = doc
        for k in path[:-1]:
            obj = obj[k]
        if value is KeyError:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return edit


BAD_GT = {
    "not an object": (lambda d: d.clear(), "missing or non-list 'images'"),
    "duplicate annotation id": (_set(["annotations", 1, "id"], 1), "annotation ids are not unique"),
    "duplicate image id": (_set(["images", 1, "id"], 1), "image ids are not unique"),
    "duplicate category id": (_set(["categories", 1, "id"], 1), "category ids are not unique"),
    "unknown image": (_set(["annotations", 0, "image_id"], 9), "image_id 9 is not in 'images'"),
    "unknown category": (_set(["annotations", 0, "category_id"], 9), "category_id 9 is not in 'categories'"),
    "missing area": (_set(["annotations", 0, "area"], KeyError), "'area' missing"),
    "missing iscrowd": (_set(["annotations", 0, "iscrowd"], KeyError), "'iscrowd' missing"),
    "bad bbox": (_set(["annotations", 0, "bbox"], [1, 2, 3]), "'bbox' must be"),
    "string id": (_set(["annotations", 0, "id"], "7"), "'id' missing or not an integer"),
}


@pytest.mark.parametrize("name", list(BAD_GT))
def test_bad_ground_truth(name):
    edit, message = BAD_GT[name]
    with pytest.raises(EvalInputError, match=message):
        ground_truth_from_dict(_gt(edit), iou_types=("bbox",), source="gt.json")


@pytest.mark.parametrize("edit,message", [
    (_set(["annotations", 1, "keypoints"], [3, 3, 2]), "1 keypoints, category 2 \\(p\\) declares 2"),
    (_set(["annotations", 1, "num_keypoints"], KeyError), "'num_keypoints' missing"),
    (_set(["categories", 1, "oks_sigmas"], [0.1]), "'oks_sigmas' must be one number per keypoint"),
])
def test_bad_keypoint_ground_truth(edit, message):
    with pytest.raises(EvalInputError, match=message):
        ground_truth_from_dict(_gt(edit), iou_types=("keypoints",))


def test_segm_needs_image_size():
    with pytest.raises(EvalInputError, match="lacks integer 'height'/'width'"):
        ground_truth_from_dict(_gt(_set(["images", 0, "height"], KeyError)), iou_types=("segm",))


def test_keypoints_without_sigmas_for_unusual_count():
    gt = ground_truth_from_dict(GT, iou_types=("keypoints",))
    with pytest.raises(EvalInputError, match="no OKS sigmas for keypoint category 2"):
        COCOEvaluator(gt, iou_types=("keypoints",))
    COCOEvaluator(gt, iou_types=("keypoints",), kpt_sigmas=[0.1, 0.2])  # given explicitly: fine


BOX = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}
BAD_PRED = {
    "not a list": ({"a": 1}, "bbox", "expected a JSON list"),
    "unknown image": ([{**BOX, "image_id": 5}], "bbox", "image ids are not in the ground truth"),
    "unknown category": ([{**BOX, "category_id": 5}], "bbox", "category ids \\[5\\] are not in the ground truth"),
    "missing score": ([{k: v for k, v in BOX.items() if k != "score"}], "bbox", "'score' missing"),
    "nan score": ([{**BOX, "score": float("nan")}], "bbox", "'score' missing or not a finite"),
    "no fields": ([{"image_id": 1, "category_id": 1, "score": 1}], "bbox", "no 'bbox', 'segmentation' or 'keypoints'"),
    "later box missing": ([BOX, {"image_id": 1, "category_id": 1, "score": 1}], "bbox", "results\\[1\\]: 'bbox' missing"),
    "bad segm": ([{"image_id": 1, "category_id": 1, "score": 1, "segmentation": "abc"}], "segm",
                 "must be a compressed RLE"),
    "mask size": ([{"image_id": 1, "category_id": 1, "score": 1, "segmentation": {"size": [5, 5], "counts": "05"}}],
                  "segm", "mask size \\[5, 5\\] differs from image 1's \\[20, 30\\]"),
    "keypoint triplets": ([{"image_id": 2, "category_id": 2, "score": 1, "keypoints": [1, 2]}], "keypoints",
                          "not \\[x, y, v\\] triplets"),
}


@pytest.mark.parametrize("name", list(BAD_PRED))
def test_bad_predictions(name):
    preds, iou_type, message = BAD_PRED[name]
    gt = ground_truth_from_dict(GT, iou_types=(iou_type,))
    with pytest.raises(EvalInputError, match=message):
        detections_from_results(preds, gt=gt, iou_type=iou_type, source="dt.json")


def test_wrong_keypoint_count_in_predictions():
    gt = ground_truth_from_dict(GT, iou_types=("keypoints",))
    ev = COCOEvaluator(gt, iou_types=("keypoints",), kpt_sigmas=[0.1, 0.2])
    with pytest.raises(EvalInputError, match="detections of category 2 have 3 keypoints, the OKS sigmas 2"):
        ev.process([{"image_id": 2, "category_id": 2, "score": 1, "keypoints": [3, 3, 2] * 3}], image_ids=[1, 2])
    # a second detection of the right count first, the wrong one far away (no pair of it would be scored)
    ev = COCOEvaluator(gt, iou_types=("keypoints",), kpt_sigmas=[0.1, 0.2])
    with pytest.raises(EvalInputError, match="detections of category 2 have 3 keypoints, the OKS sigmas 2"):
        ev.process([{"image_id": 2, "category_id": 2, "score": 1, "keypoints": [3, 3, 2] * 2},
                    {"image_id": 2, "category_id": 2, "score": 0.5, "keypoints": [1e6, 1e6, 2] * 3}], image_ids=[1, 2])


def test_polygon_and_uncompressed_segm_results_are_rasterised():
    gt = ground_truth_from_dict(GT, iou_types=("segm",))
    preds = [{"image_id": 1, "category_id": 1, "score": 1, "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]},
             {"image_id": 1, "category_id": 1, "score": 1, "segmentation": {"size": [20, 30], "counts": [25, 5, 570]}}]
    dets = detections_from_results(preds, gt=gt, iou_type="segm")
    assert dets.area.tolist() == [25.0, 5.0]


def test_unknown_categories_can_be_dropped():
    gt = ground_truth_from_dict(GT, iou_types=("bbox",))
    dets = detections_from_results([BOX, {**BOX, "category_id": 5}], gt=gt, iou_type="bbox", unknown_categories="drop")
    assert len(dets) == 1


def test_empty_results_score_zero():
    gt = ground_truth_from_dict(GT, iou_types=("bbox",))
    ev = COCOEvaluator(gt, iou_types=("bbox",))
    ev.process([], image_ids=[1, 2])
    assert ev.evaluate()["bbox"].stats[0] == 0


def test_evaluator_refuses_missing_images_unless_partial():
    gt = ground_truth_from_dict(GT, iou_types=("bbox",))
    ev = COCOEvaluator(gt, iou_types=("bbox",))
    ev.process([BOX], image_ids=[1])
    with pytest.raises(IncompleteRunError, match="1 of the 2 ground-truth images were not processed"):
        ev.evaluate()
    assert ev.evaluate(allow_partial=True)["bbox"].partial
    with pytest.raises(EvalInputError, match="already processed"):
        ev.process([BOX], image_ids=[1])


def test_malformed_json_file_and_cli_exit_code(tmp_path):
    bad = tmp_path / "gt.json"
    bad.write_text('{"images": [')
    with pytest.raises(EvalInputError, match="not valid JSON"):
        load_ground_truth(str(bad))
    with pytest.raises(EvalInputError, match="no such file"):
        load_ground_truth(str(tmp_path / "missing.json"))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GT))
    preds = tmp_path / "dt.json"
    preds.write_text(json.dumps([{**BOX, "image_id": 77}]))
    res = CliRunner().invoke(app, ["eval", "--predictions", str(preds), "-a", str(good), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "image ids are not in the ground truth" in " ".join(res.output.split())


def test_short_polygons_pycocotools_can_rasterise_are_kept_exactly():
    """Only what pycocotools cannot rasterise is refused (a first polygon of 4 numbers or fewer);
    a first polygon of 5 numbers and short polygons after it give pycocotools' own numbers."""
    from eval_fixtures import assert_same_as_pycoco, pycoco

    doc = copy.deepcopy(GT)
    doc["annotations"][0]["segmentation"] = [[1, 1, 6, 1, 6, 6, 1, 6], [2, 2], [], [3, 3, 9, 9]]
    doc["annotations"][1]["segmentation"] = [[2, 2, 9, 2, 9], [2, 2, 7, 2, 7, 7]]
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects([[1, 1, 7, 1, 7, 7, 1, 7]], 20, 30))
    rle = {"size": rle["size"], "counts": rle["counts"].decode()}
    preds = [{"image_id": i, "category_id": c, "score": s, "segmentation": rle}
             for i, c, s in ((1, 1, 0.9), (2, 2, 0.8), (2, 2, 0.3))]
    gt = ground_truth_from_dict(doc, iou_types=("segm",))
    ev = COCOEvaluator(gt, iou_types=("segm",))
    ev.process(detections_from_results(preds, gt=gt, iou_type="segm"), image_ids=[1, 2])
    assert_same_as_pycoco(ev.evaluate()["segm"], pycoco(doc, preds, "segm"))


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bulk_checked_ground_truth_equals_itemwise(monkeypatch, iou_type, seed):
    """Well-formed annotations are read in bulk; the result is what the itemwise loop reads."""
    import numpy as np
    from eval_fixtures import random_case

    from mrcnn_batch.evaluate import groundtruth

    doc, _ = random_case(seed, iou_type=iou_type)
    doc["annotations"][0]["iscrowd"] = True  # a bool, as the loop takes it
    doc["annotations"][1]["bbox"] = [int(v) for v in doc["annotations"][1]["bbox"]]
    assert groundtruth._fast_annotations(doc["annotations"], np.array([i["id"] for i in doc["images"]]),
                                         groundtruth._categories(doc["categories"], "t"), masks=iou_type == "segm",
                                         keypoints=iou_type == "keypoints")
    bad = copy.deepcopy(doc)
    bad["annotations"][2]["image_id"] = 10**6  # not an image: the bulk check declines, the loop names it
    with pytest.raises(EvalInputError, match="is not in 'images'"):
        ground_truth_from_dict(bad, iou_types=(iou_type,))
    bulk = ground_truth_from_dict(copy.deepcopy(doc), iou_types=(iou_type,))
    monkeypatch.setattr(groundtruth, "_fast_annotations", lambda *a, **k: None)
    itemwise = ground_truth_from_dict(copy.deepcopy(doc), iou_types=(iou_type,))
    for f in ("ann_id", "ann_image_id", "ann_category_id", "area", "iscrowd", "bbox", "num_keypoints", "kp_offsets",
              "kp_values"):
        np.testing.assert_array_equal(getattr(bulk, f), getattr(itemwise, f), err_msg=f)
        assert getattr(bulk, f).dtype == getattr(itemwise, f).dtype, f
    assert bulk.segmentation == itemwise.segmentation


@pytest.mark.parametrize("case", ["bbox", "keypoints", "segm", "segm with boxes"])
def test_results_read_as_a_table_give_the_detections_of_the_parsed_list(tmp_path, case):
    """A plain results file is read by Arrow's JSON reader; the detections are those of the
    parsed list, with extra fields, ints among floats and the compact separator too."""
    import numpy as np
    import pyarrow as pa
    from eval_fixtures import random_case, with_boxes

    from mrcnn_batch.evaluate import jsonio
    from mrcnn_batch.evaluate.jsonio import read_results, results_table
    from mrcnn_batch.evaluate.predictions import load_results_json

    iou_type = case.split()[0]
    gt_doc, results = random_case(3, iou_type=iou_type)
    results = with_boxes(results) if case == "segm with boxes" else results
    results[0]["id"], results[1]["score"] = 7, 1  # a field evaluation does not read; an integer score
    gt = ground_truth_from_dict(gt_doc, iou_types=(iou_type,))
    for sep in (", ", ","):
        path = tmp_path / f"r{len(sep)}.json"
        path.write_text(json.dumps(results, separators=(sep, ": ")))
        doc = read_results(str(path))
        if jsonio._results is not None and iou_type in ("bbox", "keypoints"):  # NumPy columns, no Arrow
            assert isinstance(doc, jsonio.ResultColumns)
            assert doc.first() == {k: results[0][k] for k in ("image_id", "category_id", "score", iou_type)}
        table = doc.table() if isinstance(doc, jsonio.ResultColumns) else doc
        assert isinstance(table, pa.Table)
        assert results_table(path.read_bytes(), piece=300).equals(table)  # cut into pieces of ~300 bytes
        if jsonio._results is not None:  # the compiled reader's table (read_results's), Arrow's, equal
            assert results_table(path.read_bytes()).equals(jsonio.compiled_results_table(path.read_bytes()))
        got = load_results_json(str(path), gt=gt, iou_type=iou_type)
        ref = detections_from_results(json.loads(path.read_text()), gt=gt, iou_type=iou_type)
        for f in ("image_id", "category_id", "score", "area", "bbox", "kp_offsets", "kp_values", "segm_size"):
            np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
        if iou_type == "segm":
            assert got.segm_counts.to_pylist() == ref.segm_counts.to_pylist()


@pytest.mark.parametrize("text,compiled_takes", [
    ('[{"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [1, 2, 3, 4], "note": "}, {"}]', True),  # a cut in a string
    ('[{"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [1, 2, 3, 4]}, {"image_id": 1, "category_id": 2, "score": 0.5}]', False),
    ('[{"image_id": 1.0, "category_id": 2, "score": 0.5, "bbox": [1, 2, 3, 4]}]', False),
    ('[{"image_id": 1, "category_id": 2, "score": true, "bbox": [1, 2, 3, 4]}]', False),
    ('[{"image_id": 1, "category_id": 2, "score": 0.5,\n "bbox": [1, 2, 3, 4]}]', True),
    ('[{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": [[1, 2, 3, 4, 5, 6]]}]', False),  # a polygon
    ('[{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": {"size": [2, 2], "counts": [0, 4]}}]', False),
    ('[]', False),
])
def test_results_not_plain_enough_for_a_table_are_parsed_as_before(tmp_path, text, compiled_takes):
    # Arrow's reader takes none of these; the compiled one (where built) the valid plain ones,
    # with the detections of the parsed list
    import numpy as np

    from mrcnn_batch.evaluate import jsonio
    from mrcnn_batch.evaluate.jsonio import read_results, results_table
    from mrcnn_batch.evaluate.predictions import load_results_json

    assert results_table(text.encode()) is None
    path = tmp_path / "r.json"
    path.write_text(text)
    doc = read_results(str(path))
    if compiled_takes and jsonio._results is not None:
        assert isinstance(doc, jsonio.ResultColumns)
        gt = ground_truth_from_dict(GT, iou_types=("bbox",))
        got = load_results_json(str(path), gt=gt, iou_type="bbox", unknown_categories="ignore")
        ref = detections_from_results(json.loads(text), gt=gt, iou_type="bbox", unknown_categories="ignore")
        assert len(got.score) == 1
        for f in ("image_id", "category_id", "score", "area", "bbox"):
            np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
    else:
        assert isinstance(doc, list)


def test_a_nan_score_read_as_a_table_is_refused_as_before(tmp_path):
    from mrcnn_batch.evaluate.predictions import load_results_json

    path = tmp_path / "r.json"
    path.write_text('[{"image_id": 1, "category_id": 1, "score": NaN, "bbox": [1, 2, 3, 4]}]')
    gt = ground_truth_from_dict(GT, iou_types=("bbox",))
    with pytest.raises(EvalInputError, match=r"results\[0\]: 'score' missing or not a finite number"):
        load_results_json(str(path), gt=gt, iou_type="bbox")


def test_a_mask_of_another_size_read_as_a_table_is_refused_as_before(tmp_path):
    from mrcnn_batch.evaluate.jsonio import read_results
    from mrcnn_batch.evaluate.predictions import load_results_json

    path = tmp_path / "r.json"
    path.write_text('[{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": {"size": [5, 5], "counts": "05"}}]')
    assert not isinstance(read_results(str(path)), list)  # the table, then the itemwise check
    gt = ground_truth_from_dict(GT, iou_types=("segm",))
    with pytest.raises(EvalInputError, match=r"mask size \[5, 5\] differs from image 1's \[20, 30\]"):
        load_results_json(str(path), gt=gt, iou_type="segm")
