"""The rows a run writes equal calling the torchvision model directly on each image alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import SMALL
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from torchvision.models.detection import (
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)
from torchvision.transforms.functional import pil_to_tensor

import mrcnn_batch as mb

pytestmark = pytest.mark.heavy  # many model runs without Ray: scheduled early (tests/conftest.py)

BATCH = 2
MAX_DETECTIONS = 20  # per image: many masks and keypoints to compare, less CPU in the heads
PROPOSALS = 100  # the keypoint models' runs: their heads over 1000 proposals cost most of the CPU


@pytest.fixture(scope="module", autouse=True)
def batch_invariant_kernels():
    """oneDNN's CPU convolutions off, for the run and the reference alike.

    oneDNN picks its convolution kernel by batch size on feature maps of a few pixels (the
    smallest FPN levels of these small test images; not at min_size 800), so a batch of two
    differs from one image alone in float noise (~1e-5 in scores, ~5e-3 px in boxes, a few mask
    pixels with these random weights). torch's own convolution computes image by image: with it,
    batches must give exactly the bits of the image alone (``predict.batching``).
    """
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def load_images(plan):
    out = []
    for uri in plan.column("uri").to_pylist():
        im = ImageOps.exif_transpose(Image.open(uri.removeprefix("file://"))).convert("RGB")
        out.append(pil_to_tensor(im).float() / 255)
    return out


def reference_outputs(net, plan):
    """torchvision's model called on each image alone: the run's batches must not matter."""
    images = load_images(plan)
    ids = plan.column("image_id").to_pylist()
    with torch.inference_mode():
        return {image_id: net([image])[0] for image_id, image in zip(ids, images)}


def rows_by_image(table):
    rows = {}
    for r in table.to_pylist():
        rows.setdefault(r["image_id"], []).append(r)
    return {k: sorted(v, key=lambda r: r["instance_id"]) for k, v in rows.items()}


def assert_boxes_equal(rows, ref):
    boxes = ref["boxes"].numpy()
    assert len(rows) == len(boxes)
    xywh = np.array([r["bbox"] for r in rows], dtype=np.float32).reshape(-1, 4)
    expected = boxes.copy()
    expected[:, 2:] -= expected[:, :2]
    np.testing.assert_allclose(xywh, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose([r["score"] for r in rows], ref["scores"].numpy(), atol=1e-4, rtol=0)
    assert [r["category_id"] for r in rows] == ref["labels"].tolist()


def assert_masks_equal(rows, ref):
    """Each row's RLE decodes to torchvision's pasted mask thresholded at 0.5, bit for bit."""
    expected = (ref["masks"][:, 0] > 0.5).numpy()
    assert len(rows) == len(expected)
    for r, m in zip(rows, expected):
        decoded = mask_utils.decode({"size": r["mask"]["size"], "counts": r["mask"]["counts"].encode()})
        np.testing.assert_array_equal(decoded, m)
        assert r["area"] == m.sum()


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory, image_dir, mask_weights):
    out = tmp_path_factory.mktemp("runs") / "mask"
    summary = mb.infer(str(image_dir), str(out), model="maskrcnn_resnet50_fpn", weights=str(mask_weights), shard_size=3, batch_size=BATCH, max_detections=MAX_DETECTIONS, **SMALL)
    return mb.open_run(str(out)), summary


def test_mask_model_rows_equal_torchvision(mask_run, mask_weights):
    run, summary = mask_run
    assert summary.complete and summary.images_by_status == {"ok": 5}
    net = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, box_detections_per_img=MAX_DETECTIONS, **SMALL)
    net.load_state_dict(torch.load(mask_weights, weights_only=True))
    ref = reference_outputs(net.eval(), run.read_plan())
    rows = rows_by_image(run.read_table("instances"))
    images = {r["image_id"]: r for r in run.read_table("images").to_pylist()}
    total = 0
    categories = mb.list_models()  # noqa: F841 - registry loads
    for image_id, res in ref.items():
        got = rows.get(image_id, [])
        assert_boxes_equal(got, res)
        h, w = res["masks"].shape[-2:]
        assert (images[image_id]["height"], images[image_id]["width"]) == (h, w)
        assert_masks_equal(got, res)
        total += len(got)
        assert images[image_id]["num_instances"] == len(got)
    assert total > 50  # the comparison covered many masks


def test_keypoint_model_rows_equal_torchvision(tmp_path, image_dir, keypoint_weights):
    summary = mb.infer(str(image_dir), str(tmp_path / "kp"), model="keypointrcnn_resnet50_fpn", weights=str(keypoint_weights), shard_size=3, batch_size=BATCH, max_detections=MAX_DETECTIONS, rpn_proposals=PROPOSALS, **SMALL)
    run = mb.open_run(str(tmp_path / "kp"))
    net = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, box_detections_per_img=MAX_DETECTIONS,
                                    rpn_post_nms_top_n_test=PROPOSALS, **SMALL)
    net.load_state_dict(torch.load(keypoint_weights, weights_only=True))
    ref = reference_outputs(net.eval(), run.read_plan())
    kps = rows_by_image(run.read_table("keypoints"))
    inst = rows_by_image(run.read_table("instances"))
    n = 0
    for image_id, res in ref.items():
        assert_boxes_equal(inst.get(image_id, []), res)
        got = kps.get(image_id, [])
        assert_boxes_equal(got, res)  # every detection is a person
        for r, k, ks in zip(got, res["keypoints"].numpy(), res["keypoints_scores"].numpy()):
            trip = np.array(r["keypoints"], dtype=np.float32).reshape(17, 3)
            np.testing.assert_allclose(trip[:, :2], k[:, :2], atol=1e-4, rtol=0)
            assert (trip[:, 2] == 2).all()
            np.testing.assert_allclose(r["keypoint_scores"], ks, atol=1e-4, rtol=0)
            assert r["mask_instance_id"] is None and r["category"] == "person"
            n += 1
    assert n > 10 and summary.keypoints == n


def test_mask_and_keypoint_model_rows_equal_torchvision_and_join_people(tmp_path, image_dir, mask_weights, keypoint_weights):
    both = tmp_path / "both.pth"
    mask = torch.load(mask_weights, weights_only=True)
    keypoint = torch.load(keypoint_weights, weights_only=True)
    # The keypoint network shares the mask network's backbone, RPN and box head, and its person
    # box regression: its people are the mask network's people (random weights would rarely
    # overlap, and the join would go unchecked).
    mask["roi_heads.box_predictor.cls_score.bias"][1] += 30.0  # people only, in this test
    keypoint.update({k: v for k, v in mask.items() if k.startswith(("backbone.", "rpn.", "roi_heads.box_head."))})
    for name, rows in (("cls_score", [0, 1]), ("bbox_pred", list(range(8)))):
        for part in ("weight", "bias"):
            keypoint[f"roi_heads.box_predictor.{name}.{part}"] = mask[f"roi_heads.box_predictor.{name}.{part}"][rows].clone()
    state = {f"mask.{k}": v for k, v in mask.items()}
    state.update({f"keypoint.{k}": v for k, v in keypoint.items()})
    torch.save(state, both)
    mb.infer(str(image_dir), str(tmp_path / "run"), model="maskrcnn+keypointrcnn_resnet50_fpn", weights=str(both), shard_size=5, batch_size=BATCH, max_detections=MAX_DETECTIONS, rpn_proposals=PROPOSALS, **SMALL)
    run = mb.open_run(str(tmp_path / "run"))
    inst = rows_by_image(run.read_table("instances"))
    kps = rows_by_image(run.read_table("keypoints"))
    joined = unjoined = 0
    for image_id, rows in kps.items():
        people = {r["instance_id"]: r for r in inst.get(image_id, []) if r["category_id"] == 1}
        used = [r["mask_instance_id"] for r in rows if r["mask_instance_id"] is not None]
        assert len(used) == len(set(used))  # one-to-one
        taken: set[int] = set()
        for r in sorted(rows, key=lambda r: r["instance_id"]):  # the greedy order: keypoint detections by score
            free = {i: _iou(p["bbox"], r["bbox"]) for i, p in people.items() if i not in taken}
            best = max(free.values(), default=0.0)
            if r["mask_instance_id"] is None:
                assert best < 0.5 + 1e-6, (image_id, r["instance_id"], best)  # nothing free overlapped enough
                unjoined += 1
            else:
                got = free[r["mask_instance_id"]]  # a free person instance...
                assert got >= 0.5 - 1e-6 and got >= best - 1e-5  # ...overlapping enough, the best one left
                taken.add(r["mask_instance_id"])
                joined += 1
    people_n = Counter(r["category_id"] for v in inst.values() for r in v)
    assert joined > 0, ("no keypoint detection was joined: the test would not check the join", people_n, unjoined)
    assert sum(len(v) for v in kps.values()) > 0 and sum(len(v) for v in inst.values()) > 0
    assert run.run_meta().model["keypoint_names"][0] == "nose"

    # and the rows equal each torchvision network called alone on each image: instances the
    # mask network's, keypoint detections the keypoint network's (the join adds only the link)
    mask_net = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                     box_detections_per_img=MAX_DETECTIONS, rpn_post_nms_top_n_test=PROPOSALS, **SMALL)
    mask_net.load_state_dict(mask)
    kp_net = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                       box_detections_per_img=MAX_DETECTIONS, rpn_post_nms_top_n_test=PROPOSALS, **SMALL)
    kp_net.load_state_dict(keypoint)
    plan = run.read_plan()
    for image_id, res in reference_outputs(mask_net.eval(), plan).items():
        assert_boxes_equal(inst.get(image_id, []), res)
        assert_masks_equal(inst.get(image_id, []), res)
    for image_id, res in reference_outputs(kp_net.eval(), plan).items():
        got = kps.get(image_id, [])
        assert_boxes_equal(got, res)
        for r, k in zip(got, res["keypoints"].numpy()):
            np.testing.assert_allclose(np.array(r["keypoints"], dtype=np.float32).reshape(17, 3)[:, :2], k[:, :2],
                                       atol=1e-4, rtol=0)


def _iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_join_by_iou_is_greedy_one_to_one_with_a_floor():
    from mrcnn_batch.predict.predictor import join_by_iou

    people = torch.tensor([[0, 0, 10, 10], [100, 100, 120, 130], [0, 0, 11, 10.0]])
    kp = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [100, 100, 121, 131], [50, 50, 60, 60.0]])
    got = join_by_iou(kp, people, torch.tensor([4, 7, 9]))
    # first keypoint box takes the exact match (index 4); the second the remaining overlap (9);
    # the third matches the far box (7); the fourth overlaps nothing.
    assert got.tolist() == [4, 9, 7, -1]
    assert join_by_iou(kp[:0], people, torch.tensor([4, 7, 9])).tolist() == []
    assert join_by_iou(kp, people[:0], torch.tensor([], dtype=torch.int64)).tolist() == [-1, -1, -1, -1]
