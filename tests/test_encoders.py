"""The encode stage gives the same files in threads and in spawned processes (the CUDA default),
masks, keypoints and an image that fails before the model."""

from __future__ import annotations

import shutil

import pytest
from conftest import IMAGES

import mrcnn_batch as mb
from mrcnn_batch.models.loaded import build_model
from mrcnn_batch.plan import shard_ids, shard_rows
from mrcnn_batch.run.driver import prepare
from mrcnn_batch.run.processor import ShardProcessor, shard_images

pytestmark = pytest.mark.heavy  # many model runs without Ray: scheduled early (tests/conftest.py)


class FailsOnWidth:
    """The model, raising for images of one width (as an out-of-memory error would)."""

    def __init__(self, predictor, width: int):
        self.predictor, self.width = predictor, width

    def batch_key(self, height: int, width: int) -> tuple:
        return self.predictor.batch_key(height, width)

    def __call__(self, arrays):
        if any(a.shape[1] == self.width for a in arrays):
            raise RuntimeError("out of memory (injected)")
        return self.predictor(arrays)


def tables_with(encoder: str, images, out, *, fail_width: int | None = None, device: str = "cpu",
                **options) -> dict[str, list[dict]]:
    config = mb.make_config(str(images), str(out), device=device, batch_size=2, shard_size=4, **options)
    _, meta, plan, weights, _ = prepare(config)
    p = config.predict
    model = build_model(p.model, weights, min_size=p.min_size, max_size=p.max_size,
                        score_threshold=p.score_threshold, max_detections=p.max_detections)
    processor = ShardProcessor(config, run_id=meta.run_id, weights=weights, model=model, encoder=encoder)
    try:
        assert processor._encoder.processes == (encoder == "processes" or (encoder == "auto" and device.startswith("cuda")))
        if fail_width is not None:
            processor.predictor = FailsOnWidth(processor.predictor, fail_width)
        for s in shard_ids(plan):
            processor(s, shard_images(shard_rows(plan, s)))
    finally:
        processor.close()
    run = mb.open_run(str(out))
    return {name: run.read_table(name).to_pylist()
            for name in ("images", "instances", "keypoints")}


def test_processes_write_what_threads_write(tmp_path):
    # the demo model: masks and keypoints from one small network (fast on a CPU)
    images = tmp_path / "in"
    images.mkdir()
    for p in sorted(IMAGES.glob("*.jpg")):
        shutil.copy(p, images / p.name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    options = {"model": "demo", "score_threshold": 0.0}
    threads = tables_with("threads", images, tmp_path / "threads", **options)
    processes = tables_with("processes", images, tmp_path / "processes", **options)
    assert [r["status"] for r in threads["images"]].count("decode_error") == 1
    assert len(threads["instances"]) > 0 and len(threads["keypoints"]) > 0
    assert any(r["mask_instance_id"] is not None for r in threads["keypoints"])
    assert processes == threads


def test_an_image_the_model_fails_on_gets_its_row_in_threads_and_processes(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for p in sorted(IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(p, images / p.name)
    shutil.copy(IMAGES / "dog.jpg", images / "dog.jpg")  # 800 px wide, the only one
    options = {"model": "demo", "score_threshold": 0.0, "fail_width": 800}
    threads = tables_with("threads", images, tmp_path / "threads", **options)
    processes = tables_with("processes", images, tmp_path / "processes", **options)
    assert processes == threads
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in threads["images"]}
    assert rows["dog.jpg"]["status"] == "predict_error" and "out of memory (injected)" in rows["dog.jpg"]["error"]
    assert rows["dog.jpg"]["num_instances"] == 0 and rows["dog.jpg"]["width"] == 800
    assert all(r["status"] == "ok" and r["num_instances"] > 0 for k, r in rows.items() if k != "dog.jpg")


def test_encoder_processes_start_inside_a_ray_actor(ray_session, tmp_path):
    """Where the model runs on CUDA a Ray actor spawns its encoder processes: that works inside a
    Ray worker process (here forced on the CPU), and the rows are those of threads."""
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(IMAGES / "dog.jpg", images / "dog.jpg")

    @ray_session.remote(num_cpus=0.5)
    def in_actor(encoder: str, out: str) -> dict:  # self-contained: Ray workers cannot import tests/
        import mrcnn_batch as mb
        from mrcnn_batch.plan import shard_ids, shard_rows
        from mrcnn_batch.run.driver import prepare
        from mrcnn_batch.run.processor import ShardProcessor, shard_images

        config = mb.make_config(str(images), out, model="demo", score_threshold=0.0, device="cpu")
        _, meta, plan, weights, _ = prepare(config)
        processor = ShardProcessor(config, run_id=meta.run_id, weights=weights, encoder=encoder)
        try:
            for s in shard_ids(plan):
                processor(s, shard_images(shard_rows(plan, s)))
        finally:
            processor.close()
        return mb.open_run(out).read_table("instances").to_pylist()

    threads = ray_session.get(in_actor.remote("threads", str(tmp_path / "threads")))
    processes = ray_session.get(in_actor.remote("processes", str(tmp_path / "processes")))
    assert len(threads) > 0 and processes == threads
