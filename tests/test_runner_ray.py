"""The Ray executor: same rows as the in-process run; actors killed mid-shard; shard retries."""

from __future__ import annotations

import pytest
from ray_fixtures import (
    QUICK_RUN,
    RAY,
    RUN,
    assert_exactly_once,
    assert_same_tables,
    tables,
)

import mrcnn_batch as mb

pytestmark = pytest.mark.slow  # end to end on Ray: `make test-fast` leaves it out


def test_three_workers_equal_in_process_run(ray_session, quick_clean_run, tmp_path, image_dir, mask_weights):
    """Which actor takes which shard is the scheduler's (tests/test_scheduler.py, with fake
    workers): an actor ready first may take them all. Here: the shards ran in actors, not in the
    driver, and their rows are the in-process run's."""
    import os

    out = tmp_path / "ray"
    summary = mb.infer(str(image_dir), str(out), weights=str(mask_weights), **QUICK_RUN, **RAY)
    assert summary.complete and not summary.failed_shards
    assert summary.executed_shards == [0, 1, 2]
    assert all(int(r["worker"].rsplit(":", 1)[1]) != os.getpid() for r in summary.records)
    assert_exactly_once(str(out))
    assert_same_tables(tables(str(out)), tables(str(quick_clean_run)))


def test_actor_killed_mid_shard_is_retried_elsewhere(ray_session, clean_run, tmp_path, image_dir, mask_weights):
    """SIGKILL to a busy actor's process after the first commit: its shard runs again elsewhere."""
    import os
    import signal

    from mrcnn_batch.run.driver import execute
    from mrcnn_batch.run.ray_executor import RayExecutor, RayOptions

    out = tmp_path / "killed"
    killed, retries = [], []
    executor = RayExecutor(RayOptions(workers=2, cpus_per_worker=0.5, retry_delay_s=0.1),
                           on_retry=lambda shard, reason: retries.append((shard, reason)))

    def on_commit(record):
        if not killed:
            # The other worker, busy with its shard; if it has not started yet, the one that
            # just committed, before it is handed its next shard.
            committed_by = int(record["worker"].rsplit(":", 1)[1])
            others = [w["pid"] for w in executor.workers_seen if w["pid"] != committed_by]
            victim = others[0] if others else committed_by
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            killed.append(record["shard"])

    config = mb.make_config(str(image_dir), str(out), weights=str(mask_weights), **RUN)
    summary = execute(config, executor, on_commit=on_commit)
    assert killed and summary.complete and not summary.failed_shards
    assert executor.workers_lost >= 1
    assert retries and all(reason.startswith("worker lost") for _, reason in retries)
    victim, first_shard = killed
    assert victim not in {int(r["worker"].rsplit(":", 1)[1]) for r in summary.records if r["shard"] != first_shard}
    assert sorted(summary.executed_shards) == [0, 1, 2]
    assert_exactly_once(str(out))
    assert_same_tables(tables(str(out)), tables(str(clean_run)))


def test_status_of_a_complete_run(quick_clean_run):
    from typer.testing import CliRunner

    from mrcnn_batch.cli import app

    res = CliRunner().invoke(app, ["status", str(quick_clean_run), "--json"])
    assert res.exit_code == 0, res.output
    import json

    st = json.loads(res.output)
    assert st["shards_done"] == [0, 1, 2] and st["shards_pending"] == [] and st["shards_failed"] == {}
    assert st["images_by_status"] == {"ok": 5} and st["complete"]


def test_weights_that_do_not_fit_fail_fast_with_a_usage_error(ray_session, tmp_path, image_dir, mask_weights):
    """Every actor would fail to load them: the driver refuses them (exit 2) before planning or
    starting a worker, saying what differs."""
    from typer.testing import CliRunner

    from mrcnn_batch.cli import EXIT_USAGE, app

    res = CliRunner().invoke(app, ["infer", str(image_dir), str(tmp_path / "bad"), "--model", "keypointrcnn_resnet50_fpn",
                                   "--weights", str(mask_weights), "--workers", "2", "--cpus-per-worker", "0.5", "--no-progress"])
    assert res.exit_code == EXIT_USAGE, res.output
    text = " ".join(res.output.split())
    assert "do not fit 'keypointrcnn_resnet50_fpn'" in text and "missing keys" in text and "unexpected keys" in text
    assert not (tmp_path / "bad" / "_run.json").exists() and not (tmp_path / "bad" / "_plan").exists()
