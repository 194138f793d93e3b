"""``eval --match-by file_name``: a run planned from a folder of images (ids hashed from the
keys) scored against COCO ground truth by file name gives the numbers of the same images
planned from the COCO JSON (ids from the JSON)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import mrcnn_batch as mb
from mrcnn_batch.cli import EXIT_OK, EXIT_USAGE, app
from mrcnn_batch.datasets.shapes import HELDOUT_SEED, write_dataset


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("byname")
    write_dataset(str(root / "data"), seed=HELDOUT_SEED + 7, num_images=10)
    ann, images = root / "data" / "annotations.json", root / "data" / "images"
    common = dict(model="demo", shard_size=4, batch_size=2)
    by_json = mb.infer(str(ann), str(root / "by_json"), image_root=str(images), **common)
    by_folder = mb.infer(str(images), str(root / "by_folder"), **common)
    assert by_json.complete and by_folder.complete
    return root, ann


def _eval(run, ann, out, *extra):
    return CliRunner().invoke(app, ["eval", str(run), "-a", str(ann), "--workers", "0", "--out", str(out), "--no-plots", *extra])


def test_folder_run_matched_by_file_name_equals_the_json_planned_run(runs):
    root, ann = runs
    folder_ids = set(mb.open_run(str(root / "by_folder")).read_table("images").column("image_id").to_pylist())
    assert not folder_ids & {im["id"] for im in json.loads(ann.read_text())["images"]}  # really other ids

    ref = _eval(root / "by_json", ann, root / "m_json")
    got = _eval(root / "by_folder", ann, root / "m_folder", "--match-by", "file_name")
    assert ref.exit_code == EXIT_OK and got.exit_code == EXIT_OK, ref.output + got.output
    a = json.loads((root / "m_json" / "metrics.json").read_text())
    b = json.loads((root / "m_folder" / "metrics.json").read_text())
    assert b["match_by"] == "file_name"
    for t in ("bbox", "segm", "keypoints"):
        assert a["iou_types"][t]["stats"] == b["iou_types"][t]["stats"], t
    assert a["iou_types"]["bbox"]["stats"][0] > 0.5

    # the same through Ray tasks, each holding only its part of the id map
    from eval_fixtures import ensure_ray

    from mrcnn_batch.evaluate.distributed import evaluate_run
    from mrcnn_batch.evaluate.groundtruth import load_ground_truth

    ensure_ray()
    gt = load_ground_truth(str(ann), iou_types=("bbox", "segm", "keypoints"))
    for workers in (2, 0):  # (and in this process, a shard at a time through the whole id map)
        out, scope = evaluate_run(str(root / "by_folder"), gt, iou_types=("bbox", "segm", "keypoints"), workers=workers,
                                  shards_per_task=1, match_by="file_name")
        assert scope.missing_images == 0 and len(scope.groups) == 3
        for t in ("bbox", "segm", "keypoints"):
            assert out[t].stats.tolist() == a["iou_types"][t]["stats"], (t, workers)


def test_without_match_by_the_error_says_how(runs):
    root, ann = runs
    res = _eval(root / "by_folder", ann, root / "m_plain")
    assert res.exit_code == EXIT_USAGE
    assert "--match-by file_name" in " ".join(res.output.split())


def test_names_that_cannot_be_paired_are_refused(runs, tmp_path):
    root, ann = runs
    doc = json.loads(ann.read_text())
    doc["images"][1]["file_name"] = doc["images"][0]["file_name"]
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(doc))
    res = _eval(root / "by_folder", twice, tmp_path / "m1", "--match-by", "file_name")
    assert res.exit_code == EXIT_USAGE and "is used by images" in " ".join(res.output.split())

    doc = json.loads(ann.read_text())
    doc["images"][2]["file_name"] = "elsewhere.png"
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(doc))
    res = _eval(root / "by_folder", renamed, tmp_path / "m2", "--match-by", "file_name")
    assert res.exit_code == EXIT_USAGE and "absent from the ground truth" in " ".join(res.output.split())

    res = CliRunner().invoke(app, ["eval", "--predictions", str(ann), "-a", str(ann), "--out", str(tmp_path), "--match-by", "file_name"])
    assert res.exit_code == EXIT_USAGE and "--match-by applies to a run" in " ".join(res.output.split())
