"""LVIS federated evaluation against its reference, the ``lvis`` package 0.5.3 (``LVISEval``,
run here on the same files).

The fixture is generated from a seed (ours, nothing copied): images of several sizes; seven
categories, rare, common and frequent; per image a few positive categories with small, medium
and large polygon objects, negative categories, not-exhaustive ones (positive or not), and
categories in neither list; an annotation of area 0; detections near the objects and
anywhere, of every category, with scores on a coarse grid (many ties), and one image with more
than 300 detections, tied across the cut. Compared: all 13 summary numbers, the whole
``precision`` [T,R,K,A] and ``recall`` [T,K,A] arrays, bbox and segm, for results files with a
box (area w*h, as LVISResults derives it) and with masks only (area = the mask's pixels), and
for a run directory (against the results file a run stands for). Tolerance 1e-12: both sides
do the same floating-point operations on the same arrays in the same order, so the
differences are 0; the tolerance only leaves a platform room for last-bit rounding.

lvis 0.5.3 calls ``np.float`` (removed in NumPy 1.24) in ``accumulate``; the tests give NumPy
that alias back (``float``, what it always was) for the reference's run and nothing else.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from eval_fixtures import as_run_results, write_run
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from mrcnn_batch.cli import EXIT_INCOMPLETE, EXIT_USAGE, app
from mrcnn_batch.evaluate import EvalInputError
from mrcnn_batch.evaluate.lvis import (
    STAT_NAMES,
    lvis_evaluate,
    lvis_ground_truth_from_dict,
    lvis_run,
)
from mrcnn_batch.evaluate.predictions import detections_from_results

lvis = pytest.importorskip("lvis")

ATOL = 1e-12
FREQ = {1: "r", 2: "c", 4: "f", 5: "r", 7: "c", 8: "f", 9: "f"}


def _polygon(rng, x, y, w, h) -> list[float]:
    """An irregular octagon inside the box."""
    t = np.linspace(0, 2 * np.pi, 9)[:-1]
    r = rng.uniform(0.75, 1.0, 8)
    px = x + w / 2 + np.cos(t) * r * w / 2
    py = y + h / 2 + np.sin(t) * r * h / 2
    return np.round(np.stack([px, py], 1).ravel(), 1).tolist()


def _rle(poly: list[float], h: int, w: int) -> dict:
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def lvis_case(seed: int, *, n_images: int = 8) -> tuple[dict, list]:
    rng = np.random.default_rng(seed)
    cats = list(FREQ)
    images, anns, results = [], [], []
    for i in range(n_images):
        h, w = int(rng.integers(80, 260)), int(rng.integers(80, 260))
        img_id = 100 + 7 * i
        pos = [int(c) for c in rng.choice(cats, size=int(rng.integers(0, 4)), replace=False)]
        if i == 0:  # every frequency and every area range has objects
            h, w, pos = 240, 250, [1, 2, 4]
        others = [c for c in cats if c not in pos]
        neg = [int(c) for c in rng.choice(others, size=int(rng.integers(0, len(others) - 1)), replace=False)]
        nel = [int(c) for c in rng.choice(cats, size=int(rng.integers(0, 3)), replace=False) if c not in neg]
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.jpg",
                       "neg_category_ids": neg, "not_exhaustive_category_ids": nel})
        objects = []
        for c in pos:
            for n in range(3 if i == 0 else int(rng.integers(1, 4))):
                side = float(rng.choice([6, 14, 25, 40, 70, 120]) if i else (10, 45, 160)[n % 3])
                bw, bh = min(side * rng.uniform(0.7, 1.4), w - 2), min(side * rng.uniform(0.7, 1.4), h - 2)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                poly = _polygon(rng, x, y, bw, bh)
                rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
                area = float(mask_utils.area(rle))
                if area == 0:
                    continue
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": c, "segmentation": [poly],
                             "area": area, "bbox": mask_utils.toBbox(rle).tolist()})
                objects.append((c, x, y, bw, bh))
        if i == 1:  # an annotation without area: left out, and its category is not positive for it
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": 9, "segmentation": [[1, 1, 5, 1, 5, 5]],
                         "area": 0, "bbox": [1, 1, 4, 4]})
        dets = []
        for c, x, y, bw, bh in objects:
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
                dc = c if rng.random() < 0.85 else int(rng.choice(cats))
                dets.append((dc, x + j[0], y + j[1], max(bw + j[2], 2), max(bh + j[3], 2)))
        n_fp = 330 if i == 2 else int(rng.integers(2, 8))
        for _ in range(n_fp):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            dets.append((int(rng.choice(cats)), rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh))
        for k in rng.permutation(len(dets)):
            c, x, y, bw, bh = dets[k]
            x, y = max(x, 0.0), max(y, 0.0)
            bw, bh = min(bw, w - x), min(bh, h - y)
            poly = _polygon(rng, x, y, bw, bh)
            results.append({"image_id": img_id, "category_id": c, "score": float(rng.choice(np.linspace(0.1, 1, 10)).round(2)),
                            "bbox": [round(float(v), 2) for v in (x, y, bw, bh)], "segmentation": _rle(poly, h, w)})
    categories = [{"id": c, "name": f"cat{c}", "frequency": f, "synset": f"cat{c}.n.01"} for c, f in FREQ.items()]
    return {"images": images, "annotations": anns, "categories": categories}, results


def reference(tmp_path, gt: dict, results: list, iou_type: str, monkeypatch):
    """lvis 0.5.3's LVISEval on files, as its README runs it."""
    gt_path, dt_path = tmp_path / "lvis_gt.json", tmp_path / f"lvis_dt_{iou_type}.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(results))
    with monkeypatch.context() as m:
        m.setattr(np, "float", float, raising=False)
        e = lvis.LVISEval(str(gt_path), str(dt_path), iou_type)
        e.run()
    return e


def assert_same_as_lvis(result, e) -> None:
    ref = [e.results[n] for n in STAT_NAMES]
    np.testing.assert_allclose(result.stats, ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.precision, e.eval["precision"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.recall, e.eval["recall"], rtol=0, atol=ATOL)


def _strip(results: list, keep: str) -> list:
    return [{k: v for k, v in r.items() if k not in ({"segmentation"} if keep == "bbox" else {"bbox"})} for r in results]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_type,fields", [("bbox", "bbox"), ("segm", "both"), ("segm", "segm")])
def test_equals_lvis(tmp_path, monkeypatch, seed, iou_type, fields):
    gt, results = lvis_case(seed)
    if fields != "both":
        results = _strip(results, fields)
    e = reference(tmp_path, gt, results, iou_type, monkeypatch)
    lgt = lvis_ground_truth_from_dict(gt, iou_types=(iou_type,))
    dets = detections_from_results(results, gt=lgt.gt, iou_type=iou_type)
    result = lvis_evaluate(lgt, dets)
    assert_same_as_lvis(result, e)
    # the fixture reaches what it is for: every frequency measured, the 300 cut taken
    assert all(result.metrics[k] > -1 for k in ("APr", "APc", "APf", "APs", "APm", "APl"))
    assert len(dets) > result.num_detections


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_run_equals_lvis_on_its_results(tmp_path, monkeypatch, iou_type):
    gt, results = lvis_case(3)
    ids = [im["id"] for im in gt["images"]]
    run = write_run(tmp_path / "run", gt, results, shards=[ids[:3], ids[3:]])
    lgt = lvis_ground_truth_from_dict(gt, iou_types=(iou_type,))
    ours = lvis_run(str(run), lgt, iou_types=(iou_type,))[iou_type]
    assert_same_as_lvis(ours, reference(tmp_path, gt, as_run_results(results, iou_type=iou_type), iou_type, monkeypatch))


def test_cli_writes_lvis_outputs(tmp_path, monkeypatch):
    gt, results = lvis_case(4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "m"
    r = CliRunner().invoke(app, ["eval", "--predictions", str(tmp_path / "res.json"), "-a", str(tmp_path / "gt.json"),
                                 "--out", str(out), "--iou-types", "bbox,segm", "--lvis"])
    assert r.exit_code == 0, r.output
    assert "catIds=  r] =" in r.output
    doc = json.loads((out / "metrics.json").read_text())
    table = pq.read_table(out / "metrics.parquet").to_pylist()
    for t in ("bbox", "segm"):
        e = reference(tmp_path, gt, results, t, monkeypatch)
        assert doc["lvis"][t]["stat_names"] == list(STAT_NAMES)
        np.testing.assert_allclose(doc["lvis"][t]["stats"], [e.results[n] for n in STAT_NAMES], rtol=0, atol=ATOL)
        overall = {row["metric"]: row["value"] for row in table if row["iou_type"] == t and row["scope"] == "overall"}
        assert set(overall) == set(STAT_NAMES)
        npz = np.load(out / f"precision_{t}.npz")
        np.testing.assert_allclose(npz["precision"], e.eval["precision"], rtol=0, atol=ATOL)
    assert doc["iou_types"] == {}


@pytest.mark.parametrize("break_it,message", [
    (lambda gt: gt["images"][0].pop("neg_category_ids"), "neg_category_ids"),
    (lambda gt: gt["categories"][0].update(frequency="x"), "frequency"),
    (lambda gt: gt["annotations"][0].update(ignore=1), "ignore"),
])
def test_not_lvis_ground_truth_is_refused(break_it, message):
    gt, _ = lvis_case(5)
    break_it(gt)
    with pytest.raises(EvalInputError, match=message):
        lvis_ground_truth_from_dict(gt, iou_types=("bbox",))


def test_cli_on_a_run(tmp_path, monkeypatch):
    gt, results = lvis_case(6)
    ids = [im["id"] for im in gt["images"]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    run = write_run(tmp_path / "run", gt, results, shards=[ids[:4], ids[4:]])
    r = CliRunner().invoke(app, ["eval", str(run), "-a", str(tmp_path / "gt.json"), "--lvis", "--iou-types", "bbox,segm"])
    assert r.exit_code == 0, r.output
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(doc["lvis"]) == {"bbox", "segm"} and doc["evaluation"] == "lvis"
    e = reference(tmp_path, gt, as_run_results(results, iou_type="segm"), "segm", monkeypatch)
    np.testing.assert_allclose(doc["lvis"]["segm"]["stats"], [e.results[n] for n in STAT_NAMES], rtol=0, atol=ATOL)

    part = write_run(tmp_path / "part", gt, results, shards=[ids[:4], ids[4:]], commit=[0])
    r = CliRunner().invoke(app, ["eval", str(part), "-a", str(tmp_path / "gt.json"), "--lvis"])
    assert r.exit_code == EXIT_INCOMPLETE, r.output
    r = CliRunner().invoke(app, ["eval", str(part), "-a", str(tmp_path / "gt.json"), "--lvis", "--allow-partial"])
    assert r.exit_code == 0 and "PARTIAL: 4 of 8 images" in r.output, r.output
    assert json.loads((part / "eval" / "metrics.json").read_text())["partial"] is True
    r = CliRunner().invoke(app, ["eval", str(run), "-a", str(tmp_path / "gt.json"), "--lvis", "--tide"])
    assert r.exit_code == EXIT_USAGE
