"""Export round-trips through pycocotools: results files load with ``COCO.loadRes`` and give
``COCOeval`` exactly our eval's numbers; the COCO dataset loads with ``COCO`` and holds the
run's masks, boxes and keypoints."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from test_render import make_run
from typer.testing import CliRunner

from mrcnn_batch.datasets.shapes import (
    HELDOUT_SEED,
    OKS_SIGMAS,
    TRIANGLE_ID,
    write_dataset,
)
from mrcnn_batch.evaluate.distributed import evaluate_run
from mrcnn_batch.evaluate.groundtruth import load_ground_truth
from mrcnn_batch.evaluate.reference import cocoeval
from mrcnn_batch.export import coco_results, export_run
from mrcnn_batch.run.layout import open_run

TYPES = ("bbox", "segm", "keypoints")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("heldout")
    coco = write_dataset(str(d), seed=HELDOUT_SEED + 1, num_images=8)
    # Perturbed predictions, so that AP is neither 0 nor 1: shift every box, mask and keypoint.
    pred = json.loads(json.dumps(coco))
    rng = np.random.default_rng(0)
    for a in pred["annotations"]:
        dx, dy = rng.integers(-3, 4, size=2)
        a["bbox"] = [a["bbox"][0] + float(dx), a["bbox"][1] + float(dy), a["bbox"][2], a["bbox"][3]]
        m = mask_utils.decode(a["segmentation"])
        m = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
        rle = mask_utils.encode(np.asfortranarray(m))
        a["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        a["area"] = float(m.sum())
        a["keypoints"] = [v + (float(dx) if i % 3 == 0 else float(dy) if i % 3 == 1 else 0.0) if a["num_keypoints"] else 0.0
                          for i, v in enumerate(a["keypoints"])]
    run = make_run(tmp_path_factory.mktemp("run") / "run", pred, d / "images", score=0.8)
    return d, coco, run


def _cocoeval(gt: COCO, dets: list, iou_type: str) -> np.ndarray:
    return np.asarray(cocoeval(gt, dets, iou_type, sigmas=OKS_SIGMAS if iou_type == "keypoints" else None).stats)


def test_results_give_pycocotools_our_numbers(data, tmp_path):
    d, coco, run = data
    written = export_run(run, str(tmp_path))
    assert sorted(Path(w).name for w in written) == [f"results_{t}.json" for t in sorted(TYPES)]
    gt_url = str(d / "annotations.json")
    ours, _ = evaluate_run(run, load_ground_truth(gt_url, iou_types=TYPES), iou_types=TYPES, workers=0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_url)
    for t in TYPES:
        dets = json.loads((tmp_path / f"results_{t}.json").read_text())
        fields = {k for r in dets for k in r}
        assert fields == {"image_id", "category_id", "score", {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[t]}
        ref = _cocoeval(gt, dets, t)
        assert 0.05 < ref[0] < 0.999, (t, ref[0])
        np.testing.assert_array_equal(ref, ours[t].stats, err_msg=t)


def test_export_imports_no_pandas(data, tmp_path):
    # a run's tables read by Parquet's own reader (run.read_table), not pyarrow.dataset, whose
    # import brings pandas (0.2 CPU s, 40 MiB and more)
    import subprocess
    import sys

    _, _, run = data
    code = ("import sys; from mrcnn_batch.export import export_run; "
            "written = export_run(sys.argv[1], sys.argv[2]); print(len(written), 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, run, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(len(TYPES)), "False"]


def test_perfect_predictions_score_one(tmp_path):
    d = tmp_path / "ds"
    coco = write_dataset(str(d), seed=HELDOUT_SEED + 2, num_images=3)
    run = make_run(tmp_path / "run", coco, d / "images")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(d / "annotations.json"))
    for t in TYPES:
        assert _cocoeval(gt, coco_results(open_run(run), iou_type=t), t)[0] == pytest.approx(1.0), t


def test_coco_dataset_round_trips(data, tmp_path):
    d, coco, run = data
    (path,) = export_run(run, str(tmp_path), format="coco", image_root=str((d / "images").as_uri()))
    with contextlib.redirect_stdout(io.StringIO()):
        doc = COCO(path.removeprefix("file://"))
    assert sorted(doc.getImgIds()) == [im["id"] for im in coco["images"]]
    assert [doc.imgs[i]["file_name"] for i in sorted(doc.imgs)] == [im["file_name"] for im in coco["images"]]
    (plain,) = export_run(run, str(tmp_path / "plain"), format="coco", image_root=str(d / "images"))
    assert [im["file_name"] for im in json.loads(Path(plain.removeprefix("file://")).read_text())["images"]] == \
        [im["file_name"] for im in coco["images"]]
    tri = doc.loadCats(TRIANGLE_ID)[0]
    assert tri["keypoints"] == ["apex", "left_base", "right_base"] and tri["skeleton"] == [[1, 2], [2, 3], [3, 1]]
    run_t = open_run(run).read_table("instances").sort_by([("image_id", "ascending"), ("instance_id", "ascending")])
    assert len(doc.anns) == run_t.num_rows
    for ann, row in zip((doc.anns[k] for k in sorted(doc.anns)), run_t.to_pylist()):
        assert (ann["image_id"], ann["category_id"], ann["score"]) == (row["image_id"], row["category_id"], row["score"])
        np.testing.assert_array_equal(doc.annToMask(ann), mask_utils.decode({**row["mask"], "counts": row["mask"]["counts"].encode()}))
        assert ann["bbox"] == pytest.approx(row["bbox"])
        assert ("keypoints" in ann) == (row["category_id"] == TRIANGLE_ID)
        if "keypoints" in ann:
            assert ann["num_keypoints"] == 3 and len(ann["keypoints"]) == 9
    # the dataset reloads as ground truth: every prediction matches itself
    assert cocoeval(doc, coco_results(open_run(run), iou_type="segm"), "segm").stats[0] == pytest.approx(1.0)


def test_cli_export_and_errors(data, tmp_path):
    from mrcnn_batch.cli import app

    _, _, run = data
    res = CliRunner().invoke(app, ["export", run, "--format", "coco-results", "--iou-types", "segm", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir()] == ["results_segm.json"]
    res = CliRunner().invoke(app, ["export", run, "--format", "voc"])
    assert res.exit_code == 2 and "coco-results" in res.output
    res = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a run directory" in " ".join(res.output.split())
    with pytest.raises(ValueError, match="unknown IoU type"):
        coco_results(open_run(run), iou_type="mask")


def test_coco_dataset_names_only_categories_it_declares(data, tmp_path, caplog):
    """A label that is not a declared category (torchvision's 'N/A' placeholders, e.g. 71: the
    run's ``_run.json`` lists only real categories) is left out of coco.json, counted and named;
    the file then imports as COCO ground truth."""
    d, coco, _ = data
    run = make_run(tmp_path / "run", coco, d / "images", score=0.8)
    meta_path = tmp_path / "run" / "_run.json"
    meta = json.loads(meta_path.read_text())
    label = next(a["category_id"] for a in coco["annotations"] if a["category_id"] != TRIANGLE_ID)  # boxes and masks
    meta["model"]["categories"] = [c for c in meta["model"]["categories"] if c["id"] != label]  # a placeholder now
    meta_path.write_text(json.dumps(meta))
    n = sum(a["category_id"] == label for a in coco["annotations"])
    with caplog.at_level("WARNING"):
        (path,) = export_run(run, str(tmp_path / "out"), format="coco")
    doc = json.loads(Path(path.removeprefix("file://")).read_text())
    declared = {c["id"] for c in doc["categories"]}
    assert label not in declared and n > 0
    assert {a["category_id"] for a in doc["annotations"]} <= declared
    assert len(doc["annotations"]) == len(coco["annotations"]) - n
    assert doc["info"]["dropped_detections"]["by_label"] == {str(label): n}
    assert f"{n} detection(s) of label(s) {label} left out of coco.json" in caplog.text
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(path.removeprefix("file://"))
    assert len(gt.getAnnIds()) == len(coco["annotations"]) - n
