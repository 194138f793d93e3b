"""Resume after the driver dies: the same command does only the shards without a marker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import QUICK_ARGS
from ray_fixtures import QUICK_RUN, assert_exactly_once, assert_same_tables, tables
from typer.testing import CliRunner

from mrcnn_batch.cli import app

pytestmark = pytest.mark.slow  # end to end on Ray: `make test-fast` leaves it out


def cli(image_dir, out, weights, address, settings=(*QUICK_ARGS, "--shard-size", "2", "--batch-size", "2")):
    """The infer command of these tests; ``settings``: the run's (by default, the quick clean run's)."""
    return [
        sys.executable, "-m", "mrcnn_batch.cli", "infer", str(image_dir), str(out), "--weights", str(weights),
        *settings, "--workers", "1", "--cpus-per-worker", "0.5", "--address", address, "--no-progress",
    ]


def markers(out: Path) -> dict[str, int]:
    d = out / "_commits"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("shard-*.json")} if d.exists() else {}


# The first run's driver (on the session's Ray, as infer runs it) is killed at its first commit,
# before it hands out another shard: a shard committed, at most one more in flight, whatever the
# speed of the machine (a watcher of the run directory raced the shards when they were quick).
KILLED_AT_FIRST_COMMIT = textwrap.dedent(
    """
    import json, os, signal, sys
    import ray
    import mrcnn_batch as mb
    from mrcnn_batch.run.driver import execute
    from mrcnn_batch.run.ray_executor import RayExecutor, RayOptions

    images, out, weights, address, run = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    executor = RayExecutor(RayOptions(workers=1, cpus_per_worker=0.5))
    execute(mb.make_config(images, out, weights=weights, **run), executor,
            on_commit=lambda record: os.kill(os.getpid(), signal.SIGKILL))
    """
)


def test_driver_killed_then_rerun_does_only_the_uncommitted_shards(ray_session, quick_clean_run, tmp_path, image_dir, mask_weights):
    address = ray_session.get_runtime_context().gcs_address
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_FIRST_COMMIT, str(image_dir), str(out), str(mask_weights),
                             address, json.dumps(QUICK_RUN)], capture_output=True, text=True, timeout=240, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    before = markers(out)
    assert 1 <= len(before) < 3, before
    assert not (out / "_SUCCESS").exists()

    rerun = subprocess.run(cli(image_dir, out, mask_weights, address), capture_output=True, text=True, timeout=240, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = markers(out)
    rewritten = {k for k in after if before.get(k) != after[k]}
    assert rewritten == set(after) - set(before)  # only the shards without a marker ran again
    assert f"({len(rewritten)} run now, resumed)" in " ".join(rerun.stdout.split())
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(str(out))
    assert_same_tables(tables(str(out)), tables(str(quick_clean_run)))


def test_a_driver_asked_to_stop_says_so_in_one_line_and_keeps_what_was_committed(ray_session, tmp_path, image_dir, mask_weights):
    """SIGTERM (``kill``, a job scheduler) to a driver on Ray: exit 143 with one line saying
    what is kept, no stack dump from Ray's signal handler; the lease is released, so the same
    command resumes at once (the resume itself: the test above).

    One image a shard, at the models' full 100 detections (about 2 s an image here): the signal
    comes at the first commit, with four shards still to do, so it always finds the run going."""
    address = ray_session.get_runtime_context().gcs_address
    out = tmp_path / "run"
    cmd = cli(image_dir, out, mask_weights, address,
              settings=("--min-size", "128", "--max-size", "192", "--shard-size", "1", "--batch-size", "1"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not markers(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    before = markers(out)
    assert proc.returncode == 143, stdout + stderr
    assert "interrupted (SIGTERM): the shards committed so far are kept" in " ".join(stderr.split())
    assert "SIGTERM received" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not (out / "_driver.json").exists()  # the lease released: the same command resumes at once
    status = CliRunner().invoke(app, ["status", str(out), "--json"])
    st = json.loads(status.stdout)
    assert not st["complete"] and len(st["shards_done"]) == len(before) >= 1  # what was committed is kept
