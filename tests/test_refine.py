"""``infer --refine-masks grabcut``: masks re-cut by GrabCut on the image, nothing else changed.

End to end on CPU with the demo model (rows beside a run without refinement, and a rerun), the
run's identity (a run is never resumed with the other setting), the usage errors, and the
refinement itself on a synthetic disc."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from mrcnn_batch.cli import EXIT_REFUSED, EXIT_USAGE, app
from mrcnn_batch.config import InputSpec, PredictConfig, RunConfig, same_identity
from mrcnn_batch.encode import refine
from mrcnn_batch.run.layout import open_run

DEMO = ["--model", "demo", "--executor", "local", "--no-progress", "--shard-size", "3"]
IMAGES = 5


def infer(images: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["infer", str(images), str(out), *DEMO, *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Held-out shapes images, and three runs over them: plain, refined, refined again."""
    from mrcnn_batch.datasets.shapes import HELDOUT_SEED, write_dataset

    root = tmp_path_factory.mktemp("refine")
    write_dataset(str(root / "data"), seed=HELDOUT_SEED, num_images=IMAGES)
    images = root / "data" / "images"
    out = {}
    for name, extra in (("plain", ()), ("grabcut", ("--refine-masks", "grabcut")),
                        ("again", ("--refine-masks", "grabcut"))):
        res = infer(images, root / name, *extra)
        assert res.exit_code == 0, res.output
        out[name] = root / name
    return images, out


def rows(run: Path, table: str) -> list[dict]:
    return sorted(open_run(str(run)).read_table(table).to_pylist(), key=lambda r: (r["image_id"], r.get("instance_id", 0)))


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_only_masks_change_and_stay_inside_the_image(runs):
    _, out = runs
    plain, refined = rows(out["plain"], "instances"), rows(out["grabcut"], "instances")
    sizes = {r["image_id"]: [r["height"], r["width"]] for r in rows(out["plain"], "images")}
    assert len(plain) == len(refined) > 0
    changed = 0
    for p, r in zip(plain, refined):
        assert {k: v for k, v in p.items() if k not in ("mask", "area")} == \
               {k: v for k, v in r.items() if k not in ("mask", "area")}  # boxes, scores, labels, ids
        assert r["mask"]["size"] == sizes[r["image_id"]]
        m = decode(r["mask"])
        assert m.shape == tuple(sizes[r["image_id"]])
        assert r["area"] == m.sum()
        assert m.any() or not decode(p["mask"]).any()  # never emptied
        changed += r["mask"]["counts"] != p["mask"]["counts"]
    assert changed > 0  # the refinement did something
    assert rows(out["plain"], "keypoints") == rows(out["grabcut"], "keypoints")
    assert rows(out["plain"], "images") == rows(out["grabcut"], "images")


def test_a_rerun_gives_the_same_rows(runs):
    _, out = runs
    for table in ("instances", "keypoints", "images"):
        assert rows(out["grabcut"], table) == rows(out["again"], table)


def test_encoder_processes_refine_as_threads_do(runs, tmp_path):
    """Where the model runs on CUDA the encoders are spawned processes: the pixels go along."""
    import mrcnn_batch as mb
    from mrcnn_batch.plan import shard_ids, shard_rows
    from mrcnn_batch.run.driver import prepare
    from mrcnn_batch.run.processor import ShardProcessor, shard_images

    images, out = runs
    config = mb.make_config(str(images), str(tmp_path / "run"), model="demo", device="cpu", shard_size=3,
                            refine_masks="grabcut")
    _, meta, plan, weights, _ = prepare(config)
    processor = ShardProcessor(config, run_id=meta.run_id, weights=weights, encoder="processes")
    try:
        assert processor._encoder.processes
        for s in shard_ids(plan):
            processor(s, shard_images(shard_rows(plan, s)))
    finally:
        processor.close()
    assert rows(tmp_path / "run", "instances") == rows(out["grabcut"], "instances")


@pytest.mark.parametrize("made,resumed", [("plain", ("--refine-masks", "grabcut")), ("grabcut", ()),
                                         ("grabcut", ("--refine-masks", "none"))])
def test_a_run_is_not_resumed_with_the_other_setting(runs, made, resumed):
    images, out = runs
    before = snapshot(out[made])
    res = infer(images, out[made], *resumed)
    assert res.exit_code == EXIT_REFUSED, res.output
    assert "refine_masks" in res.output and "--overwrite" in res.output
    assert snapshot(out[made]) == before


@pytest.mark.parametrize("made,resumed", [("plain", ("--refine-masks", "none")), ("grabcut", ("--refine-masks", "grabcut"))])
def test_a_run_resumes_with_its_own_setting(runs, made, resumed):
    images, out = runs
    res = infer(images, out[made], *resumed)
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output


def test_the_identity_holds_the_setting_only_when_set():
    config = RunConfig(input=InputSpec(url="/data"), output="/out")
    old = config.identity(weights_sha256="x")
    assert "refine_masks" not in old  # runs made before the option existed resume unchanged
    on = RunConfig(input=config.input, output="/out", predict=PredictConfig(refine_masks="grabcut"))
    new = on.identity(weights_sha256="x")
    assert new["refine_masks"] == "grabcut"
    assert same_identity(old, old) and same_identity(new, new)
    assert not same_identity(old, new) and not same_identity(new, old)


def test_usage_errors_exit_2_before_anything_is_written(runs, tmp_path, monkeypatch):
    images, _ = runs
    res = infer(images, tmp_path / "a", "--refine-masks", "snakes")
    assert res.exit_code == EXIT_USAGE and "unknown mask refinement 'snakes'" in res.output
    monkeypatch.setitem(sys.modules, "cv2", None)  # OpenCV not installed
    res = infer(images, tmp_path / "b", "--refine-masks", "grabcut")
    assert res.exit_code == EXIT_USAGE
    assert "pip install 'mrcnn-batch[refine]'" in " ".join(res.output.split())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- the refinement on a synthetic image ----------------------------------------------------

def disc_image(h: int, w: int, cy: float, cx: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """A bright, slightly noisy disc on a dark background; the image and the disc's true mask."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r**2
    noise = np.random.default_rng(0).integers(0, 25, (h, w, 3))
    return (np.where(disc[..., None], 190, 40) + noise).astype(np.uint8), disc


def square_around(disc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The disc's bounding square as a (deliberately coarse) mask, and that box (x1, y1, x2, y2)."""
    ys, xs = np.nonzero(disc)
    mask = np.zeros(disc.shape, np.uint8)
    mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1
    return mask, np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero((a > 0) & (b > 0)) / np.count_nonzero((a > 0) | (b > 0))


@pytest.mark.parametrize("where", ["inside", "at the border", "downscaled"])
def test_a_coarse_mask_moves_towards_the_disc(where):
    h, w = 120, 140
    cy, cx, budget = (60, 70, refine.MAX_CROP_PIXELS) if where != "at the border" else (15, 10, refine.MAX_CROP_PIXELS)
    if where == "downscaled":
        budget = 40 * 40  # the crop is about 96 x 96: cut at less than half the scale
    image, disc = disc_image(h, w, cy, cx, 30)
    coarse, box = square_around(disc)
    out, outcome = refine.refine_mask(image, coarse, box, max_pixels=budget)
    assert outcome == ("downscaled" if where == "downscaled" else "refined")
    assert out.shape == (h, w) and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    assert iou(out, disc) > iou(coarse, disc) + 0.05
    assert iou(out, disc) > 0.9


def test_an_empty_mask_stays_empty():
    image, _ = disc_image(80, 80, 40, 40, 20)
    empty = np.zeros((80, 80), np.uint8)
    out, outcome = refine.refine_mask(image, empty, np.array([20, 20, 60, 60], np.float32))
    assert outcome == "kept" and not out.any()
    rles = [mask_utils.encode(np.asfortranarray(empty))]
    rles = [{"size": r["size"], "counts": r["counts"].decode()} for r in rles]
    new, areas, stats = refine.refine_rles(image, rles, np.array([0]), np.array([[20, 20, 60, 60]], np.float32))
    assert new == rles and areas.tolist() == [0] and stats.kept == 1


def test_no_foreground_from_grabcut_keeps_the_original(monkeypatch):
    cv2 = refine.load_cv2()
    image, disc = disc_image(80, 80, 40, 40, 20)
    coarse, box = square_around(disc)
    monkeypatch.setattr(cv2, "grabCut", lambda img, labels, *a: (np.zeros_like(labels), None, None))
    out, outcome = refine.refine_mask(image, coarse, box)
    assert outcome == "empty_fallback" and out is coarse


def test_rles_areas_and_determinism_across_threads():
    image, disc = disc_image(100, 90, 50, 45, 25)
    coarse, box = square_around(disc)
    enc = mask_utils.encode(np.asfortranarray(coarse))
    rles = [{"size": enc["size"], "counts": enc["counts"].decode()}]

    def once(_=None):
        return refine.refine_rles(image, rles, np.array([coarse.sum()]), box[None])

    first, areas, stats = once()
    assert stats.refined == 1 and first[0]["size"] == [100, 90]
    assert areas[0] == decode(first[0]).sum() and iou(decode(first[0]), disc) > iou(coarse, disc)
    with ThreadPoolExecutor(2) as pool:
        assert all(r[0] == first for r in pool.map(once, range(4)))
