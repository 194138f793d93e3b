"""Contract tests over every registered model, and user checkpoints with their own categories."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import QUICK, SMALL

import mrcnn_batch as mb
from mrcnn_batch.models.loaded import build_model, effective_spec
from mrcnn_batch.models.registry import get_spec, list_models
from mrcnn_batch.models.weights import Weights, WeightsUnavailable, load_weights

NAMES = [s.name for s in list_models()]


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_is_consistent(name):
    spec = get_spec(name)
    meta = spec.metadata()
    assert meta["name"] == name and meta["categories"]
    assert len(spec.keypoint_names) == len(spec.oks_sigmas)
    if spec.has_keypoints:
        assert spec.keypoint_category_id is not None
        assert all(0.0 < s <= 0.107 for s in spec.oks_sigmas)
        assert all(1 <= a <= len(spec.keypoint_names) and 1 <= b <= len(spec.keypoint_names) for a, b in spec.skeleton)
    for part in spec.components:
        assert get_spec(part).build is not None
    if not spec.components:
        net = spec.build(num_classes=len(spec.categories), **SMALL)
        assert net.roi_heads.box_predictor.cls_score.out_features == len(spec.categories)
        assert net.roi_heads.has_mask() == spec.has_masks
        assert net.roi_heads.has_keypoint() == spec.has_keypoints


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(KeyError, match="registered models: .*maskrcnn_resnet50_fpn"):
        get_spec("yolo")


def test_user_checkpoint_with_its_own_categories(tmp_path, image_dir):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(3)
    net = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.bias[1:] += 4
    ckpt = tmp_path / "mine.pt"
    torch.save({"model": net.state_dict(), "categories": ["__background__", "cat", "hat"]}, ckpt)
    weights = load_weights(str(ckpt))
    spec = effective_spec(get_spec("maskrcnn_resnet50_fpn"), weights)
    assert spec.categories == ("__background__", "cat", "hat")
    mb.infer(str(image_dir), str(tmp_path / "run"), weights=str(ckpt), classes=["hat"], **QUICK)
    run = mb.open_run(str(tmp_path / "run"))
    inst = run.read_table("instances")
    assert inst.num_rows > 0 and set(inst.column("category").to_pylist()) == {"hat"}
    assert set(inst.column("category_id").to_pylist()) == {2}
    assert [c["name"] for c in run.run_meta().model["categories"]] == ["cat", "hat"]


def test_weights_that_do_not_fit_are_refused(tmp_path, keypoint_weights, mask_weights):
    from mrcnn_batch.models.loaded import check_fit

    with pytest.raises(WeightsUnavailable, match="do not fit 'maskrcnn_resnet50_fpn'"):
        build_model("maskrcnn_resnet50_fpn", load_weights(str(keypoint_weights)), **SMALL)
    # the same verdict on the meta device, in one line: what is missing, unexpected, reshaped
    with pytest.raises(WeightsUnavailable, match=r"do not fit 'maskrcnn_resnet50_fpn': \d+ missing keys \(e\.g\. roi_heads\.mask"):
        check_fit("maskrcnn_resnet50_fpn", load_weights(str(keypoint_weights)))
    check_fit("maskrcnn_resnet50_fpn", load_weights(str(mask_weights)))
    check_fit("keypointrcnn_resnet50_fpn", load_weights(str(keypoint_weights)))
    both = {**{f"mask.{k}": v for k, v in load_weights(str(mask_weights)).state_dict.items()},
            **{f"keypoint.{k}": v for k, v in load_weights(str(keypoint_weights)).state_dict.items()}}
    check_fit("maskrcnn+keypointrcnn_resnet50_fpn", Weights(source="both", sha256="0", state_dict=both))
    check_fit("demo", load_weights("package://mrcnn_batch/models/weights/demo.pt"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsUnavailable, match="not a loadable state dict"):
        load_weights(str(tmp_path / "junk.pth"))
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_weights(str(tmp_path / "none.pth"))
    w = Weights(source="x", sha256="0", state_dict={"a": torch.zeros(1)})
    with pytest.raises(WeightsUnavailable, match="mask\\."):
        build_model("maskrcnn+keypointrcnn_resnet50_fpn", w)


def test_an_entry_knows_its_categories_and_which_labels_classes_keeps():
    from mrcnn_batch.models.registry import get_spec

    mask, kp = get_spec("maskrcnn_resnet50_fpn"), get_spec("keypointrcnn_resnet50_fpn")
    assert kp.category_ids() == {"person": 1}  # label 0 ("no person") is background, not a category
    assert len(mask.category_ids()) == 80 and "N/A" not in mask.category_ids()
    assert mask.keep_labels(("dog", "person")) == (1, 18)
    assert mask.keep_labels(()) is None
    with pytest.raises(ValueError, match="unknown class name.*'N/A'"):
        mask.keep_labels(("N/A",))
    assert [c["id"] for c in kp.metadata()["categories"]] == [1]


@pytest.mark.parametrize("name", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "keypointrcnn_resnet50_fpn"])
def test_torchvision_entries_hold_torchvision_s_metadata(name):
    """The entries keep torchvision's metadata as data (so the registry reads without torch):
    equal to the weights enum's own, so that a torchvision upgrade that changes it fails here."""
    from torchvision.models import detection

    spec = get_spec(name)
    enum, member = spec.default_weights.removeprefix("torchvision:").split(".")
    meta = getattr(getattr(detection, enum), member).meta
    assert spec.categories == tuple(meta["categories"])
    assert spec.reference_metrics == meta["_metrics"]
    assert spec.keypoint_names == tuple(meta.get("keypoint_names", ()))


def test_the_registry_reads_without_torch():
    """Naming a model, listing the registry and a misspelt --model answer without importing torch
    (about 1 s instead of 7 on this machine): torch comes with the first network built."""
    code = ("import sys; from mrcnn_batch.models import registry; s = registry.get_spec('demo');"
            "s.keep_labels(['ellipse']); [m.metadata() for m in registry.list_models()];"
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False", res.stderr
    cli = ("import runpy, sys; sys.argv = ['mrcnn-batch', 'infer', '.', 'out', '--model', 'nosuch']\n"
           "try:\n    runpy.run_module('mrcnn_batch.cli', run_name='__main__')\n"
           "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True, check=False)
    assert res.stdout.split() == ["2", "False"], res.stdout + res.stderr
    assert "unknown model 'nosuch'" in res.stderr
