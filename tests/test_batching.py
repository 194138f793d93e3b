"""Batches never change results: which images share a batch, and rows equal to torchvision
called on each image alone, at every batch size, over a shard of mixed shapes."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch
from conftest import IMAGES, SMALL
from PIL import Image
from test_reference import (  # noqa: F401 - batch_invariant_kernels: an autouse fixture
    assert_boxes_equal,
    assert_masks_equal,
    batch_invariant_kernels,
    reference_outputs,
    rows_by_image,
)
from torchvision.models.detection import (
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform

import mrcnn_batch as mb
from mrcnn_batch.predict.batching import (
    Bucketer,
    batch_key,
    padded_shape,
    plan_batches,
    resized_shape,
)
from mrcnn_batch.run.processor import WINDOW_BATCHES

pytestmark = pytest.mark.heavy  # many model runs without Ray: scheduled early (tests/conftest.py)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SHAPES = [(600, 900), (600, 906), (534, 800), (900, 600), (1365, 2048), (1200, 1200), (30, 1000), (1000, 30),
          (1, 1), (799, 1333), (480, 640), (427, 640), (640, 427), (333, 500)]


def transform(min_size: int, max_size: int) -> GeneralizedRCNNTransform:
    return GeneralizedRCNNTransform(min_size, max_size, MEAN, STD).eval()


# -- the shape rule, against torchvision's own transform ---------------------------------------
@pytest.mark.parametrize("sizes", [(800, 1333), (128, 192), (256, 384)])
def test_padded_shape_is_what_torchvision_makes_of_the_image_alone(sizes):
    t = transform(*sizes)
    for h, w in SHAPES:
        batch, _ = t([torch.zeros(3, h, w)])
        assert padded_shape(h, w, t) == tuple(batch.tensors.shape[-2:]), (h, w)
        assert resized_shape(h, w, t) == tuple(batch.image_sizes[0]), (h, w)


def test_batch_key_needs_every_network_to_agree():
    a, b = transform(128, 192), transform(256, 400)
    assert batch_key(600, 900, [a, a]) == batch_key(534, 800, [a, a])  # both pad to 128 x 192
    assert batch_key(600, 900, [a]) != batch_key(900, 600, [a])
    assert batch_key(600, 900, [a]) == batch_key(600, 906, [a])
    assert batch_key(600, 900, [a, b]) != batch_key(600, 906, [a, b])  # b: 256 x 384 vs 256 x 416


# -- the bucketing, a pure function -------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_bucketing_never_mixes_shapes_nor_overfills_and_loses_nothing(seed):
    rng = random.Random(seed)
    keys = [rng.choice("aabbbcd") for _ in range(rng.randrange(0, 60))]
    batch_size, window = rng.randrange(1, 9), rng.randrange(1, 20)
    batches = plan_batches(keys, batch_size=batch_size, window=window)
    assert sorted(i for b in batches for i in b) == list(range(len(keys)))  # each exactly once
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert len({keys[i] for i in b}) == 1
        assert b == sorted(b)


def test_bucketer_emits_full_batches_at_once_and_moves_the_window_on_oldest_first():
    b = Bucketer(batch_size=2, window=3)
    assert b.add("L", 0) == [] and b.add("P", 1) == []
    assert b.add("L", 2) == [[0, 2]]  # full
    assert b.add("S", 3) == [] and b.add("Q", 4) == []
    assert b.add("R", 5) == [[1]]  # four wait: the oldest (a lone portrait) runs alone
    assert b.drain() == [[3], [4], [5]]
    assert plan_batches("LLPLSPL", batch_size=8, window=32) == [[0, 1, 3, 6], [2, 5], [4]]
    with pytest.raises(ValueError):
        Bucketer(batch_size=0, window=4)


# -- rows equal torchvision on each image alone, at every batch size ---------------------------
MAX_DETECTIONS = 4  # fewer mask/keypoint head rows: less CPU time, the same comparison
PROPOSALS = 100  # and fewer boxes through the box head (the v2 model's four convolutions over 1000 cost most)
LANDSCAPE = ["15673749081_767a7fa63a_k.jpg", "dog.jpg"]  # 900 x 600 and 800 x 534


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """Real photographs in landscape, portrait and square, interleaved in plan order (L P L S):
    the two landscapes resize to 128 x 192 and 128 x 191, one padded shape."""
    d = tmp_path_factory.mktemp("mixed")
    for name in LANDSCAPE:
        shutil.copy(IMAGES / name, d / name)
    dog = Image.open(IMAGES / "dog.jpg").convert("RGB")
    dog.transpose(Image.Transpose.TRANSPOSE).save(d / "a_portrait.png")
    truck = Image.open(IMAGES / "truck.jpg").convert("RGB")
    truck.crop((300, 0, 1500, 1200)).resize((600, 600)).save(d / "m_square.png")
    return d


@pytest.fixture(scope="module")
def references(mixed_dir, mask_weights, mask_v2_weights, keypoint_weights):
    nets = {}
    for name, builder, classes, weights in [
        ("maskrcnn_resnet50_fpn", maskrcnn_resnet50_fpn, 91, mask_weights),
        ("maskrcnn_resnet50_fpn_v2", maskrcnn_resnet50_fpn_v2, 91, mask_v2_weights),
        ("keypointrcnn_resnet50_fpn", keypointrcnn_resnet50_fpn, 2, keypoint_weights),
    ]:
        net = builder(weights=None, weights_backbone=None, num_classes=classes,
                      box_detections_per_img=MAX_DETECTIONS, rpn_post_nms_top_n_test=PROPOSALS, **SMALL)
        net.load_state_dict(torch.load(weights, weights_only=True))
        nets[name] = (net.eval(), weights)
    return nets


@pytest.mark.parametrize("model", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "keypointrcnn_resnet50_fpn"])
def test_rows_equal_the_model_on_each_image_alone_at_every_batch_size(tmp_path, mixed_dir, references, model):
    net, weights = references[model]
    tables, ref = {}, None
    for batch_size in (1, 2, 8):
        out = tmp_path / f"bs{batch_size}"
        summary = mb.infer(str(mixed_dir), str(out), model=model, weights=str(weights), shard_size=4,
                           batch_size=batch_size, max_detections=MAX_DETECTIONS, rpn_proposals=PROPOSALS, **SMALL)
        assert summary.complete and summary.images_by_status == {"ok": 4}
        run = mb.open_run(str(out))
        plan = run.read_plan()
        if ref is None:
            ref = reference_outputs(net, plan)
        images = run.read_table("images").to_pylist()
        assert [r["image_id"] for r in images] == plan.column("image_id").to_pylist()  # plan order
        shapes = [padded_shape(r["height"], r["width"], net.transform) for r in images]
        assert len(set(shapes)) == 3  # landscape, portrait and square
        batches = plan_batches(shapes, batch_size=batch_size, window=WINDOW_BATCHES * batch_size)
        assert max(map(len, batches)) == min(batch_size, 2)  # the landscapes share a batch
        inst = rows_by_image(run.read_table("instances"))
        kps = rows_by_image(run.read_table("keypoints"))
        for image in images:
            expected = ref[image["image_id"]]
            assert_boxes_equal(inst.get(image["image_id"], []), expected)
            if "masks" in expected:
                assert_masks_equal(inst.get(image["image_id"], []), expected)
            if "keypoints" in expected:
                assert_keypoints_equal(kps.get(image["image_id"], []), expected)
        tables[batch_size] = {name: run.read_table(name).to_pylist() for name in ("images", "instances", "keypoints")}
    assert tables[1] == tables[2] == tables[8]  # the same files, whatever the batches were
    assert sum(len(v) for v in inst.values()) >= 4 * 3


def assert_keypoints_equal(rows, ref):
    assert len(rows) == len(ref["keypoints"])
    for r, k, ks in zip(rows, ref["keypoints"].numpy(), ref["keypoints_scores"].numpy()):
        trip = np.array(r["keypoints"], dtype=np.float32).reshape(-1, 3)
        np.testing.assert_allclose(trip[:, :2], k[:, :2], atol=1e-4, rtol=0)
        np.testing.assert_allclose(r["keypoint_scores"], ks, atol=1e-4, rtol=0)
