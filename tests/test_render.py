"""Overlays and the instance gallery: torchvision's drawing puts mask colour where the masks
are, box colour on the box edges, keypoints on their coordinates; ``render`` writes them for
a run. ``make_run`` (a run directory built from ground truth, no model) is shared with the
report and export tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mrcnn_batch.datasets.shapes import HELDOUT_SEED, TRIANGLE_ID, write_dataset
from mrcnn_batch.encode.masks import decode_rle
from mrcnn_batch.models.registry import get_spec
from mrcnn_batch.render import (
    OverlayStyle,
    draw_overlay,
    image_records,
    instance_gallery,
    load_run_images,
    render_run,
)
from mrcnn_batch.render.overlays import category_color, overlay_name
from mrcnn_batch.run.layout import RUN_JSON, SUCCESS, RunDir, commit_path, table_path
from mrcnn_batch.write.tables import build_table, table_bytes


def make_run(
    root: Path,
    coco: dict[str, Any],
    image_dir: Path,
    *,
    score: float = 0.9,
    categories: Sequence[str] | None = None,
    failures: Sequence[dict[str, Any]] = (),
    shard_size: int = 4,
) -> str:
    """A committed run directory whose predictions are ``coco``'s ground truth (score ``score``).

    ``categories`` renames the model's categories (index = id); ``failures`` adds images rows
    (``image_id``, ``uri``, ``status``, ``error``) that failed.
    """
    spec = get_spec("demo")
    cats = tuple(categories or spec.categories)
    run = RunDir(str(root), {})
    run.fs.makedirs(run.root, exist_ok=True)
    run_id = "test-run"
    meta = {
        "run_id": run_id, "created_at": time.time() - 5, "schema_version": "1",
        "config": {"input": {"url": str(image_dir.parent / "annotations.json")}, "read": {"max_pixels": 10**8, "exif_transpose": True}},
        "model": {**spec.metadata(), "categories": [{"id": i, "name": n} for i, n in enumerate(cats) if i]},
        "weights": {"source": "ground truth", "sha256": "0"}, "versions": {"test": "1"},
    }
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    entries = [("ok", im, None) for im in coco["images"]] + [(f["status"], f, f) for f in failures]
    shards = [entries[i:i + shard_size] for i in range(0, len(entries), shard_size)]
    for s, chunk in enumerate(shards):
        cols: dict[str, dict[str, list]] = {"images": {}, "instances": {}, "keypoints": {}}

        def add(table: str, **row: Any) -> None:
            for k, v in row.items():
                cols[table].setdefault(k, []).append(v)

        for status, im, fail in chunk:
            if fail is not None:
                add("images", image_id=fail["image_id"], uri=fail["uri"], shard=s, status=status, error=fail["error"],
                    width=None, height=None, num_instances=0, num_keypoints=0)
                continue
            rows = anns.get(im["id"], [])
            kp_rows = [a for a in rows if a["category_id"] == TRIANGLE_ID]
            add("images", image_id=im["id"], uri=(image_dir / im["file_name"]).as_uri(), shard=s, status="ok", error=None,
                width=im["width"], height=im["height"], num_instances=len(rows), num_keypoints=len(kp_rows))
            for k, a in enumerate(rows):
                add("instances", image_id=im["id"], instance_id=k, category_id=a["category_id"], category=cats[a["category_id"]],
                    score=score, bbox=a["bbox"], area=a["area"], mask=a["segmentation"])
                if a["category_id"] == TRIANGLE_ID:
                    add("keypoints", image_id=im["id"], instance_id=k, category_id=a["category_id"],
                        category=cats[a["category_id"]], score=score, bbox=a["bbox"], keypoints=a["keypoints"],
                        keypoint_scores=[1.0] * 3, mask_instance_id=k)
        rows_out, sizes = {}, {}
        for name, c in cols.items():
            table = build_table(name, c, categories=cats, run_id=run_id)
            sizes[name] = run.write_bytes(table_path(name, s), table_bytes(table))
            rows_out[name] = table.num_rows
        run.write_json(commit_path(s), {
            "shard": s, "run_id": run_id, "rows": rows_out, "bytes": sizes, "status_counts": {}, "worker": "test:1",
            "committed_at": time.time(), "seconds": 0.5, "model_seconds": 0.3,
        })
    meta["plan"] = {"images": len(entries), "shards": len(shards)}
    run.write_json(RUN_JSON, meta)
    run.write_json(SUCCESS, {"run_id": run_id})
    return str(root)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    d = tmp_path_factory.mktemp("heldout")
    coco = write_dataset(str(d), seed=HELDOUT_SEED, num_images=6)
    return d, coco


@pytest.fixture(scope="module")
def gt_run(heldout, tmp_path_factory) -> str:
    d, coco = heldout
    return make_run(tmp_path_factory.mktemp("run") / "run", coco, d / "images")


def _record(gt_run: str, image_id: int):
    run = RunDir(gt_run, {})
    rec = image_records(run, image_ids=[image_id])[0]
    return run, rec, load_run_images(run, [rec], storage_options={})[0]


def test_masks_get_their_category_colour_exactly_where_they_are(gt_run):
    run, rec, image = _record(gt_run, 1)
    style = OverlayStyle(boxes=False, keypoints=False, mask_alpha=0.6)
    out = draw_overlay(image, rec.instances, skeleton=(), style=style).permute(1, 2, 0).numpy().astype(float)
    src = image.astype(float)
    covered = np.zeros(image.shape[:2], bool)
    for inst in rec.instances:
        m = decode_rle(inst["mask"])
        assert m.sum() == pytest.approx(inst["area"])
        expected = 0.4 * src[m] + 0.6 * np.array(category_color(inst["category_id"]), float)
        assert np.abs(out[m] - expected).max() <= 1.0, inst["category"]
        covered |= m
    assert covered.any()
    assert np.array_equal(out[~covered], src[~covered])  # nothing drawn outside the masks


def test_boxes_and_keypoints_are_drawn_where_the_rows_say(gt_run):
    run, rec, image = _record(gt_run, 1)
    inst = rec.instances[0]
    out = draw_overlay(image, [inst], style=OverlayStyle(masks=False, labels=False, keypoints=False, box_width=1)).permute(1, 2, 0).numpy()
    x, y, w, h = (int(round(v)) for v in inst["bbox"])
    edge = out[y, x:x + w]  # the top edge
    assert (edge == np.array(category_color(inst["category_id"]), np.uint8)).all(axis=1).mean() > 0.9
    tri = next(r for r in rec.keypoints)
    out = draw_overlay(image, [], [tri], skeleton=[[1, 2], [2, 3], [3, 1]],
                       style=OverlayStyle(masks=False, boxes=False, keypoint_radius=2)).permute(1, 2, 0).numpy()
    changed = (out != image).any(axis=2)
    for kx, ky, _ in np.array(tri["keypoints"]).reshape(-1, 3):
        assert changed[int(ky), int(kx)]
    assert changed.sum() > 20  # the skeleton's edges too


def test_score_threshold_hides_low_scores(gt_run):
    run, rec, image = _record(gt_run, 2)
    out = draw_overlay(image, rec.instances, rec.keypoints, style=OverlayStyle(score_threshold=0.95))
    assert torch.equal(out, torch.from_numpy(image).permute(2, 0, 1))


def test_records_hold_their_images_rows_read_from_their_own_shards(gt_run):
    # six images in shards of four: records of images of both shards, in the order asked
    run = RunDir(gt_run, {})
    assert len(run.committed_shards()) == 2
    recs = image_records(run, image_ids=[6, 1, 5])
    assert [r.image_id for r in recs] == [6, 1, 5]
    for name, field in (("instances", "instances"), ("keypoints", "keypoints")):
        rows = run.dataset(name).to_table().sort_by([("image_id", "ascending"), ("instance_id", "ascending")]).to_pylist()
        for r in recs:
            assert list(getattr(r, field)) == [row for row in rows if row["image_id"] == r.image_id], (name, r.image_id)
    assert sum(len(r.instances) for r in recs) > 0 and sum(len(r.keypoints) for r in recs) > 0


def test_gallery_has_a_row_per_category(gt_run):
    run = RunDir(gt_run, {})
    recs = image_records(run, limit=6)
    arrays = load_run_images(run, recs, storage_options={})
    grid, rows = instance_gallery(recs, arrays, skeleton=[[1, 2], [2, 3], [3, 1]])
    assert rows == sorted({i["category"] for r in recs for i in r.instances})
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3
    assert grid.shape[1] == len(rows) * (112 + 4) + 4


def test_overlay_names_are_the_file_stem_and_the_id():
    assert overlay_name("file:///photos/dog.jpg", 3913895878567093081) == "dog-3913895878567093081.png"
    assert overlay_name("s3://b/x/Ünïcode photo?.JPEG", 7) == "Ünïcode_photo-7.png"
    assert overlay_name("tar://s0/000123.jpg::s3://b/shard-000.tar", 1) == "000123-1.png"
    assert overlay_name("file:///x/a%20b.jpg", 3) == "a_b-3.png"
    assert overlay_name("file:///x/" + "a" * 200 + ".png", 2) == "a" * 80 + "-2.png"
    assert overlay_name("file:///x/.hidden", 5) == "hidden-5.png"


def test_render_run_and_cli(gt_run, tmp_path):
    written = render_run(gt_run, str(tmp_path / "a"), limit=3)
    assert [Path(w).name for w in written] == ["000001-1.png", "000002-2.png", "000003-3.png"]  # file stem, image id
    with Image.open(tmp_path / "a" / "000001-1.png") as im:
        run, rec, image = _record(gt_run, 1)
        assert im.size == (rec.width, rec.height)
    from mrcnn_batch.cli import app

    res = CliRunner().invoke(app, ["render", gt_run, "--out", str(tmp_path / "b"), "--image-id", "4", "--image-id", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["000002-2.png", "000004-4.png", "gallery.png"]
    res = CliRunner().invoke(app, ["render", gt_run, "--out", str(tmp_path / "c"), "--image-id", "999"])
    assert res.exit_code == 2 and "999" in res.output


def test_labels_and_lines_grow_with_the_image():
    """A label readable on a 640 px image is as readable on a 1920 px photo: its text and the
    box's lines are three times as large there (they were fixed, unreadable on large photos)."""
    def white_and_colour(scale: int) -> tuple[int, int]:
        image = np.zeros((480 * scale, 640 * scale, 3), np.uint8)
        inst = {"score": 0.9, "category_id": 1, "category": "person", "mask": None,
                "bbox": [100.0 * scale, 200.0 * scale, 300.0 * scale, 200.0 * scale]}
        out = draw_overlay(image, [inst], style=OverlayStyle(masks=False)).permute(1, 2, 0).numpy()
        white = int((out > 180).all(axis=2).sum())  # the text, anti-aliased
        colour = int((out == np.array(category_color(1), np.uint8)).all(axis=2).sum())
        return white, colour

    (w1, c1), (w3, c3) = white_and_colour(1), white_and_colour(3)
    assert w1 > 0 and c1 > 0
    assert 5 < w3 / w1 < 14 and 5 < c3 / c1 < 14  # about 3 x 3: text and lines scale in both directions
    # the label stays inside the image when its box touches the top edge
    image = np.zeros((100, 160, 3), np.uint8)
    inst = {"score": 0.9, "category_id": 1, "category": "person", "mask": None, "bbox": [150.0, 0.0, 10.0, 10.0]}
    out = draw_overlay(image, [inst], style=OverlayStyle(masks=False)).permute(1, 2, 0).numpy()
    assert (out == 255).all(axis=2).any()
