"""The speed switches that stay off by default (``--channels-last``, ``--amp``), run on CPU with
the demo model on held-out synthetic images: NHWC gives the same rows up to float noise; mixed
precision (bfloat16 on CPU) keeps the accuracy and is part of the run's identity."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import mrcnn_batch as mb
from mrcnn_batch.config import IOU_TYPES
from mrcnn_batch.datasets.shapes import HELDOUT_SEED, write_dataset
from mrcnn_batch.evaluate.distributed import evaluate_run
from mrcnn_batch.evaluate.groundtruth import load_ground_truth
from mrcnn_batch.run.driver import RunRefused

pytestmark = pytest.mark.heavy  # many model runs without Ray: scheduled early (tests/conftest.py)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    write_dataset(str(root), seed=HELDOUT_SEED, num_images=16)
    return root


def run(heldout, out, **options):
    summary = mb.infer(str(heldout / "annotations.json"), str(out), image_root=str(heldout / "images"),
                       model="demo", shard_size=8, batch_size=4, **options)
    assert summary.complete and summary.images_by_status == {"ok": 16}
    return mb.open_run(str(out))


def ap(heldout, out) -> dict[str, float]:
    gt = load_ground_truth(str(heldout / "annotations.json"), iou_types=IOU_TYPES)
    res, _ = evaluate_run(str(out), gt, iou_types=IOU_TYPES, workers=0)
    return {t: float(r.stats[0]) for t, r in res.items()}


@pytest.fixture(scope="module")
def plain(heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    run(heldout, out)
    return out


def _instances(run_dir) -> list[dict]:
    rows = mb.open_run(str(run_dir)).read_table("instances").to_pylist()
    return sorted(rows, key=lambda r: (r["image_id"], r["instance_id"]))


def test_channels_last_gives_the_same_rows(heldout, plain, tmp_path):
    run(heldout, tmp_path / "nhwc", channels_last=True)
    a, b = _instances(plain), _instances(tmp_path / "nhwc")
    assert len(a) == len(b) > 50
    for x, y in zip(a, b):
        assert (x["image_id"], x["instance_id"], x["category_id"]) == (y["image_id"], y["instance_id"], y["category_id"])
        np.testing.assert_allclose(x["score"], y["score"], atol=1e-4)
        np.testing.assert_allclose(x["bbox"], y["bbox"], atol=1e-2)
        rles = [{"size": r["mask"]["size"], "counts": r["mask"]["counts"].encode()} for r in (x, y)]
        assert mask_utils.iou(rles[:1], rles[1:], [0])[0, 0] > 0.99
    assert ap(heldout, tmp_path / "nhwc") == pytest.approx(ap(heldout, plain), abs=1e-3)


def test_mixed_precision_keeps_the_accuracy_and_is_part_of_the_identity(heldout, plain, tmp_path):
    out = tmp_path / "amp"
    run(heldout, out, amp=True)
    assert mb.open_run(str(out)).run_meta().identity["amp"] is True
    full, mixed = ap(heldout, plain), ap(heldout, out)
    for t in IOU_TYPES:
        assert full[t] > 0.6 and abs(mixed[t] - full[t]) < 0.05, (t, full, mixed)
    scores = [r["score"] for r in _instances(out)]
    assert scores != [r["score"] for r in _instances(plain)]  # bfloat16 really ran
    with pytest.raises(RunRefused, match="amp"):
        run(heldout, plain, amp=True)  # a float32 run is not resumed in mixed precision


def test_channels_last_really_changes_the_memory_format():
    import torch

    from mrcnn_batch.models.demo import WEIGHTS_URI
    from mrcnn_batch.models.loaded import build_model
    from mrcnn_batch.models.weights import load_weights
    from mrcnn_batch.predict.predictor import Predictor, Speed

    model = build_model("demo", load_weights(WEIGHTS_URI))
    predictor = Predictor(model, device=torch.device("cpu"), speed=Speed(channels_last=True))
    convs = [m.weight for m in predictor.model.networks["main"].backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs
                         if w.shape[-1] > 1)
