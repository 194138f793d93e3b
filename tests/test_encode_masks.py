"""Paste + RLE against torchvision's paste_masks_in_image and pycocotools' encode, exactly: the
compiled kernel and the torch ops, each."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks, paste_masks_in_image

from mrcnn_batch.encode.masks import COMPILED, paste_and_encode

IMPLEMENTATIONS = (False, True) if COMPILED else (False,)  # compiled=


def reference(masks, boxes, h, w, thr):
    pasted = (paste_masks_in_image(masks, boxes, (h, w)) > thr)[:, 0].numpy().astype(np.uint8)
    return pasted, [mask_utils.encode(np.asfortranarray(m)) for m in pasted]


def inside(boxes, h, w):
    """Boxes that still meet the image once torchvision expands and rounds them.

    Detector boxes always do (roi_heads clips them to the image); torchvision's paste raises on
    the others, and ours returns an empty mask for them (tested below).
    """
    _, scale = expand_masks(torch.zeros(1, 1, 28, 28), padding=1)
    b = expand_boxes(boxes, scale).to(torch.int64)
    return (b[:, 0].clamp(min=0) < (b[:, 2] + 1).clamp(max=w)) & (b[:, 1].clamp(min=0) < (b[:, 3] + 1).clamp(max=h))


def check(masks, boxes, h, w, thr=0.5):
    for compiled in IMPLEMENTATIONS:
        check_one(masks, boxes, h, w, thr, compiled)


def check_one(masks, boxes, h, w, thr, compiled):
    keep = inside(boxes, h, w)
    rles, areas = paste_and_encode(masks, boxes, height=h, width=w, threshold=thr, compiled=compiled)
    for i in (~keep).nonzero().flatten().tolist():
        assert areas[i] == 0 and rles[i]["counts"] == mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))["counts"].decode()
    rles = [r for r, k in zip(rles, keep.tolist()) if k]
    areas = areas[keep.numpy()]
    masks, boxes = masks[keep], boxes[keep]
    pasted, ref = reference(masks, boxes, h, w, thr)
    assert len(rles) == len(ref)
    for i, (ours, theirs) in enumerate(zip(rles, ref)):
        assert ours["size"] == [h, w]
        assert ours["counts"] == theirs["counts"].decode(), f"mask {i}, box {boxes[i].tolist()}"
        decoded = mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()})
        np.testing.assert_array_equal(decoded, pasted[i])
        assert areas[i] == pasted[i].sum()


box_coord = st.floats(min_value=-60, max_value=260, allow_nan=False, width=32)


@st.composite
def detections(draw):
    h = draw(st.integers(1, 120))
    w = draw(st.integers(1, 160))
    n = draw(st.integers(0, 12))
    boxes = []
    for _ in range(n):
        kind = draw(st.sampled_from(["any", "subpixel", "huge", "border", "empty"]))
        if kind == "subpixel":
            x, y = draw(st.floats(0, w - 1)), draw(st.floats(0, h - 1))
            box = [x, y, x + draw(st.floats(0, 0.99)), y + draw(st.floats(0, 0.99))]
        elif kind == "huge":
            box = [-draw(st.floats(0, 500)), -draw(st.floats(0, 500)), w + draw(st.floats(0, 500)), h + draw(st.floats(0, 500))]
        elif kind == "border":
            box = [0.0, draw(st.floats(0, h - 1)), w - 1.0, h - 1.0]
        elif kind == "empty":
            x, y = draw(st.floats(0, w - 1)), draw(st.floats(0, h - 1))
            box = [x, y, x, y]
        else:
            x0, y0 = draw(st.floats(-30, w - 1)), draw(st.floats(-30, h - 1))
            box = [x0, y0, x0 + draw(st.floats(0, 2 * w)), y0 + draw(st.floats(0, 2 * h))]
        boxes.append(box)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    smooth = draw(st.booleans())
    m = torch.rand(n, 1, 7 if smooth else 28, 7 if smooth else 28, generator=g)
    if smooth:
        m = F.interpolate(m, size=(28, 28), mode="bilinear", align_corners=False)
    return m, torch.tensor(boxes, dtype=torch.float32).reshape(n, 4), h, w


@settings(max_examples=300, deadline=None)
@given(detections(), st.sampled_from([0.5, 0.3, 0.7]))
def test_matches_torchvision_paste_and_pycocotools_encode(det, thr):
    masks, boxes, h, w = det
    check(masks, boxes, h, w, thr)


@pytest.mark.parametrize("h,w", [(480, 640), (1080, 1920)])
def test_many_detections_at_real_sizes(h, w):
    g = torch.Generator().manual_seed(h)
    n = 100
    masks = F.interpolate(torch.rand(n, 1, 7, 7, generator=g), size=(28, 28), mode="bilinear")
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 40.0, h - 40.0]) - 20
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 1
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([0, 0, w - 1, h - 1.0])  # full image: runs continue across columns
    boxes[1] = torch.tensor([-50, -50, w + 50, h + 50.0])
    check(masks, boxes, h, w)


def test_all_ones_and_all_zeros():
    h, w = 7, 5
    boxes = torch.tensor([[0, 0, w - 1, h - 1.0]] * 2)
    masks = torch.stack([torch.ones(1, 28, 28), torch.zeros(1, 28, 28)])
    check(masks, boxes, h, w)


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_box_outside_image_is_an_empty_mask(compiled):
    rles, areas = paste_and_encode(torch.ones(1, 1, 28, 28), torch.tensor([[50.0, 50, 60, 60]]), height=10, width=10, compiled=compiled)
    assert areas.tolist() == [0]
    assert mask_utils.decode({"size": [10, 10], "counts": rles[0]["counts"].encode()}).sum() == 0


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here to build it")
def test_the_compiled_kernel_is_built_where_a_compiler_is():
    # installing the package builds encode/_paste.c; where that silently failed, only the torch
    # ops would be tested and run
    assert COMPILED, "mrcnn_batch/encode/_paste.c was not built: pip install -e . (see its output)"


@pytest.mark.parametrize("compiled", IMPLEMENTATIONS)
def test_a_box_far_outside_is_refused(compiled):
    with pytest.raises(ValueError, match="within"):
        paste_and_encode(torch.ones(1, 1, 28, 28), torch.tensor([[0.0, 0, 3e7, 5]]), height=10, width=10, compiled=compiled)


def test_values_that_are_not_probabilities():
    # NaN, infinities and negative values take the exact path: the same strings as torchvision
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(4, 1, 28, 28, generator=g) * 4 - 2
    masks[0, 0, 5:9, 5:9] = float("nan")
    masks[1, 0, 10:12, :] = float("inf")
    masks[2, 0, :, 3] = -float("inf")
    boxes = torch.tensor([[2.0, 3, 90, 70], [0, 0, 40, 30], [10, 5, 20, 100], [5, 5, 200, 150]])
    check(masks, boxes, 120, 160, 0.25)


def test_an_image_without_detections_encodes_to_no_rows():
    from mrcnn_batch.encode.rows import Columns, encode_detections
    from mrcnn_batch.predict.predictor import ImageDetections

    empty = ImageDetections(
        boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64),
        masks=torch.zeros(0, 1, 28, 28), kp_boxes=torch.zeros(0, 4), kp_scores=torch.zeros(0),
        kp_labels=torch.zeros(0, dtype=torch.int64), keypoints=torch.zeros(0, 17, 3),
        keypoint_scores=torch.zeros(0, 17), kp_instance=np.zeros(0, dtype=np.int64),
    )
    inst, kps = Columns(), Columns()
    n = encode_detections(empty, image_id=1, height=10, width=10, categories=("bg", "a"), mask_threshold=0.5, instances=inst, keypoints=kps)
    assert n == (0, 0) and len(inst) == 0 and len(kps) == 0


@st.composite
def near_threshold(draw):
    """Masks whose values sit on the threshold or a float32 step from it, or take few values
    (so that many pasted pixels tie), in boxes of every size class, in larger images."""
    h = draw(st.integers(1, 300))
    w = draw(st.integers(1, 400))
    n = draw(st.integers(1, 6))
    thr = draw(st.sampled_from([0.5, 0.25, 0.75, 0.3]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["levels", "on", "ulps", "plateau"]))
    if kind == "levels":
        m = torch.floor(torch.rand(n, 1, 28, 28, generator=g) * 8) / 8
    elif kind == "on":
        m = torch.where(torch.rand(n, 1, 28, 28, generator=g) < 0.5, thr, torch.rand(n, 1, 28, 28, generator=g))
    elif kind == "ulps":
        t = torch.tensor(thr, dtype=torch.float32)
        steps = torch.stack([torch.nextafter(t, torch.tensor(0.0)), t, torch.nextafter(t, torch.tensor(1.0))])
        m = steps[torch.randint(0, 3, (n, 1, 28, 28), generator=g)]
    else:
        m = torch.full((n, 1, 28, 28), thr)
        m[:, :, draw(st.integers(0, 27)) :, : draw(st.integers(0, 28))] = 1.0
    boxes = []
    for _ in range(n):
        x0, y0 = draw(st.floats(-20, w - 1)), draw(st.floats(-20, h - 1))
        bw = draw(st.sampled_from([draw(st.floats(0, 3)), draw(st.floats(20, 40)), draw(st.floats(50, 80)), draw(st.floats(0, 1.5 * w))]))
        bh = draw(st.sampled_from([draw(st.floats(0, 3)), draw(st.floats(20, 40)), draw(st.floats(50, 80)), draw(st.floats(0, 1.5 * h))]))
        boxes.append([x0, y0, x0 + bw, y0 + bh])
    return m, torch.tensor(boxes, dtype=torch.float32), h, w, thr


@settings(max_examples=150, deadline=None)
@given(near_threshold())
def test_values_on_and_next_to_the_threshold(det):
    masks, boxes, h, w, thr = det
    check(masks, boxes, h, w, thr)


@pytest.mark.parametrize("side", range(24, 36))
def test_box_sides_around_the_grid_size_and_the_kernel_switch(side):
    # interpolated sides of 30 (= 28 + 2: a plain copy) and h + w around 128 (torch's CPU kernel
    # changes its arithmetic there)
    g = torch.Generator().manual_seed(side)
    masks = torch.rand(6, 1, 28, 28, generator=g)
    s = side * 28 / 30
    boxes = torch.tensor([[3.0, 2, 3 + s, 2 + s], [1.0, 5, 1 + s, 5 + 90], [0.0, 0, 95, s], [2.0, 1, 2 + s, 1 + 3 * s],
                          [4.0, 4, 4 + 2 * s, 4 + 2 * s], [0.5, 0.5, 0.5 + 64 - s / 2, 0.5 + 64 + s / 2]])
    check(masks, boxes, 140, 150)


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        paste_and_encode(torch.ones(1, 1, 28, 28), torch.tensor([[0.0, 0, 5, 5]]), height=10, width=10, threshold=-0.1)
