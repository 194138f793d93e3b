"""Comparing two evaluations with a paired bootstrap over images: each replicate is exactly
pycocotools' COCOeval on the resampled image set (the identity resample is pycocotools on the
data; a resample drawing images twice is pycocotools on the data with those images physically
duplicated), a run against itself gets [0, 0], a clearly better run an interval above 0; the CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from eval_fixtures import (
    CUSTOM_SIGMAS,
    load,
    pycoco,
    random_case,
    with_boxes,
    write_run,
)
from typer.testing import CliRunner

from mrcnn_batch.cli import EXIT_USAGE, app
from mrcnn_batch.evaluate import COCOEvaluator, EvalInputError
from mrcnn_batch.evaluate.bootstrap import WeightedAccumulator, resample_counts
from mrcnn_batch.evaluate.compare import (
    BootstrapConfig,
    compare_evaluators,
    compare_predictions,
)
from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict
from mrcnn_batch.evaluate.match import ground_truth_counts

TYPES = ("bbox", "segm", "keypoints")


def _case(iou_type: str, seed: int, n_images: int = 12) -> tuple[dict, list]:
    """A random case whose annotation ids start at 1 (an id 0, pycocotools' quirk, cannot be
    duplicated under the same id)."""
    gt_doc, results = random_case(seed, iou_type=iou_type, n_images=n_images)
    for i, a in enumerate(gt_doc["annotations"]):
        a["id"] = i + 1
    return gt_doc, results


def _engine(gt_doc: dict, results: list, iou_type: str, *, summary_only: bool = False):
    gt = ground_truth_from_dict(gt_doc, iou_types=(iou_type,))
    ev = COCOEvaluator(gt, iou_types=(iou_type,))
    ev.process(results, image_ids=gt.image_ids)
    params, cats = ev.setup.params[iou_type], ev.setup.category_ids[iou_type]
    counts = ground_truth_counts(gt, params=params, category_ids=cats, image_ids=gt.image_ids)
    engine = WeightedAccumulator(ev.matches(iou_type), counts, params=params, category_ids=cats,
                                 image_ids=gt.image_ids, summary_only=summary_only)
    return engine, ev.evaluate()[iou_type]


def _sigmas(iou_type: str) -> list[float] | None:
    return CUSTOM_SIGMAS if iou_type == "keypoints" else None


def _duplicated(gt_doc: dict, results: list, counts: np.ndarray) -> tuple[dict, list]:
    """The data set in which image i is present counts[i] times (images in id order), copy c of
    image ``id`` under the id ``id * 100 + c``: copies sort right after their original."""
    ids = sorted(im["id"] for im in gt_doc["images"])
    by_image = {i: ([], []) for i in ids}
    for a in gt_doc["annotations"]:
        by_image[a["image_id"]][0].append(a)
    for r in results:
        by_image[r["image_id"]][1].append(r)
    images, anns, dets = [], [], []
    size = {im["id"]: im for im in gt_doc["images"]}
    for i, w in zip(ids, counts.tolist()):
        for c in range(w):
            new = i * 100 + c
            images.append({**size[i], "id": new})
            anns += [{**copy.deepcopy(a), "id": len(anns) + k + 1, "image_id": new} for k, a in enumerate(by_image[i][0])]
            dets += [{**copy.deepcopy(r), "image_id": new} for r in by_image[i][1]]
    return {**gt_doc, "images": images, "annotations": anns}, dets


@pytest.mark.parametrize("iou_type", TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_resample_is_pycocotools(iou_type, seed):
    gt_doc, results = _case(iou_type, seed)
    engine, evaluated = _engine(gt_doc, results, iou_type)
    ones = np.ones((1, len(engine.image_ids)), np.int32)
    e = pycoco(gt_doc, results, iou_type, sigmas=_sigmas(iou_type))
    acc = engine.accumulate(ones)[0]
    assert np.array_equal(acc.precision, e.eval["precision"])
    assert np.array_equal(acc.recall, e.eval["recall"])
    for summary_only in (False, True):
        engine, _ = _engine(gt_doc, results, iou_type, summary_only=summary_only)
        rep = engine.replicate_stats(ones)
        assert np.array_equal(rep.stats[0], e.stats)  # bit for bit
        assert np.array_equal(rep.category_ap[0], evaluated.per_category["AP"], equal_nan=True)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_identity_resample_on_published_data(iou_type):
    gt_doc = load("instances_val2014_100.json")
    results = load(f"instances_val2014_fake{iou_type}100_results.json")
    engine, _ = _engine(gt_doc, results, iou_type, summary_only=True)
    rep = engine.replicate_stats(np.ones((1, len(engine.image_ids)), np.int32))
    assert np.array_equal(rep.stats[0], pycoco(gt_doc, results, iou_type).stats)


@pytest.mark.parametrize("iou_type", TYPES)
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_an_image_drawn_twice_counts_twice(iou_type, seed):
    """A replicate equals pycocotools on the data with the drawn images physically duplicated
    (the random cases have many tied scores within an image, the hard case of the order)."""
    gt_doc, results = _case(iou_type, seed)
    engine, _ = _engine(gt_doc, results, iou_type)
    counts = next(resample_counts(len(engine.image_ids), replicates=1, seed=seed))[0]
    counts[0] = 3  # at least one image three times
    counts[1] = 0  # and one left out
    dup_gt, dup_results = _duplicated(gt_doc, results, counts)
    e = pycoco(dup_gt, dup_results, iou_type, sigmas=_sigmas(iou_type))
    acc = engine.accumulate(counts[None])[0]
    assert np.array_equal(acc.precision, e.eval["precision"])
    assert np.array_equal(acc.recall, e.eval["recall"])
    summary, _ = _engine(gt_doc, results, iou_type, summary_only=True)
    assert np.array_equal(summary.replicate_stats(counts[None]).stats[0], e.stats)


def test_resampling_is_reproducible_and_chunk_free():
    whole = np.concatenate(list(resample_counts(50, replicates=7, seed=3, chunk=7)))
    pieces = np.concatenate(list(resample_counts(50, replicates=7, seed=3, chunk=2)))
    assert np.array_equal(whole, pieces) and (whole.sum(axis=1) == 50).all()
    assert not np.array_equal(whole, np.concatenate(list(resample_counts(50, replicates=7, seed=4))))


@pytest.mark.parametrize("iou_type", TYPES)
def test_a_run_against_itself_is_exactly_zero(iou_type):
    gt_doc, results = _case(iou_type, 5, n_images=16)
    gt = ground_truth_from_dict(gt_doc, iou_types=(iou_type,))
    cmp = compare_predictions(gt, results, copy.deepcopy(results), iou_types=(iou_type,),
                              bootstrap=BootstrapConfig(replicates=100, seed=1))
    c = cmp.iou_types[iou_type]
    assert len(c.metrics) == (10 if iou_type == "keypoints" else 12)
    for d in c.metrics + c.categories:
        if d.delta is not None:
            assert d.delta == 0 and d.low == 0 and d.high == 0 and not d.excludes_zero
    np.testing.assert_array_equal([d.a for d in c.metrics], pycoco(gt_doc, results, iou_type, sigmas=_sigmas(iou_type)).stats)


def test_a_clearly_better_run_excludes_zero():
    gt_doc, _ = _case("bbox", 7, n_images=30)
    rng = np.random.default_rng(0)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt_doc["annotations"] if not a["iscrowd"]]
    jittered = [{**r, "bbox": (np.array(r["bbox"]) + rng.normal(0, 0.15, 4) * np.array(r["bbox"])[[2, 3, 2, 3]]).tolist(),
                 "score": float(rng.random())} for r in perfect]
    gt = ground_truth_from_dict(gt_doc)
    cmp = compare_predictions(gt, jittered, perfect, bootstrap=BootstrapConfig(replicates=200))
    ap = cmp.iou_types["bbox"].metrics[0]
    assert ap.name == "AP" and ap.b == pytest.approx(1.0) and ap.low > 0 and ap.excludes_zero
    assert ap.low <= ap.delta <= ap.high and ap.replicates == 200
    assert all(d.excludes_zero for d in cmp.iou_types["bbox"].categories if d.delta is not None)
    reverse = compare_predictions(gt, perfect, jittered, bootstrap=BootstrapConfig(replicates=200))
    r_ap = reverse.iou_types["bbox"].metrics[0]
    assert r_ap.high < 0 and r_ap.delta == -ap.delta


def test_compared_on_the_images_both_evaluated():
    gt_doc, results = _case("bbox", 8, n_images=14)
    gt = ground_truth_from_dict(gt_doc)
    ids = gt.image_ids
    evs = []
    for part in (ids[:10], ids[4:]):
        ev = COCOEvaluator(gt)
        ev.process([r for r in results if r["image_id"] in set(part.tolist())], image_ids=part)
        evs.append(ev)
    cmp = compare_evaluators(*evs, bootstrap=BootstrapConfig(replicates=20))
    assert cmp.num_images == 6 and cmp.partial
    common = set(ids[4:10].tolist())
    sub_doc = {**gt_doc, "images": [im for im in gt_doc["images"] if im["id"] in common],
               "annotations": [a for a in gt_doc["annotations"] if a["image_id"] in common]}
    expected = pycoco(sub_doc, [r for r in results if r["image_id"] in common], "bbox").stats
    np.testing.assert_array_equal([d.a if d.a is not None else -1 for d in cmp.iou_types["bbox"].metrics], expected)
    only_a, only_b = COCOEvaluator(gt), COCOEvaluator(gt)
    only_a.process([r for r in results if r["image_id"] in set(ids[:5].tolist())], image_ids=ids[:5])
    only_b.process([r for r in results if r["image_id"] in set(ids[5:].tolist())], image_ids=ids[5:])
    with pytest.raises(EvalInputError, match="no evaluated image in common"):
        compare_evaluators(only_a, only_b)


@pytest.mark.parametrize("bad", [{"replicates": 0}, {"confidence": 1.0}, {"confidence": 0}, {"seed": -1}])
def test_bad_bootstrap_settings(bad):
    with pytest.raises(EvalInputError, match="replicates|confidence|seed"):
        BootstrapConfig(**bad)


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    gt_doc, results = _case("segm", 11, n_images=14)
    results = with_boxes(results)
    root = tmp_path_factory.mktemp("compare")
    (root / "gt.json").write_text(json.dumps(gt_doc))
    ids = [im["id"] for im in gt_doc["images"]]
    model = {"name": "m", "has_masks": True, "has_keypoints": False}
    better = [dict(r, score=min(1.0, r["score"] + 0.5)) if i % 2 else r for i, r in enumerate(results)]
    a = write_run(root / "a", gt_doc, results, shards=[ids[:7], ids[7:]], model=model, run_id="run-a")
    b = write_run(root / "b", gt_doc, better, shards=[ids[:5], ids[5:]], model=model, run_id="run-b")
    half = write_run(root / "half", gt_doc, results, shards=[ids[:7], ids[7:]], model=model, run_id="run-h", commit=[1])
    other = write_run(root / "other", gt_doc, results, shards=[ids[:7], ids[7:]], model=model, run_id="run-o", commit=[0])
    return root, a, b, half, other


def _invoke(*args):
    return CliRunner().invoke(app, ["compare", *map(str, args)], terminal_width=200)


def test_cli_compare_prints_writes_and_is_reproducible(two_runs, tmp_path):
    root, a, b, _, _ = two_runs
    res = _invoke(a, b, "-a", root / "gt.json", "--bootstrap", 100, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    for text in ("14 images, 100 paired bootstrap replicates", "bbox", "segm", "95% interval", "excludes 0",
                 "AP per category (3;"):
        assert text in res.output
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert doc["format"] == "mrcnn_batch.compare/1" and doc["run_id_a"] == "run-a" and doc["run_id_b"] == "run-b"
    assert set(doc["iou_types"]) == {"bbox", "segm"} and doc["bootstrap"]["replicates"] == 100
    row = doc["iou_types"]["segm"]["metrics"][0]
    assert row["metric"] == "AP" and row["delta"] == pytest.approx(row["b"] - row["a"])
    table = pq.read_table(tmp_path / "cmp" / "compare.parquet").to_pylist()
    assert len(table) == 2 * (12 + 3) and {r["scope"] for r in table} == {"overall", "category"}
    again = _invoke(a, b, "-a", root / "gt.json", "--bootstrap", 100, "--json", "--iou-types", "segm")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["iou_types"]["segm"] == doc["iou_types"]["segm"]  # same seed, same intervals


def test_cli_compare_a_results_file_with_a_run(two_runs, tmp_path):
    root, a, _, _, _ = two_runs
    results = json.loads((root / "gt.json").read_text())["annotations"]
    preds = [{"image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"], "score": 1.0}
             for r in results if not r["iscrowd"]]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    res = _invoke(a, tmp_path / "p.json", "-a", root / "gt.json", "--bootstrap", 50, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert list(doc["iou_types"]) == ["bbox"] and doc["iou_types"]["bbox"]["metrics"][0]["excludes_zero"]


@pytest.mark.parametrize("args,message", [
    (["--bootstrap", "0"], "--bootstrap must be at least 1"),
    (["--confidence", "1.5"], "--confidence must be between 0 and 1"),
    (["--seed", "-3"], "--seed must be"),
    (["--iou-types", "nope"], "nope"),
])
def test_cli_bad_options_exit_2(two_runs, args, message):
    root, a, b, _, _ = two_runs
    res = _invoke(a, b, "-a", root / "gt.json", *args)
    assert res.exit_code == EXIT_USAGE and message in res.output, res.output


def test_cli_runs_without_common_images_exit_2(two_runs):
    root, _, _, half, other = two_runs
    res = _invoke(half, other, "-a", root / "gt.json", "--allow-partial", "--bootstrap", 10)
    assert res.exit_code == EXIT_USAGE and "no evaluated image in common" in res.output, res.output
    res = _invoke(half, other, "-a", root / "gt.json")
    assert res.exit_code == 5 and "--allow-partial" in res.output  # incomplete, as eval says


def test_cli_compare_help_style():
    res = CliRunner().invoke(app, ["compare", "--help"], terminal_width=200)
    assert res.exit_code == 0
    assert "compare [OPTIONS] RUN_A RUN_B" in " ".join(res.output.split())
    import re

    assert not re.findall(r"<(?:str|int|float|bool|text|integer)[^>]*>|\{[A-Za-z_]+\}", res.output)
    for option in ("--bootstrap", "--confidence", "--seed", "--json", "--out", "--iou-types"):
        assert option in res.output
