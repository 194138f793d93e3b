"""Resume after the driver dies: the same command does only the shards without a marker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL
from ray_fixtures import (  # noqa: F401
    assert_exactly_once,
    assert_same_tables,
    clean_run,
    ray_session,
    tables,
)

pytestmark = pytest.mark.slow  # end to end on Ray: `make test-fast` leaves it out


def cli(image_dir, out, weights, address):
    return [
        sys.executable, "-m", "mrcnn_batch.cli", "infer", str(image_dir), str(out), "--weights", str(weights),
        "--min-size", str(SMALL["min_size"]), "--max-size", str(SMALL["max_size"]), "--shard-size", "2",
        "--batch-size", "2", "--workers", "1", "--cpus-per-worker", "0.5", "--address", address, "--no-progress",
    ]


def markers(out: Path) -> dict[str, int]:
    d = out / "_commits"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("shard-*.json")} if d.exists() else {}


def test_driver_killed_then_rerun_does_only_the_uncommitted_shards(ray_session, clean_run, tmp_path, image_dir, mask_weights):
    address = ray_session.get_runtime_context().gcs_address
    out = tmp_path / "run"
    cmd = cli(image_dir, out, mask_weights, address)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not markers(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = markers(out)
    assert 1 <= len(before) < 3, proc.stdout.read().decode()[-2000:]
    assert not (out / "_SUCCESS").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = markers(out)
    rewritten = {k for k in after if before.get(k) != after[k]}
    assert rewritten == set(after) - set(before)  # only the shards without a marker ran again
    assert f"({len(rewritten)} run now, resumed)" in " ".join(rerun.stdout.split())
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(str(out))
    assert_same_tables(tables(str(out)), tables(str(clean_run)))


def test_a_driver_asked_to_stop_says_so_in_one_line_and_the_rerun_resumes(ray_session, tmp_path, image_dir, mask_weights):
    """SIGTERM (``kill``, a job scheduler) to a driver on Ray: exit 143 with one line saying
    what is kept, no stack dump from Ray's signal handler; the lease is released, so the same
    command resumes at once and runs only what was not committed."""
    address = ray_session.get_runtime_context().gcs_address
    out = tmp_path / "run"
    cmd = cli(image_dir, out, mask_weights, address)
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
    assert not (out / "_driver.json").exists()  # the lease released: nothing to wait out
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = markers(out)
    assert {k for k in after if before.get(k) != after[k]} == set(after) - set(before)
