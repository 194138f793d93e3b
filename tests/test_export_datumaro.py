"""A ``coco-dir`` export imports into datumaro, the real importer, as instances and as person
keypoints: every ok image with its pixels, every instance's box and mask, every keypoint
detection's points, under the categories the export declares.

datumaro pins libraries this project runs newer (pandas 2.3, pyarrow 25, pillow 12), so it
lives in an environment of its own, ``.venv-datumaro`` (``make test`` builds it; elsewhere set
``MRCNN_BATCH_DATUMARO_PYTHON`` to a Python that has datumaro); the test runs the importer there
and compares what it read with the run's tables here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from test_render import make_run
from typer.testing import CliRunner

from mrcnn_batch.cli import app
from mrcnn_batch.datasets.shapes import (
    CATEGORIES,
    HELDOUT_SEED,
    TRIANGLE_ID,
    write_dataset,
)
from mrcnn_batch.run.layout import open_run

REPO = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("MRCNN_BATCH_DATUMARO_PYTHON") or str(REPO / ".venv-datumaro" / "bin" / "python")
pytestmark = pytest.mark.skipif(not Path(PYTHON).exists(),
                                reason=f"no datumaro environment at {PYTHON} (`make test` builds .venv-datumaro)")

READ = r"""
import json, sys
import numpy as np
import datumaro as dm

fmt, path = sys.argv[1], sys.argv[2]
ds = dm.Dataset.import_from(path, fmt)
names = [c.name for c in ds.categories()[dm.AnnotationType.label]]
items = {}
for item in ds:
    anns = []
    for a in item.annotations:
        entry = {"type": type(a).__name__, "category": names[a.label], "score": a.attributes.get("score")}
        if isinstance(a, dm.Bbox):
            entry["bbox"] = [a.x, a.y, a.w, a.h]
        elif isinstance(a, dm.Mask):
            m = np.asarray(a.image, dtype=bool)
            entry["pixels"] = [int(v) for v in np.flatnonzero(m.ravel())]
            entry["shape"] = list(m.shape)
        elif isinstance(a, dm.Points):
            entry["points"] = [float(v) for v in a.points]
        anns.append(entry)
    items[item.id] = {"shape": list(item.media.data.shape), "annotations": anns}
print(json.dumps({"categories": names, "items": items}))
"""


def datumaro(fmt: str, path: Path) -> dict:
    res = subprocess.run([PYTHON, "-c", READ, fmt, str(path)], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes")
    coco = write_dataset(str(d), seed=HELDOUT_SEED + 2, num_images=5)
    run = make_run(tmp_path_factory.mktemp("run") / "run", coco, d / "images", score=0.7)
    out = tmp_path_factory.mktemp("export") / "dataset"
    res = CliRunner().invoke(app, ["export", str(run), "--format", "coco-dir", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return run, out, coco


def test_coco_dir_imports_into_datumaro_as_instances(exported):
    run, out, _ = exported
    got = datumaro("coco", out)
    assert got["categories"] == list(CATEGORIES[1:])  # the declared categories, in id order
    rd = open_run(str(run))
    images = {Path(r["uri"]).stem: r for r in rd.read_table("images").to_pylist()}
    assert sorted(got["items"]) == sorted(images)  # every ok image, under its own name
    instances = rd.read_table("instances").to_pylist()
    seen = 0
    for name, item in got["items"].items():
        image = images[name]
        assert item["shape"][:2] == [image["height"], image["width"]]  # the pixels came along
        rows = [r for r in instances if r["image_id"] == image["image_id"]]
        boxes = sorted((CATEGORIES[r["category_id"]], *r["bbox"]) for r in rows)
        assert sorted((a["category"], *a["bbox"]) for a in item["annotations"] if a["type"] == "Bbox") == boxes
        masks = sorted((CATEGORIES[r["category_id"]], tuple(np.flatnonzero(
            mask_utils.decode({**r["mask"], "counts": r["mask"]["counts"].encode()}).astype(bool).ravel()))) for r in rows)
        theirs = sorted((a["category"], tuple(a["pixels"])) for a in item["annotations"] if a["type"] == "RleMask")
        assert theirs == masks
        seen += len(rows)
        assert all(a["score"] == pytest.approx(0.7) for a in item["annotations"])
    assert seen == len(instances) > 0


def test_coco_dir_imports_into_datumaro_as_person_keypoints(exported):
    run, out, _ = exported
    got = datumaro("coco_person_keypoints", out / "annotations" / "person_keypoints_default.json")
    assert got["categories"] == [CATEGORIES[TRIANGLE_ID]]  # the keypoint category alone, as COCO ships it
    rd = open_run(str(run))
    names = {r["image_id"]: Path(r["uri"]).stem for r in rd.read_table("images").to_pylist()}
    want = sorted((names[r["image_id"]], tuple(v for i, v in enumerate(r["keypoints"]) if i % 3 != 2))
                  for r in rd.read_table("keypoints").to_pylist())
    theirs = sorted((name, tuple(a["points"])) for name, item in got["items"].items()
                    for a in item["annotations"] if a["type"] == "Points")
    assert len(want) > 0 and [n for n, _ in theirs] == [n for n, _ in want]
    for (_, a), (_, b) in zip(theirs, want):
        assert a == pytest.approx(b, abs=0.006)  # datumaro keeps points to two decimals


def test_coco_dir_names_collide_never(tmp_path):
    """Two images of the same file name in different folders get their image ids in front."""
    from mrcnn_batch.export.coco import _dataset_file_names

    images = [{"id": 7, "file_name": "file:///a/x.jpg", "coco_url": "file:///a/x.jpg"},
              {"id": 9, "file_name": "file:///b/x.jpg", "coco_url": "file:///b/x.jpg"},
              {"id": 3, "file_name": "file:///b/y.jpg", "coco_url": "file:///b/y.jpg"}]
    assert _dataset_file_names(images, None) == {7: "7-x.jpg", 9: "9-x.jpg", 3: "y.jpg"}
    rooted = [{"id": 1, "file_name": "sub/x.jpg", "coco_url": "file:///r/sub/x.jpg"}]
    assert _dataset_file_names(rooted, "/r") == {1: "sub/x.jpg"}


def test_the_keypoint_file_leaves_the_instances_file_as_it_was():
    """person_keypoints_*.json gives every annotation of the keypoint category its keypoints
    (zeros where none was found) in its own copies: the instances file keeps its annotations."""
    from mrcnn_batch.export.coco import person_keypoints

    dataset = {"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "t", "keypoints": ["p", "q"]}],
               "annotations": [{"id": 1, "category_id": 3, "keypoints": [1.0, 2.0, 2.0, 3.0, 4.0, 2.0], "num_keypoints": 2},
                               {"id": 2, "category_id": 3}, {"id": 3, "category_id": 1}]}
    before = json.dumps(dataset)
    kp = person_keypoints(dataset)
    assert json.dumps(dataset) == before
    assert [c["id"] for c in kp["categories"]] == [3]
    assert [(a["id"], a["keypoints"], a["num_keypoints"]) for a in kp["annotations"]] == [
        (1, [1.0, 2.0, 2.0, 3.0, 4.0, 2.0], 2), (2, [0.0] * 6, 0)]
    assert person_keypoints({**dataset, "categories": dataset["categories"][:1]}) is None
