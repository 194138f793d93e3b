"""Contracts of the demo model's registry entry and its shipped weights."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
from torchvision.models.detection import MaskRCNN

from mrcnn_batch.datasets import shapes as synthetic
from mrcnn_batch.models.registry import get_spec

PACKAGE_PREFIX = "package://"


@pytest.fixture(scope="module")
def spec():
    return get_spec("demo")


@pytest.fixture(scope="module")
def weights_file(spec):
    assert spec.default_weights.startswith(PACKAGE_PREFIX)
    package_path = spec.default_weights[len(PACKAGE_PREFIX):]
    package, _, rest = package_path.partition("/models/")
    return resources.files(f"{package}.models").joinpath(rest)


@pytest.fixture(scope="module")
def model(spec, weights_file):
    torch.set_num_threads(1)
    net = spec.build(num_classes=len(spec.categories), num_keypoints=len(spec.keypoint_names))
    with resources.as_file(weights_file) as path:
        state = torch.load(path, weights_only=True, map_location="cpu")
    net.load_state_dict(state)  # strict: every key matches
    return net.eval()


def test_registry_entry_carries_the_dataset_metadata(spec):
    assert spec.categories == synthetic.CATEGORIES
    assert spec.categories[0] == "__background__"
    assert spec.has_masks and spec.has_keypoints
    assert spec.keypoint_names == synthetic.KEYPOINT_NAMES
    assert spec.skeleton == synthetic.SKELETON
    assert spec.oks_sigmas == synthetic.OKS_SIGMAS
    assert all(0.025 <= s <= 0.107 for s in spec.oks_sigmas)
    assert spec.keypoint_category_id == synthetic.TRIANGLE_ID
    assert spec.categories[spec.keypoint_category_id] == "triangle"
    assert spec.default_min_size < 800 and spec.default_max_size < 1333
    json.dumps(spec.metadata())


def test_shipped_weights_are_small_and_documented(weights_file):
    assert weights_file.is_file()
    assert len(weights_file.read_bytes()) <= 25 * 1024 * 1024
    facts = json.loads(weights_file.with_name("demo.json").read_text())
    assert facts["model"] == "demo"
    assert facts["heldout_seed"] == synthetic.HELDOUT_SEED
    assert facts["config"]["seed"] != synthetic.HELDOUT_SEED
    assert facts["iterations"] > 0


def test_builder_makes_a_mask_rcnn_with_a_keypoint_head(model):
    assert isinstance(model, MaskRCNN)
    heads = model.roi_heads
    assert heads.has_mask() and heads.has_keypoint()
    assert model.transform.min_size == (get_spec("demo").default_min_size,)
    assert model.transform.max_size == get_spec("demo").default_max_size


def _image(index: int = 0) -> tuple[torch.Tensor, synthetic.Sample]:
    sample = synthetic.generate_sample(seed=synthetic.HELDOUT_SEED, index=index)
    return torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255.0, sample


@torch.no_grad()
def test_forward_returns_boxes_masks_and_keypoints(model):
    image, sample = _image(0)
    (out,) = model([image])
    n = len(out["boxes"])
    height, width = sample.image.shape[:2]
    assert n > 0
    assert out["masks"].shape == (n, 1, height, width)
    assert out["keypoints"].shape == (n, 3, 3)
    assert out["keypoints_scores"].shape == (n, 3)
    assert set(out["labels"].tolist()) <= {1, 2, 3}


@torch.no_grad()
def test_the_pipelines_forward_equals_torchvisions_full_forward(model):
    """``predict.forward_raw`` (our path: transform, backbone, RPN, the RoI heads image by image,
    boxes and keypoints scaled back, no mask paste) against the demo model's own full forward:
    the same detections, and its 28x28 masks pasted by torchvision give torchvision's masks."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from mrcnn_batch.predict.predictor import forward_raw

    images = [_image(1)[0], _image(2)[0]]
    ours = forward_raw(model, images)
    full = model(images)
    assert [len(d["boxes"]) for d in full] == [len(d["boxes"]) for d in ours] and sum(len(d["boxes"]) for d in full) > 0
    for o, f, image in zip(ours, full, images):
        for key in ("boxes", "scores", "labels", "keypoints", "keypoints_scores"):
            torch.testing.assert_close(o[key], f[key], rtol=1e-5, atol=1e-4)
        assert o["masks"].shape[-2:] == (28, 28)
        pasted = paste_masks_in_image(o["masks"], o["boxes"], tuple(image.shape[-2:]))
        torch.testing.assert_close(pasted, f["masks"], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_shipped_weights_find_the_shapes(model):
    """A coarse check that the weights are trained: most ground-truth shapes are detected."""
    from torchvision.ops import box_iou

    found = total = 0
    for k in range(4):
        image, sample = _image(k)
        (out,) = model([image])
        keep = out["scores"] > 0.5
        gt = torch.from_numpy(sample.boxes)
        total += len(gt)
        if keep.any():
            iou = box_iou(gt, out["boxes"][keep])
            same = torch.from_numpy(sample.labels)[:, None] == out["labels"][keep][None, :]
            found += int(((iou > 0.5) & same).any(dim=1).sum())
    assert found >= 0.7 * total, (found, total)


def test_demo_rows_equal_the_model_on_each_image_alone(model, tmp_path):
    """The packaged ``demo`` entry through ``infer`` (batch 1 and 4) against its network called
    on each image alone: boxes, scores and keypoints to 1e-4, masks bit for bit."""
    import mrcnn_batch as mb
    from test_reference import assert_boxes_equal, assert_masks_equal, reference_outputs, rows_by_image

    synthetic.write_dataset(str(tmp_path / "data"), seed=synthetic.HELDOUT_SEED + 7, num_images=6)
    tables: dict[int, list] = {}
    for bs in (1, 4):
        out = tmp_path / f"bs{bs}"
        summary = mb.infer(str(tmp_path / "data" / "images"), str(out), model="demo", batch_size=bs, shard_size=3)
        assert summary.complete
        run = mb.open_run(str(out))
        ref = reference_outputs(model, run.read_plan())
        inst = rows_by_image(run.read_table("instances"))
        kps = rows_by_image(run.read_table("keypoints"))
        for image_id, expected in ref.items():
            assert_boxes_equal(inst.get(image_id, []), expected)
            assert_masks_equal(inst.get(image_id, []), expected)
            tri = [i for i, label in enumerate(expected["labels"].tolist()) if label == synthetic.TRIANGLE_ID]
            got = kps.get(image_id, [])
            assert len(got) == len(tri)
            for r, i in zip(got, tri):
                trip = torch.tensor(r["keypoints"]).reshape(-1, 3)
                torch.testing.assert_close(trip[:, :2], expected["keypoints"][i, :, :2], atol=1e-4, rtol=0)
        assert sum(len(v) for v in inst.values()) >= 6
        tables[bs] = [(r["image_id"], r["instance_id"], r["category_id"], r["mask"]) for r in run.read_table("instances").to_pylist()]
    # same-size images share a batch here: the backbone's float sums may differ in the last bits
    # with the batch (within the 1e-4 above), the detections and their masks do not
    assert tables[1] == tables[4]
