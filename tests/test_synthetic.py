"""Contracts of the synthetic shapes dataset (mrcnn_batch.datasets.shapes)."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from mrcnn_batch.datasets import shapes as synthetic
from mrcnn_batch.datasets.shapes import (
    CATEGORIES,
    HELDOUT_SEED,
    KEYPOINT_NAMES,
    OKS_SIGMAS,
    SKELETON,
    TRIANGLE_ID,
    generate_sample,
    rasterize,
)
from mrcnn_batch.evaluate.reference import coco_ground_truth, cocoeval

INDICES = range(12)


def test_same_seed_and_index_give_the_same_sample():
    for k in INDICES:
        a, b = generate_sample(seed=7, index=k), generate_sample(seed=7, index=k)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)


def test_different_seeds_give_different_samples():
    for k in INDICES:
        a, b = generate_sample(seed=7, index=k), generate_sample(seed=HELDOUT_SEED, index=k)
        assert a.image.shape != b.image.shape or not np.array_equal(a.image, b.image)


def test_a_sample_does_not_depend_on_the_dataset_size():
    coco_small, images_small = synthetic.build_coco(seed=3, num_images=2)
    coco_large, images_large = synthetic.build_coco(seed=3, num_images=5)
    np.testing.assert_array_equal(images_small[1], images_large[1])
    assert coco_small["annotations"] == coco_large["annotations"][: len(coco_small["annotations"])]


def test_images_vary_in_size_and_hold_every_category():
    samples = [generate_sample(seed=11, index=k) for k in range(40)]
    assert len({s.image.shape for s in samples}) >= 3
    labels = np.concatenate([s.labels for s in samples])
    assert set(labels.tolist()) == set(range(1, len(CATEGORIES)))
    assert any(len(s.labels) >= 3 for s in samples)
    # overlaps happen: some instance is partly covered by a later one
    assert any(
        (rasterize(shape, *s.image.shape[:2]) & ~s.masks[i]).any()
        for s in samples
        for i, shape in enumerate(s.shapes)
    )


def _reference_mask(shape: dict, height: int, width: int) -> np.ndarray:
    """An independent rasterisation of a shape's outline with matplotlib's Path."""
    if shape["kind"] == "triangle":
        outline = np.array(shape["vertices"])
    else:
        cx, cy = shape["center"]
        a, b = shape["radii"]
        c, s = np.cos(shape["angle"]), np.sin(shape["angle"])
        if shape["kind"] == "ellipse":
            t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
            u, v = a * np.cos(t), b * np.sin(t)
        else:
            u, v = np.array([-a, a, a, -a]), np.array([-b, -b, b, b])
        outline = np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=1)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    return MplPath(outline).contains_points(points).reshape(height, width)


@pytest.mark.parametrize("k", INDICES)
def test_masks_are_the_drawn_shapes_minus_what_covers_them(k):
    sample = generate_sample(seed=5, index=k)
    height, width = sample.image.shape[:2]
    covered = np.zeros((height, width), dtype=bool)
    for i in range(len(sample.shapes) - 1, -1, -1):
        full = rasterize(sample.shapes[i], height, width)
        np.testing.assert_array_equal(sample.masks[i], full & ~covered)
        # the rasteriser agrees with an independent one up to pixels on the outline itself
        reference = _reference_mask(sample.shapes[i], height, width)
        assert (full != reference).sum() <= max(2, 0.01 * full.sum())
        covered |= full
    # instance masks are disjoint and each is non-empty
    assert (sample.masks.sum(axis=0) <= 1).all()
    assert (sample.masks.reshape(len(sample.masks), -1).sum(axis=1) > 0).all()
    # boxes are the tight boxes of the visible masks
    for mask, box in zip(sample.masks, sample.boxes):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])


@pytest.mark.parametrize("k", INDICES)
def test_each_visible_instance_is_painted_in_its_own_texture(k):
    """Pixels of a shape's visible mask are painted by that shape, not the background."""
    sample = generate_sample(seed=5, index=k)
    image = sample.image.astype(np.float64)
    background = ~sample.masks.any(axis=0)
    bg_mean = image[background].mean(axis=0)
    for mask in sample.masks:
        # shape colours keep min_color_distance from the background colour; texture and
        # noise blur that, but the mean colour stays well apart
        assert np.linalg.norm(image[mask].mean(axis=0) - bg_mean) > 30


def test_keypoints_are_the_triangle_vertices_in_order_and_inside_the_shape():
    seen = 0
    for k in range(60):
        sample = generate_sample(seed=9, index=k)
        height, width = sample.image.shape[:2]
        for label, kps, shape, mask in zip(sample.labels, sample.keypoints, sample.shapes,
                                           sample.masks):
            if label != TRIANGLE_ID:
                np.testing.assert_array_equal(kps, 0)
                continue
            seen += 1
            np.testing.assert_allclose(kps[:, :2], np.array(shape["vertices"]), atol=1e-4)
            assert (kps[:, 2] == 2).all()
            apex, left, right = kps[:, :2]
            assert apex[1] < left[1] and apex[1] < right[1]
            assert left[0] < right[0]
            assert ((kps[:, 0] > 0) & (kps[:, 0] < width)).all()
            assert ((kps[:, 1] > 0) & (kps[:, 1] < height)).all()
            # every vertex lies on its own visible mask: inside its box, and near a mask pixel
            # (a pixel belongs when its centre is inside, so a sharp tip's nearest pixel centre
            # can be a couple of pixels away)
            x0, y0, x1, y1 = sample.boxes[list(sample.shapes).index(shape)]
            rows, cols = np.nonzero(mask)
            for x, y in kps[:, :2]:
                assert x0 - 2.5 <= x <= x1 + 2.5 and y0 - 2.5 <= y <= y1 + 2.5
                d = np.hypot(cols + 0.5 - x, rows + 0.5 - y).min()
                assert d <= 3.0, (k, x, y, d)
    assert seen > 20


def test_keypoint_metadata():
    assert len(OKS_SIGMAS) == len(KEYPOINT_NAMES) == 3
    assert all(0.025 <= s <= 0.107 for s in OKS_SIGMAS)
    assert all(1 <= a <= 3 and 1 <= b <= 3 and a != b for a, b in SKELETON)
    assert CATEGORIES[0] == "__background__" and CATEGORIES[TRIANGLE_ID] == "triangle"


def test_written_dataset_loads_in_pycocotools_and_scores_perfectly_against_itself():
    url = "memory://synthetic-test/heldout"
    coco_dict = synthetic.write_dataset(url, seed=HELDOUT_SEED, num_images=6)
    fs, root = fsspec.core.url_to_fs(url)
    with fs.open(f"{root}/annotations.json") as f:
        assert json.load(f) == coco_dict
    gt = coco_ground_truth(coco_dict)
    assert sorted(gt.getCatIds()) == [1, 2, 3]
    assert gt.loadCats(TRIANGLE_ID)[0]["keypoints"] == list(KEYPOINT_NAMES)
    for k, info in enumerate(coco_dict["images"]):
        sample = generate_sample(seed=HELDOUT_SEED, index=k)
        with fs.open(f"{root}/images/{info['file_name']}", "rb") as f:
            np.testing.assert_array_equal(np.asarray(Image.open(f).convert("RGB")), sample.image)
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[info["id"]]))
        assert len(anns) == len(sample.labels)
        for ann, mask in zip(anns, sample.masks):
            np.testing.assert_array_equal(gt.annToMask(ann), mask)
            assert ann["area"] == mask.sum()
    # ground truth as detections: AP 1.0 for boxes, masks and keypoints (with our sigmas)
    results = [dict(a, score=1.0) for a in coco_dict["annotations"]]
    for iou_type in ("bbox", "segm", "keypoints"):
        kp = iou_type == "keypoints"
        ev = cocoeval(gt, results, iou_type, sigmas=OKS_SIGMAS if kp else None, cat_ids=[TRIANGLE_ID] if kp else None)
        assert ev.stats[0] == pytest.approx(1.0), iou_type
