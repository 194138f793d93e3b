"""Randomised contracts: generated ground truth and predictions (crowds, empty images, tied
scores, every area range, >100 detections in a cell, annotation id 0, a custom 5-keypoint
category) give pycocotools' stats and precision/recall arrays to 1e-12, and any split of the
images into batches gives exactly the single-batch result."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval_fixtures import CUSTOM_SIGMAS, assert_same_as_pycoco, pycoco, random_case
from mrcnn_batch.evaluate import COCOEvaluator
from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict
from mrcnn_batch.evaluate.predictions import detections_from_results

SEEDS = {"bbox": range(40), "segm": range(16), "keypoints": range(40)}


def _ours(gt_doc, results, iou_type, *, batches=None):
    gt = ground_truth_from_dict(gt_doc, iou_types=(iou_type,))
    dets = detections_from_results(results, gt=gt, iou_type=iou_type)
    ev = COCOEvaluator(gt, iou_types=(iou_type,))
    for ids in batches or [gt.image_ids]:
        ev.process(dets.subset(ids), image_ids=ids)
    return ev.evaluate()[iou_type]


@pytest.mark.parametrize("iou_type,seed", [(t, s) for t, seeds in SEEDS.items() for s in seeds])
def test_random_sets_equal_pycocotools(iou_type, seed):
    gt_doc, results = random_case(seed, iou_type=iou_type)
    r = _ours(gt_doc, results, iou_type)
    e = pycoco(gt_doc, results, iou_type, sigmas=CUSTOM_SIGMAS if iou_type == "keypoints" else None)
    assert_same_as_pycoco(r, e)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_batches=st.integers(1, 6), iou_type=st.sampled_from(["bbox", "segm", "keypoints"]),
       split_seed=st.integers(0, 1_000))
def test_any_split_gives_the_single_batch_result(seed, n_batches, iou_type, split_seed):
    gt_doc, results = random_case(seed, iou_type=iou_type, n_images=10)
    whole = _ours(gt_doc, results, iou_type)
    ids = np.array([im["id"] for im in gt_doc["images"]])
    labels = np.random.default_rng(split_seed).integers(0, n_batches, size=len(ids))
    batches = [ids[labels == b] for b in range(n_batches) if (labels == b).any()]
    batches = batches[::-1]  # any order of arrival
    split = _ours(gt_doc, results, iou_type, batches=batches)
    np.testing.assert_array_equal(split.stats, whole.stats)
    np.testing.assert_array_equal(split.accumulated.precision, whole.accumulated.precision)
    np.testing.assert_array_equal(split.accumulated.scores, whole.accumulated.scores)


def test_oks_and_box_iou_bit_identical_to_pycocotools():
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    from eval_fixtures import pycoco as _pycoco
    from mrcnn_batch.evaluate.similarity import box_iou, oks

    rng = np.random.default_rng(3)
    dt, gt = rng.uniform(0, 50, (30, 4)), rng.uniform(0, 50, (9, 4))
    crowd = rng.random(9) < 0.3
    np.testing.assert_array_equal(box_iou(dt, gt, crowd), mask_utils.iou(dt.tolist(), gt.tolist(), crowd.astype(int).tolist()))
    gt_doc, results = random_case(5, iou_type="keypoints", n_images=6)
    e: COCOeval = _pycoco(gt_doc, results, "keypoints", sigmas=CUSTOM_SIGMAS)
    for (img, cat), ious in e.ious.items():
        if len(ious) == 0:
            continue
        gts, dts = e._gts[img, cat], e._dts[img, cat]
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:20]
        ours = oks(np.array([dts[i]["keypoints"] for i in order]), np.array([g["keypoints"] for g in gts], float),
                   np.array([g["bbox"] for g in gts]), np.array([g["area"] for g in gts]), np.array(CUSTOM_SIGMAS))
        np.testing.assert_array_equal(ours, ious)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_keypoint_pairs_are_computeOks_and_pruning_keeps_every_pair_that_may_match(seed):
    """All (detection, object) pairs at once: OKS equal to pycocotools' ``computeOks`` bit for
    bit, and the extent test drops no pair whose OKS reaches the lowest threshold."""
    from pycocotools.cocoeval import COCOeval

    from eval_fixtures import pycoco as _pycoco
    from mrcnn_batch.evaluate import match

    gt_doc, results = random_case(seed, iou_type="keypoints", n_images=10)
    e: COCOeval = _pycoco(gt_doc, results, "keypoints", sigmas=CUSTOM_SIGMAS)
    gt = ground_truth_from_dict(gt_doc, iou_types=("keypoints",))
    dets = detections_from_results(results, gt=gt, iou_type="keypoints")
    row_of_ann = {int(a): i for i, a in enumerate(gt.ann_id)}
    d_rows, g_rows, cats, ref = [], [], [], []
    for (img, cat), ious in e.ious.items():
        if len(ious) == 0:
            continue
        gts, dts = e._gts[img, cat], e._dts[img, cat]
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:20]
        for a, i in enumerate(order):
            for b, g in enumerate(gts):
                d_rows.append(dts[i]["id"] - 1)  # loadRes numbers results from 1, in file order
                g_rows.append(row_of_ann[g["id"]])
                cats.append(cat)
                ref.append(ious[a, b])
    d_rows, g_rows, cats, ref = (np.array(x) for x in (d_rows, g_rows, cats, ref))
    variances = {int(c): (np.array(CUSTOM_SIGMAS) * 2) ** 2 for c in np.unique(cats)}  # OKS's (2 sigma)^2
    np.testing.assert_array_equal(match._oks_pairs(gt, dets, d_rows, g_rows, cats, variances), ref)
    assert (ref >= 0.5).sum() >= 5  # pairs that match
    for tmin in (0.05, 0.3, 0.5, 0.75, 0.95):
        keep = match._may_reach(gt, dets, d_rows, g_rows, cats, variances, tmin)
        assert keep[ref >= tmin].all(), tmin
    assert not match._may_reach(gt, dets, d_rows, g_rows, cats, variances, 0.5).all()  # it does prune


def _same_ground_truth(a, b):
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and np.array_equal(value, other), name
        else:
            assert value == other, name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_images=st.integers(1, 14), n_groups=st.integers(1, 5),
       split_seed=st.integers(0, 1_000), absent=st.booleans())
def test_ground_truth_parts_are_its_subsets(seed, n_images, n_groups, split_seed, absent):
    # (parts finds each group's images and annotations by binary search)
    gt_doc, _ = random_case(seed, iou_type="keypoints", n_images=n_images)
    rng = np.random.default_rng(split_seed)
    gt = ground_truth_from_dict(gt_doc, iou_types=("keypoints",))
    ids = gt.image_ids.copy()
    rng.shuffle(ids)
    groups = [g for g in np.array_split(ids, n_groups)]
    if absent:  # ids the ground truth does not have (below, between, above its own) are passed over, as subset does
        others = np.setdiff1d(np.arange(gt.image_ids.min() - 1, gt.image_ids.max() + 2), gt.image_ids)
        groups = [np.r_[g, rng.choice(others, 3)] for g in groups]
    parts = list(gt.parts(iter(groups)))
    assert len(parts) == len(groups)
    for ids, part in zip(groups, parts):
        _same_ground_truth(part, gt.subset(ids))
