"""``boundary`` (Boundary IoU) equals faster-coco-eval 1.8.0's ``iouType="boundary"``: the boundary
region against a direct definition and the reference's own function, every stat and precision
array against its COCOeval, in-process, over shards, on Ray and through the CLI."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
from eval_fixtures import ensure_ray, load, random_case, write_run
from pycocotools import mask as mask_utils

from mrcnn_batch.evaluate import COCOEvaluator, EvalParams
from mrcnn_batch.evaluate.boundary import boundary_region, dilation_pixels
from mrcnn_batch.evaluate.distributed import evaluate_detections, evaluate_run
from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict
from mrcnn_batch.evaluate.predictions import detections_from_results

fce = pytest.importorskip("faster_coco_eval")
fce_mask = pytest.importorskip("faster_coco_eval.mask_api_new_cpp")


def reference(gt: dict, results: list, *, ratio: float = 0.02):
    """faster-coco-eval's COCOeval with iouType="boundary", evaluated, accumulated, summarised."""
    quiet = logging.getLogger("quiet").debug
    coco_gt = fce.COCO(copy.deepcopy(gt), print_function=quiet)
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    ev = fce.COCOeval_faster(coco_gt, coco_dt, iouType="boundary", print_function=quiet,
                             boundary_dilation_ratio=ratio)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def assert_same(result, e) -> None:
    np.testing.assert_allclose(result.stats, e.stats[:12], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.accumulated.precision, e.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.accumulated.recall, e.eval["recall"], rtol=0, atol=1e-12)


def ours(gt: dict, results: list, iou_types=("segm", "boundary"), *, ratio: float | None = None, **kw):
    g = ground_truth_from_dict(gt, iou_types=iou_types)
    dets = {t: detections_from_results(copy.deepcopy(results), gt=g, iou_type=t) for t in iou_types}
    params = None if ratio is None else {"boundary": EvalParams(iou_type="boundary", boundary_dilation_ratio=ratio)}
    return evaluate_detections(dets, g, params=params, **kw)


# --------------------------------------------------------------------------- the boundary region


def direct_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Mask pixels whose nearest background pixel (the outside of the image counts as
    background) is within Chebyshev distance d: pixel by pixel."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), bool)
    padded[1:-1, 1:-1] = mask
    by, bx = np.nonzero(~padded)
    out = np.zeros_like(mask, bool)
    for y, x in zip(*np.nonzero(mask)):
        out[y, x] = np.min(np.maximum(np.abs(by - (y + 1)), np.abs(bx - (x + 1)))) <= d
    return out


def random_mask(rng, h: int, w: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:
        return rng.random((h, w)) < rng.uniform(0.5, 0.98)
    m = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 4))):
        y, x = rng.integers(0, h), rng.integers(0, w)
        m[y:y + rng.integers(1, h + 1), x:x + rng.integers(1, w + 1)] = True
    if kind == 2:
        m &= rng.random((h, w)) < 0.95
    return m


def test_boundary_region_is_the_distance_definition():
    rng = np.random.default_rng(7)
    for _ in range(150):
        h, w, d = int(rng.integers(1, 24)), int(rng.integers(1, 24)), int(rng.integers(1, 6))
        m = random_mask(rng, h, w)
        np.testing.assert_array_equal(boundary_region(m, d), direct_boundary(m, d), err_msg=f"{h}x{w} d={d}")


def test_boundary_region_is_the_references():
    """faster-coco-eval's own toBoundary (the one its evaluation uses), wherever height > 2d."""
    rng = np.random.default_rng(3)
    for _ in range(150):
        ratio = float(rng.choice([0.02, 0.05, 0.1]))
        h, w = int(rng.integers(3, 90)), int(rng.integers(1, 90))
        d = dilation_pixels(h, w, ratio)
        if h <= 2 * d:
            continue  # the reference's erosion wraps into the next column there (boundary.py)
        m = random_mask(rng, h, w)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        ref = mask_utils.decode(fce_mask.toBoundary([rle], ratio)[0]).astype(bool)
        np.testing.assert_array_equal(boundary_region(m, d), ref, err_msg=f"{h}x{w} ratio={ratio}")


@pytest.mark.parametrize(("h", "w", "ratio", "d"), [
    (30, 40, 0.05, 2),  # 2.5 -> 2
    (30, 40, 0.07, 3),  # 3.5000000000000004 -> 3 (the reference's -1e-10)
    (30, 40, 0.09, 4),  # 4.5 -> 4
    (30, 40, 0.06, 3),
    (30, 40, 0.001, 1),  # at least one pixel
    (480, 640, 0.02, 16),
])
def test_dilation_is_the_references(h, w, ratio, d):
    assert dilation_pixels(h, w, ratio) == d
    full = mask_utils.encode(np.ones((h, w), np.uint8, order="F"))
    area = int(mask_utils.area(fce_mask.toBoundary([full], ratio)[0]))
    assert area == h * w - max(h - 2 * d, 0) * max(w - 2 * d, 0)


# --------------------------------------------------------------------------- whole evaluations


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """The demo's synthetic held-out set and its annotations shifted by up to 3 px (test_export)."""
    from mrcnn_batch.datasets.shapes import write_dataset

    coco = write_dataset(str(tmp_path_factory.mktemp("heldout")), seed=20_001, num_images=8)
    rng = np.random.default_rng(0)
    results = []
    for a in coco["annotations"]:
        dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
        m = np.roll(mask_utils.decode(a["segmentation"]), (dy, dx), axis=(0, 1))
        rle = mask_utils.encode(np.asfortranarray(m))
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
                        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()}})
    return coco, results


def test_heldout_equals_faster_coco_eval(heldout):
    coco, results = heldout
    r = ours(coco, results, workers=0, images_per_task=3)
    assert_same(r["boundary"], reference(coco, results))
    segm, boundary = r["segm"].stats[0], r["boundary"].stats[0]
    assert 0.05 < boundary < segm - 0.02, (segm, boundary)  # the boundary is harder to hit


def test_other_dilation_ratio(heldout):
    coco, results = heldout
    r = ours(coco, results, ("boundary",), ratio=0.05)["boundary"]
    assert_same(r, reference(coco, results, ratio=0.05))
    assert r.accumulated.params.as_dict()["boundary_dilation_ratio"] == 0.05
    assert not np.allclose(r.stats, ours(coco, results, ("boundary",))["boundary"].stats)


def coco_excerpt() -> tuple[dict, list]:
    """cocoapi's 100 val2014 images (polygons and crowd RLEs) and its fake segm results."""
    return load("instances_val2014_100.json"), load("instances_val2014_fakesegm100_results.json")


def test_coco_excerpt_equals_faster_coco_eval():
    gt, results = coco_excerpt()
    assert any(a["iscrowd"] for a in gt["annotations"]) and any(isinstance(a["segmentation"], list) for a in gt["annotations"])
    r = ours(gt, results, ("boundary",))["boundary"]
    assert_same(r, reference(gt, results))


@pytest.mark.parametrize("seed", [0, 3])
def test_random_sets_equal_faster_coco_eval(seed):
    """Crowds as uncompressed RLE, ties, empty images, >100 detections in a cell."""
    gt, results = random_case(seed, iou_type="segm")
    assert_same(ours(gt, results, ("boundary",))["boundary"], reference(gt, results))


def test_run_directory_in_process_and_on_ray(heldout, tmp_path):
    coco, results = heldout
    ids = [im["id"] for im in coco["images"]]
    with_box = [{**r, "bbox": mask_utils.toBbox(r["segmentation"]).tolist()} for r in results]
    run = write_run(tmp_path / "run", coco, with_box, shards=[ids[:3], ids[3:5], ids[5:]])
    gt = ground_truth_from_dict(coco, iou_types=("boundary",))
    e = reference(coco, results)
    local, _ = evaluate_run(str(run), gt, iou_types=("boundary",), workers=0)
    assert_same(local["boundary"], e)
    ensure_ray()
    remote, _ = evaluate_run(str(run), gt, iou_types=("boundary",), workers=2, shards_per_task=1)
    assert_same(remote["boundary"], e)


def test_evaluator_api_in_batches(heldout):
    coco, results = heldout
    gt = ground_truth_from_dict(coco, iou_types=("boundary",))
    ev = COCOEvaluator(gt, iou_types=("boundary",))
    for ids in np.array_split(gt.image_ids, 3):
        ev.process([r for r in results if r["image_id"] in set(ids.tolist())], image_ids=ids)
    assert_same(ev.evaluate()["boundary"], reference(coco, results))


# --------------------------------------------------------------------------- the command line


def test_cli_writes_boundary_outputs(heldout, tmp_path):
    from typer.testing import CliRunner

    from mrcnn_batch.cli import app

    coco, results = heldout
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    out = tmp_path / "metrics"
    args = ["eval", "--predictions", str(tmp_path / "dt.json"), "-a", str(tmp_path / "gt.json"), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--iou-types", "segm,boundary", "--boundary-dilation-ratio", "0.03"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["iou_types"]) == ["segm", "boundary"]
    assert doc["boundary_dilation_ratio"] == 0.03
    assert doc["iou_types"]["boundary"]["params"]["boundary_dilation_ratio"] == 0.03
    np.testing.assert_allclose(doc["iou_types"]["boundary"]["stats"], reference(coco, results, ratio=0.03).stats[:12],
                               rtol=0, atol=1e-12)
    assert (out / "pr_boundary.png").stat().st_size > 0 and (out / "precision_boundary.npz").exists()
    import pyarrow.parquet as pq

    table = pq.read_table(out / "metrics.parquet")
    assert "boundary" in set(table["iou_type"].to_pylist())

    default = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "default")])
    assert default.exit_code == 0, default.output
    assert "boundary" not in json.loads((tmp_path / "default" / "metrics.json").read_text())["iou_types"]
    bad = CliRunner().invoke(app, [*args, "--iou-types", "boundry"])
    assert bad.exit_code == 2 and "boundary" in bad.output
