"""Evaluating a run directory (Parquet tables written straight from COCO results, no model):
through the API, through Ray over shard groups, through the CLI; refusal of an incomplete run,
``--allow-partial``, ground truth on S3."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from eval_fixtures import (
    CUSTOM_SIGMAS, as_run_results, assert_same_as_pycoco, ensure_ray, float32_threshold_case, pycoco, random_case,
    with_boxes, write_run,
)
from mrcnn_batch.cli import EXIT_INCOMPLETE, EXIT_OK, app
from mrcnn_batch.evaluate import IncompleteRunError
from mrcnn_batch.evaluate.distributed import evaluate_run
from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict, load_ground_truth


def _shards(gt_doc, n, seed=0):
    ids = np.array([im["id"] for im in gt_doc["images"]])
    np.random.default_rng(seed).shuffle(ids)
    return [part.tolist() for part in np.array_split(ids, n)]


@pytest.fixture(scope="module")
def instances_case(tmp_path_factory):
    gt_doc, results = random_case(11, iou_type="segm", n_images=14)
    results = with_boxes(results)
    root = tmp_path_factory.mktemp("run")
    gt_path = root / "gt.json"
    gt_path.write_text(json.dumps(gt_doc))
    run = write_run(root / "run", gt_doc, results, shards=_shards(gt_doc, 4),
                    model={"name": "m", "has_masks": True, "has_keypoints": False})
    return gt_doc, results, gt_path, run


@pytest.mark.parametrize("source", ["run", "results"])
@pytest.mark.parametrize("workers", [0, 2])
def test_matched_in_parts_equals_pycocotools(instances_case, workers, source):
    # a run a shard group at a time, or a results file's detections a part of its images at a
    # time: in this process, or in Ray tasks
    from mrcnn_batch.evaluate.distributed import evaluate_detections
    from mrcnn_batch.evaluate.predictions import detections_from_results

    gt_doc, results, gt_path, run = instances_case
    if workers:
        ensure_ray()
    gt = load_ground_truth(str(gt_path), iou_types=("bbox", "segm"))
    wanted = {t: as_run_results(results, iou_type=t) for t in ("bbox", "segm")}
    if source == "run":
        out, scope = evaluate_run(str(run), gt, iou_types=("bbox", "segm"), workers=workers, shards_per_task=1)
        assert scope.missing_images == 0 and not out["bbox"].partial
    else:
        dets = {t: detections_from_results(r, gt=gt, iou_type=t) for t, r in wanted.items()}
        out = evaluate_detections(dets, gt, workers=workers, images_per_task=4)
    for t in ("bbox", "segm"):
        assert_same_as_pycoco(out[t], pycoco(gt_doc, wanted[t], t))


def test_shard_layout_does_not_change_numbers(instances_case, tmp_path):
    gt_doc, results, gt_path, run = instances_case
    gt = load_ground_truth(str(gt_path), iou_types=("bbox", "segm"))
    ref, _ = evaluate_run(str(run), gt, iou_types=("bbox", "segm"), workers=0)
    for n, seed in ((1, 0), (7, 1), (14, 2)):
        other = write_run(tmp_path / f"r{n}", gt_doc, results, shards=_shards(gt_doc, n, seed))
        got, _ = evaluate_run(str(other), gt, iou_types=("bbox", "segm"), workers=0, shards_per_task=2)
        for t in ("bbox", "segm"):
            np.testing.assert_array_equal(got[t].stats, ref[t].stats)
            np.testing.assert_array_equal(got[t].accumulated.precision, ref[t].accumulated.precision)


def test_failed_images_are_counted_and_evaluated_without_detections(instances_case, tmp_path, caplog):
    gt_doc, results, gt_path, _ = instances_case
    failed = {im["id"] for im in gt_doc["images"][::4]}
    run = write_run(tmp_path / "run", gt_doc, results, shards=_shards(gt_doc, 3), failed=failed)
    gt = load_ground_truth(str(gt_path), iou_types=("bbox",))
    out, scope = evaluate_run(str(run), gt, iou_types=("bbox",), workers=0)
    assert scope.failed_images == len(failed) and f"{len(failed)} processed images failed" in caplog.text
    kept = [r for r in results if r["image_id"] not in failed]
    assert_same_as_pycoco(out["bbox"], pycoco(gt_doc, as_run_results(kept, iou_type="bbox"), "bbox"))


def test_float32_boxes_of_a_run_are_compared_in_float64(tmp_path):
    # a run's tables hold boxes and scores as float32, kept so in memory; their IoUs must still be
    # pycocotools' float64 arithmetic
    gt_doc, results = float32_threshold_case()
    (tmp_path / "gt.json").write_text(json.dumps(gt_doc))
    run = write_run(tmp_path / "run", gt_doc, results, shards=[[1, 2, 3]])
    out, _ = evaluate_run(str(run), load_ground_truth(str(tmp_path / "gt.json"), iou_types=("bbox",)), iou_types=("bbox",),
                          workers=0)
    assert_same_as_pycoco(out["bbox"], pycoco(gt_doc, as_run_results(results, iou_type="bbox"), "bbox"))


def test_mask_areas_come_from_the_masks_where_the_area_column_disagrees(instances_case, tmp_path, caplog):
    """The segm evaluation reads each mask's pixel count from the ``area`` column only once it
    agrees with the masks on a sample; a table whose areas are something else (here the boxes')
    is counted from the masks, with a warning, and the numbers are still pycocotools'."""
    import logging

    gt_doc, results, gt_path, run = instances_case
    boxes = write_run(tmp_path / "boxes", gt_doc, results, shards=_shards(gt_doc, 3), mask_area=False)
    gt = load_ground_truth(str(gt_path), iou_types=("segm",))
    with caplog.at_level(logging.WARNING):
        got, _ = evaluate_run(str(boxes), gt, iou_types=("segm",), workers=0)
    assert "area column differs from the masks' pixel counts" in caplog.text
    assert_same_as_pycoco(got["segm"], pycoco(gt_doc, as_run_results(results, iou_type="segm"), "segm"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate_run(str(run), gt, iou_types=("segm",), workers=0)  # areas as infer writes them
    assert "area column" not in caplog.text


@pytest.mark.parametrize("workers,per_task,unit,units", [(0, None, 8, [[2, 2]]), (0, None, 7, [[1, 2, 1]]),
                                                          (2, 2, 4, [[1, 1], [1, 1]])])
def test_groups_are_read_and_matched_a_unit_of_shards_at_a_time(instances_case, monkeypatch, workers, per_task,
                                                                   unit, units):
    # a group's shards are matched in units of at most _IMAGES_PER_UNIT images (their detections are
    # all a task holds beside its ground truth), each table read once: in this process, where the
    # run is one group, and in each Ray task
    from mrcnn_batch.evaluate import distributed

    gt_doc, results, gt_path, run = instances_case  # 14 images in 4 shards of 4, 4, 3, 3
    monkeypatch.setattr(distributed, "_IMAGES_PER_UNIT", unit)
    matched, real = [], distributed._match
    monkeypatch.setattr(distributed, "_match", lambda gt, dets, setup, t, ids, *a: (
        matched.append((t, ids.tolist())), real(gt, dets, setup, t, ids, *a))[1])
    if workers:
        ensure_ray()
    gt = load_ground_truth(str(gt_path), iou_types=("bbox", "segm"))
    out, scope = evaluate_run(str(run), gt, iou_types=("bbox", "segm"), workers=workers, shards_per_task=per_task)
    got = [distributed._units(shards, scope.shard_images) for shards, _ in scope.groups]
    assert [[len(shards) for shards, _ in g] for g in got] == units
    if not workers:  # (Ray's tasks run in other processes)
        assert matched == [(t, ids.tolist()) for t in ("bbox", "segm") for g in got for _, ids in g]
    for t in ("bbox", "segm"):
        assert_same_as_pycoco(out[t], pycoco(gt_doc, as_run_results(results, iou_type=t), t))


@pytest.mark.parametrize("per_task", [1, 2, 3])
def test_each_group_holds_the_images_of_its_shards(instances_case, tmp_path, per_task):
    # (found from the images sorted by shard once; shards 1 and 4 uncommitted, the rest grouped)
    from mrcnn_batch.evaluate.distributed import run_scope
    from mrcnn_batch.run.layout import open_run

    gt_doc, results, gt_path, _ = instances_case
    shards = _shards(gt_doc, 7, seed=3)
    run = write_run(tmp_path / "run", gt_doc, results, shards=shards, commit=[0, 2, 3, 5, 6])
    gt = load_ground_truth(str(gt_path), iou_types=("bbox",))
    scope = run_scope(open_run(str(run)), gt, allow_partial=True, shards_per_task=per_task, workers=0)
    assert [s for group, _ in scope.groups for s in group] == [0, 2, 3, 5, 6]
    assert all(len(group) <= per_task for group, _ in scope.groups)
    for group, ids in scope.groups:
        assert ids.tolist() == sorted(i for s in group for i in shards[s])
    none = write_run(tmp_path / "none", gt_doc, results, shards=shards, commit=[])
    assert run_scope(open_run(str(none)), gt, allow_partial=True, shards_per_task=per_task, workers=0).groups == ()


@pytest.mark.parametrize("shards_per_task", [None, 1])
def test_keypoint_run_uses_model_sigmas(tmp_path, shards_per_task):
    gt_doc, results = random_case(4, iou_type="keypoints", n_images=10)
    for c in gt_doc["categories"]:
        del c["oks_sigmas"]  # only the model metadata has them
    run = write_run(tmp_path / "run", gt_doc, with_boxes(results), shards=_shards(gt_doc, 3), kind="keypoints",
                    model={"name": "kp", "has_keypoints": True, "oks_sigmas": CUSTOM_SIGMAS, "keypoint_category_id": 3})
    gt = ground_truth_from_dict(gt_doc, iou_types=("keypoints",))
    out, _ = evaluate_run(str(run), gt, iou_types=("keypoints",), workers=0, shards_per_task=shards_per_task)
    assert out["keypoints"].oks_sigmas == {3: CUSTOM_SIGMAS}
    e = pycoco(gt_doc, as_run_results(results, iou_type="keypoints"), "keypoints", sigmas=CUSTOM_SIGMAS)
    assert_same_as_pycoco(out["keypoints"], e)


def test_incomplete_run_refused_and_partial_marked(tmp_path):
    gt_doc, results = random_case(21, iou_type="bbox", n_images=12)
    shards = _shards(gt_doc, 3)
    run = write_run(tmp_path / "run", gt_doc, results, shards=shards, commit=[0, 2])
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt_doc))
    gt = load_ground_truth(str(gt_path))
    with pytest.raises(IncompleteRunError, match="incomplete"):
        evaluate_run(str(run), gt, iou_types=("bbox",), workers=0)

    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(run), "--annotations", str(gt_path), "--iou-types", "bbox", "--workers", "0"])
    assert res.exit_code == EXIT_INCOMPLETE, res.output
    assert not (run / "eval" / "metrics.json").exists()

    res = runner.invoke(app, ["eval", str(run), "-a", str(gt_path), "--iou-types", "bbox", "--workers", "0", "--allow-partial"])
    assert res.exit_code == EXIT_OK, res.output
    assert "PARTIAL" in res.output
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    processed = sorted(shards[0] + shards[2])
    assert doc["partial"] is True and "PARTIAL" in doc["notice"] and doc["missing_images"] == len(shards[1])
    assert doc["num_images"] == len(processed)
    table = pq.read_table(run / "eval" / "metrics.parquet")
    assert all(table["partial"].to_pylist())
    # the partial numbers are pycocotools' on the processed images only
    exported = [r for r in as_run_results(results, iou_type="bbox") if r["image_id"] in set(processed)]
    e = pycoco({**gt_doc, "images": [im for im in gt_doc["images"] if im["id"] in set(processed)]}, exported, "bbox")
    np.testing.assert_allclose(doc["iou_types"]["bbox"]["stats"], e.stats, rtol=0, atol=1e-12)


def test_cli_run_outputs(instances_case, tmp_path):
    gt_doc, results, gt_path, run = instances_case
    out_dir = tmp_path / "metrics"
    res = CliRunner().invoke(app, ["eval", str(run), "-a", str(gt_path), "--workers", "0", "--out", str(out_dir)])
    assert res.exit_code == EXIT_OK, res.output
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in res.output
    names = {p.name for p in out_dir.iterdir()}
    assert {"metrics.json", "metrics.parquet", "pr_bbox.png", "pr_segm.png", "precision_bbox.npz"} <= names
    doc = json.loads((out_dir / "metrics.json").read_text())
    assert set(doc["iou_types"]) == {"bbox", "segm"}  # from the model metadata: has_masks
    for t in ("bbox", "segm"):
        e = pycoco(gt_doc, as_run_results(results, iou_type=t), t)
        assert doc["iou_types"][t]["stats"] == e.stats.tolist()
        assert len(doc["iou_types"][t]["per_category"]) == len(gt_doc["categories"])
    table = pq.read_table(out_dir / "metrics.parquet").to_pylist()
    ap = [r for r in table if r["iou_type"] == "bbox" and r["scope"] == "overall" and r["metric"] == "AP"][0]
    assert ap["value"] == doc["iou_types"]["bbox"]["stats"][0] and ap["stat_index"] == 0
    assert (out_dir / "pr_bbox.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out_dir / "precision_bbox.npz") as npz:  # the accumulated arrays, as pycocotools' eval holds them
        e = pycoco(gt_doc, as_run_results(results, iou_type="bbox"), "bbox")
        for name in ("precision", "recall", "scores"):
            np.testing.assert_array_equal(npz[name], e.eval[name])
        assert npz["iou_thrs"].tolist() == e.params.iouThrs.tolist() and not npz["partial"]


def test_cli_predictions_file_needs_out(tmp_path):
    from eval_fixtures import DATA

    gt, dt = str(DATA / "instances_val2014_100.json"), str(DATA / "instances_val2014_fakebbox100_results.json")
    res = CliRunner().invoke(app, ["eval", "--predictions", dt, "-a", gt])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["eval", "--predictions", dt, "-a", gt, "--out", str(tmp_path), "--workers", "0"])
    assert res.exit_code == EXIT_OK, res.output
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert round(doc["iou_types"]["bbox"]["stats"][0], 4) == 0.5046 and doc["partial"] is False


def test_ground_truth_from_s3(s3, instances_case):
    fs, bucket, options = s3
    gt_doc, results, gt_path, run = instances_case
    fs.put(str(gt_path), f"{bucket}/ann/gt.json")
    gt = load_ground_truth(f"s3://{bucket}/ann/gt.json", iou_types=("bbox",), storage_options=options)
    out, _ = evaluate_run(str(run), gt, iou_types=("bbox",), workers=0)
    assert_same_as_pycoco(out["bbox"], pycoco(gt_doc, as_run_results(results, iou_type="bbox"), "bbox"))


def test_a_run_directory_on_s3(s3, instances_case):
    fs, bucket, options = s3
    gt_doc, results, gt_path, run = instances_case
    fs.put(str(run), f"{bucket}/evalrun", recursive=True)
    gt = load_ground_truth(str(gt_path), iou_types=("bbox", "segm"))
    for shards_per_task in (None, 1):  # (in groups of one shard: eight files read ahead across them)
        out, _ = evaluate_run(f"s3://{bucket}/evalrun", gt, iou_types=("bbox", "segm"), workers=0,
                              storage_options=options, shards_per_task=shards_per_task)
        for t in ("bbox", "segm"):
            assert_same_as_pycoco(out[t], pycoco(gt_doc, as_run_results(results, iou_type=t), t))


# pyarrow's own conversions import pandas (0.2 CPU s, 40 MiB: more than a small evaluation);
# evaluation reads Arrow through mrcnn_batch.arrays instead
WITHOUT_PANDAS = """
import json, sys
from mrcnn_batch.evaluate.distributed import evaluate_detections, evaluate_run
from mrcnn_batch.evaluate.groundtruth import load_ground_truth
from mrcnn_batch.evaluate.predictions import load_results_json
gt_path, run, results, out_dir = sys.argv[1:]
gt = load_ground_truth(gt_path, iou_types=("bbox", "segm"))
out, _ = evaluate_run(run, gt, iou_types=("bbox", "segm"), workers=0)
dets = {t: load_results_json(results, gt=gt, iou_type=t) for t in ("bbox", "segm")}
again = evaluate_detections(dets, gt, workers=0)
from mrcnn_batch.evaluate.outputs import write_outputs
write_outputs(out, out_dir, context={}, plots=False)  # metrics.json / .parquet, the arrays
print(json.dumps({"pandas": "pandas" in sys.modules, "stats": [list(out[t].stats) + list(again[t].stats) for t in out]}))
"""


def test_evaluation_does_not_import_pandas(instances_case, tmp_path):
    import subprocess
    import sys

    _, results, gt_path, run = instances_case
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    done = subprocess.run([sys.executable, "-c", WITHOUT_PANDAS, str(gt_path), str(run), str(results_path), str(tmp_path / "out")],
                          capture_output=True, text=True, check=True)
    got = json.loads(done.stdout.splitlines()[-1])
    assert all(v >= 0 for row in got["stats"] for v in row[:1])  # it evaluated
    assert got["pandas"] is False
    assert (tmp_path / "out" / "metrics.parquet").exists()


def test_cli_on_an_existing_ray_cluster(instances_case, tmp_path):
    """``eval --address`` (as under ``ray job submit``): the matching runs as tasks of that
    cluster (here the session's Ray, joined from another process); the numbers are pycocotools'."""
    import subprocess
    import sys

    import ray

    ensure_ray()
    gt_doc, results, gt_path, run = instances_case
    out_dir = tmp_path / "metrics"
    cmd = [sys.executable, "-m", "mrcnn_batch.cli", "eval", str(run), "-a", str(gt_path), "--workers", "2",
           "--address", ray.get_runtime_context().gcs_address, "--out", str(out_dir), "--no-plots"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    doc = json.loads((out_dir / "metrics.json").read_text())
    for t in ("bbox", "segm"):
        assert doc["iou_types"][t]["stats"] == pycoco(gt_doc, as_run_results(results, iou_type=t), t).stats.tolist()
