"""``mrcnn-batch inspect``: the numbers of each stage against hooks of our own on torchvision's
modules, the final detections against infer's rows, the page's escaping and its load in a
browser, and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES, QUICK, QUICK_ARGS, SMALL
from test_report import load_page, needs_chromium
from typer.testing import CliRunner

from mrcnn_batch.cli import app
from mrcnn_batch.datasets.shapes import write_dataset
from mrcnn_batch.models.loaded import build_model, resolve_weights
from mrcnn_batch.models.registry import get_spec
from mrcnn_batch.read import decode_image
from mrcnn_batch.run.layout import open_run

pytestmark = pytest.mark.heavy  # many model runs without Ray: scheduled early (tests/conftest.py)

PHOTO = IMAGES / "dog.jpg"  # 800 x 534
SMALL_ARGS = ["--min-size", str(SMALL["min_size"]), "--max-size", str(SMALL["max_size"])]


def inspect_cli(image: Path, out: Path, *args: str) -> dict:
    res = CliRunner().invoke(app, ["inspect", str(image), "--out", str(out), "--device", "cpu", *args])
    assert res.exit_code == 0, res.output
    assert (out / "inspect.html").is_file()
    return json.loads((out / "inspect.json").read_text())


@pytest.fixture(scope="module")
def shapes_image(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(str(root), seed=11, num_images=1)
    return next((root / "images").iterdir())


def independent_run(image: Path, model: str, weights: str | None, **sizes) -> dict:
    """The model called on the image as torchvision calls it, with hooks of this test's own."""
    spec = get_spec(model)
    net = build_model(model, resolve_weights(spec, weights), **sizes).networks["main"]
    seen = {}
    handles = [
        net.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("features", o)),
        net.rpn.anchor_generator.register_forward_hook(lambda m, i, o: seen.__setitem__("anchors", o[0])),
        net.rpn.register_forward_hook(lambda m, i, o: seen.__setitem__("proposals", o[0][0])),
        net.roi_heads.box_head.register_forward_hook(lambda m, i, o: seen.__setitem__("box_head", o)),
        net.transform.register_forward_hook(lambda m, i, o: seen.__setitem__("batch", o[0])),
    ]
    if getattr(net.roi_heads, "mask_predictor", None) is not None:
        handles.append(net.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("mask_logits", o)))
    if getattr(net.roi_heads, "keypoint_predictor", None) is not None:
        handles.append(net.roi_heads.keypoint_predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("heatmaps", o)))
    array = decode_image(image.read_bytes(), max_pixels=10**9).array
    with torch.inference_mode():
        seen["output"] = net([torch.from_numpy(array).permute(2, 0, 1).float() / 255])[0]
    for h in handles:
        h.remove()
    seen["array"] = array
    seen["per_location"] = net.rpn.anchor_generator.num_anchors_per_location()
    return seen


def by_name(got: dict) -> dict:
    return {s["name"]: s for s in got["stages"]}


def check_against_hooks(got: dict, ref: dict) -> None:
    stages = by_name(got)
    h, w = ref["array"].shape[:2]
    assert stages["decoded image"]["shape"] == [h, w, 3] and stages["decoded image"]["dtype"] == "uint8"
    assert got["image"]["original_size"] == [h, w]
    batch = ref["batch"]
    assert stages["batch tensor"]["shape"] == list(batch.tensors.shape)
    assert stages["batch tensor"]["mean"] == pytest.approx(float(batch.tensors.double().mean()), rel=1e-6)
    assert got["image"]["resized_size"] == list(batch.image_sizes[0])
    assert got["image"]["scale"] == pytest.approx([batch.image_sizes[0][0] / h, batch.image_sizes[0][1] / w])
    features = ref["features"]
    assert [lv["name"] for lv in got["levels"]] == list(features)
    for lv, (name, f) in zip(got["levels"], features.items()):
        assert lv["feature_shape"] == list(f.shape)
        s = stages[f"feature map {name}"]
        assert s["shape"] == list(f.shape)
        assert (s["min"], s["max"]) == pytest.approx((float(f.min()), float(f.max())), rel=1e-5, abs=1e-6)
    # the anchor count is the sum over levels of H_l * W_l * anchors per location
    expected = sum(f.shape[-2] * f.shape[-1] * a for f, a in zip(features.values(), ref["per_location"]))
    assert got["anchors"]["total"] == expected == ref["anchors"].shape[0]
    assert stages["anchors (all levels)"]["shape"] == [expected, 4]
    assert len(got["anchors"]["centre"]) == sum(ref["per_location"])
    assert got["rpn"]["decoded"] == expected
    assert got["rpn"]["after_nms"] == ref["proposals"].shape[0] == stages["proposals after NMS"]["shape"][0]
    assert got["rois"] == ref["proposals"].shape[0] == ref["box_head"].shape[0]
    n = len(ref["output"]["boxes"])
    assert len(got["detections"]) == n
    # the detections are torchvision's own (to float noise): its forward, pasting and all
    if n:
        assert np.allclose([d["box_xyxy"] for d in got["detections"]], ref["output"]["boxes"].numpy(), atol=1e-3)
        assert [d["label"] for d in got["detections"]] == ref["output"]["labels"].tolist()
    if "mask_logits" in ref:
        m = ref["mask_logits"].shape[-1]
        assert stages["mask logits (own label)"]["shape"] == [n, m, m]
        assert stages["mask logits (all classes)"]["shape"] == list(ref["mask_logits"].shape)
    if "heatmaps" in ref:
        assert stages["keypoint heatmaps"]["shape"] == list(ref["heatmaps"].shape)


def test_demo_model_on_a_shapes_image(shapes_image, tmp_path):
    got = inspect_cli(shapes_image, tmp_path / "out", "--model", "demo")
    check_against_hooks(got, independent_run(shapes_image, "demo", None))
    assert got["model"]["has_keypoints"] and got["detections"]
    assert len(got["keypoint_detections"]) >= 1
    page = (tmp_path / "out" / "inspect.html").read_text()
    assert "Keypoint heatmaps" in page and "Masks" in page and page.count("data:image/png;base64,") >= 5


def test_random_torchvision_mask_rcnn_on_a_photo(tmp_path, mask_weights):
    got = inspect_cli(PHOTO, tmp_path / "out", "--weights", str(mask_weights), *SMALL_ARGS)
    check_against_hooks(got, independent_run(PHOTO, "maskrcnn_resnet50_fpn", str(mask_weights), **SMALL))
    assert [lv["name"] for lv in got["levels"]] == ["0", "1", "2", "3", "pool"]
    assert all(lv["anchors_per_location"] == 3 for lv in got["levels"])
    assert got["rpn"]["after_nms"] > 100  # the model's own 1000 proposals (fewer where NMS leaves fewer)


def test_fewer_proposals_as_infer_takes_them(tmp_path, mask_weights):
    got = inspect_cli(PHOTO, tmp_path / "out", "--weights", str(mask_weights), *QUICK_ARGS)
    check_against_hooks(got, independent_run(PHOTO, "maskrcnn_resnet50_fpn", str(mask_weights), **QUICK))
    assert got["rpn"]["after_nms"] == 100 and got["settings"]["rpn_proposals"] == 100
    assert len(got["detections"]) <= 10


def test_detections_equal_infers_rows(tmp_path, mask_weights):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(PHOTO, folder / PHOTO.name)
    args = ["--weights", str(mask_weights), *QUICK_ARGS, "--score-threshold", "0.3"]  # inspect takes infer's settings
    got = inspect_cli(folder / PHOTO.name, tmp_path / "inspect", *args)
    res = CliRunner().invoke(app, ["infer", str(folder), str(tmp_path / "run"), "--executor", "local", "--no-progress",
                                   "--device", "cpu", *args])
    assert res.exit_code == 0, res.output
    rows = open_run(str(tmp_path / "run")).read_table("instances").sort_by("instance_id").to_pylist()
    dets = got["detections"]
    assert len(rows) == len(dets) > 0
    assert [d["label"] for d in dets] == [r["category_id"] for r in rows]
    assert [d["category"] for d in dets] == [r["category"] for r in rows]
    assert np.allclose([d["score"] for d in dets], [r["score"] for r in rows], atol=1e-4, rtol=0)
    assert np.allclose([d["bbox"] for d in dets], [r["bbox"] for r in rows], atol=1e-4, rtol=0)
    xyxy = np.array([d["box_xyxy"] for d in dets])
    xywh = np.array([r["bbox"] for r in rows])
    assert np.allclose(xyxy[:, :2], xywh[:, :2], atol=1e-4) and np.allclose(xyxy[:, 2:] - xyxy[:, :2], xywh[:, 2:], atol=1e-4)
    assert [d["area"] for d in dets] == [r["area"] for r in rows]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, mask_weights):
    """A checkpoint whose category names, and an image whose name, are markup."""
    d = tmp_path_factory.mktemp("hostile")
    state = torch.load(mask_weights, weights_only=True)
    names = ["__background__"] + [f'<img src=x onerror=alert({i})>&"c{i}' for i in range(1, 91)]
    torch.save({"model": state, "categories": names}, d / "hostile.pth")
    image = d / "<b>dog&'x'.jpg"
    shutil.copy(PHOTO, image)
    out = d / "out"
    got = inspect_cli(image, out, "--weights", str(d / "hostile.pth"), *SMALL_ARGS)
    return out, got


def test_every_string_of_the_data_is_escaped(hostile):
    out, got = hostile
    page = (out / "inspect.html").read_text()
    assert got["detections"] and got["detections"][0]["category"].startswith("<img")
    assert "<img src=x" not in page and "<b>dog" not in page
    assert "&lt;img src=x onerror=alert(" in page and "&lt;b&gt;dog&amp;&#x27;x&#x27;.jpg" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "default-src &#x27;none&#x27;" not in page and "default-src 'none'" in page


@needs_chromium
def test_page_loads_in_chromium_without_errors(hostile, tmp_path):
    out, _ = hostile
    got = load_page((out / "inspect.html").as_uri(), user_data_dir=tmp_path / "profile", screenshot=tmp_path / "page.png")
    assert got["loaded"] == [True]
    assert got["errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in got["requests"]), got["requests"]
    assert got["height"][0] > 1500


def test_a_composite_model_is_refused_in_one_line(tmp_path):
    res = CliRunner().invoke(app, ["inspect", str(PHOTO), "--model", "maskrcnn+keypointrcnn_resnet50_fpn", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "--model maskrcnn_resnet50_fpn or --model keypointrcnn_resnet50_fpn" in " ".join(res.output.split())
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["nothing.jpg"], "does not exist"),
    ([str(PHOTO), "--model", "nope"], "unknown model 'nope'"),
    ([str(PHOTO), "--weights", "missing.pth"], "does not exist"),
])
def test_bad_input_exits_2(tmp_path, args, message):
    res = CliRunner().invoke(app, ["inspect", *args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_an_image_that_does_not_decode_exits_2(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = CliRunner().invoke(app, ["inspect", str(bad), "--model", "demo", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "cannot be inspected (decode_error)" in res.output


def test_the_default_output_folder_is_named_after_the_image(shapes_image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["inspect", str(shapes_image), "--model", "demo", "--top", "3"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / f"inspect-{shapes_image.stem}"
    assert (folder / "inspect.html").is_file() and (folder / "inspect.json").is_file()
