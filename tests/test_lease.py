"""One driver per run directory (``_driver.json``): a live driver's run is refused to a second
one; a dead driver's lease is taken over (at once on its own host, after its time-to-live
without a heartbeat from another host); the lease is there while a run goes and gone after."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

import mrcnn_batch as mb
from mrcnn_batch.cli import EXIT_REFUSED, app
from mrcnn_batch.run.driver import RunRefused, execute
from mrcnn_batch.run.layout import RunDir
from mrcnn_batch.run.lease import LEASE, read_lease
from mrcnn_batch.run.local import run_local

OPTIONS = dict(model="demo", shard_size=1, batch_size=1, min_size=160, max_size=240)


@pytest.fixture
def one_image(tmp_path, image_dir):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "dog.jpg").write_bytes((image_dir / "dog.jpg").read_bytes())
    return folder


def plant(out, **doc):
    out.mkdir(parents=True, exist_ok=True)
    lease = {"host": socket.gethostname(), "pid": os.getpid(), "token": "other", "started_at": time.time(),
             "heartbeat_at": time.time(), "ttl_s": 60.0, **doc}
    (out / LEASE).write_text(json.dumps(lease))
    return lease


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def run(one_image, out, **kw):
    return execute(mb.make_config(str(one_image), str(out), **OPTIONS), run_local, **kw)


def test_the_lease_is_held_while_running_and_removed_after(one_image, tmp_path):
    out = tmp_path / "run"
    seen = []
    config = mb.make_config(str(one_image), str(out), **OPTIONS)
    summary = execute(config, run_local, on_commit=lambda r: seen.append(read_lease(RunDir(str(out), {}))))
    assert summary.complete and seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert not (out / LEASE).exists()


def test_a_live_driver_on_this_host_refuses_a_second_one(one_image, tmp_path):
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant(out, pid=sleeper.pid)
        with pytest.raises(RunRefused, match=f"another driver on this host .*pid {sleeper.pid}"):
            run(one_image, out)
        res = CliRunner().invoke(app, ["infer", str(one_image), str(out), "--executor", "local", "--model", "demo", "--no-progress"])
        assert res.exit_code == EXIT_REFUSED and "another driver" in res.output
        assert json.loads((out / LEASE).read_text())["token"] == "other"  # left as it was
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_driver_on_this_host_is_taken_over_at_once(one_image, tmp_path, caplog):
    out = tmp_path / "run"
    plant(out, pid=dead_pid())
    with caplog.at_level(logging.WARNING, logger="mrcnn_batch.run.lease"):
        assert run(one_image, out).complete
    assert "is gone; taking over" in caplog.text
    assert not (out / LEASE).exists()


def test_another_hosts_lease_long_silent_is_taken_over(one_image, tmp_path, caplog):
    out = tmp_path / "run"
    plant(out, host="elsewhere", heartbeat_at=time.time() - 600)
    with caplog.at_level(logging.WARNING, logger="mrcnn_batch.run.lease"):
        assert run(one_image, out).complete
    assert "last beat" in caplog.text and "taking over" in caplog.text


def test_another_hosts_lease_that_stops_beating_is_taken_over_after_its_ttl(one_image, tmp_path, caplog):
    out = tmp_path / "run"
    plant(out, host="elsewhere", ttl_s=1.0)
    with caplog.at_level(logging.WARNING, logger="mrcnn_batch.run.lease"):
        assert run(one_image, out).complete
    assert "no heartbeat from elsewhere" in caplog.text


def test_another_hosts_lease_that_keeps_beating_refuses(one_image, tmp_path):
    out = tmp_path / "run"
    lease = plant(out, host="elsewhere", ttl_s=2.0)
    stop = threading.Event()

    def beat():
        while not stop.wait(0.3):
            lease["heartbeat_at"] = time.time()
            (out / (LEASE + ".tmp")).write_text(json.dumps(lease))
            os.replace(out / (LEASE + ".tmp"), out / LEASE)

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        with pytest.raises(RunRefused, match="alive: its heartbeat goes on"):
            run(one_image, out)
    finally:
        stop.set()
        t.join()
    assert not (out / "_run.json").exists()  # refused before planning anything


def test_status_shows_the_driver(one_image, tmp_path):
    out = tmp_path / "run"
    run(one_image, out)
    plant(out, host="elsewhere", pid=4242)
    res = CliRunner().invoke(app, ["status", str(out)])
    assert "driver: elsewhere pid 4242, last heartbeat" in " ".join(res.output.split())


def test_a_driver_paused_while_another_takes_its_run_commits_nothing_more(image_dir, tmp_path):
    """The driver is paused between two shards (its on_commit blocks) while another, from another
    host, takes the lease and replaces the run (--overwrite with other settings). Resumed, it
    dispatches nothing, writes no marker, _failed.json or _SUCCESS, and stops with RunRefused."""
    out = tmp_path / "run"
    config = mb.make_config(str(image_dir), str(out), **OPTIONS)
    paused, resume = threading.Event(), threading.Event()

    def on_commit(record):
        paused.set()
        resume.wait(60)

    result: dict = {}

    def drive():
        try:
            result["summary"] = execute(config, run_local, on_commit=on_commit)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result["error"] = e

    t = threading.Thread(target=drive)
    t.start()
    assert paused.wait(120), result
    markers_before = sorted(p.name for p in (out / "_commits").iterdir())
    assert len(markers_before) == 1
    # Another driver takes over: its lease, and a new run in the same output.
    plant(out, host="elsewhere", pid=1, token="new-owner")
    meta = json.loads((out / "_run.json").read_text())
    meta["run_id"] = "the-new-run"
    (out / "_run.json").write_text(json.dumps(meta))
    resume.set()
    t.join(120)
    assert isinstance(result.get("error"), RunRefused) and "lost its lease" in str(result["error"])
    assert sorted(p.name for p in (out / "_commits").iterdir()) == markers_before
    assert not (out / "_SUCCESS").exists() and not (out / "_failed.json").exists()
    assert json.loads((out / LEASE).read_text())["token"] == "new-owner"  # not written back, not removed


def test_a_worker_checks_the_fence_before_writing_anything(image_dir, tmp_path):
    from mrcnn_batch.models.loaded import resolve_weights
    from mrcnn_batch.models.registry import get_spec
    from mrcnn_batch.run.lease import Fence, FencedOut
    from mrcnn_batch.run.processor import ImageRef, ShardProcessor

    out = tmp_path / "run"
    plant(out, host="elsewhere", pid=1, token="owner")
    (out / "_run.json").write_text(json.dumps({"run_id": "r1"}))
    config = mb.make_config(str(image_dir), str(out), **OPTIONS)
    weights = resolve_weights(get_spec("demo"), None, storage_options={})
    images = [ImageRef(1, (image_dir / "dog.jpg").as_uri())]
    for fence, why in ((Fence("not-the-owner", "r1"), "lost its lease"), (Fence("owner", "r0"), "was replaced")):
        processor = ShardProcessor(config, run_id=fence.run_id, weights=weights, fence=fence)
        try:
            with pytest.raises(FencedOut, match=why):
                processor(0, images)
        finally:
            processor.close()
        assert sorted(p.name for p in out.iterdir()) == ["_driver.json", "_run.json"]
    processor = ShardProcessor(config, run_id="r1", weights=weights, fence=Fence("owner", "r1"))
    try:
        record = processor(0, images)
    finally:
        processor.close()
    assert record["run_id"] == "r1" and (out / "_commits" / "shard-000000.json").exists()
