"""A node lost mid-run on a multi-node Ray (``ray.cluster_utils.Cluster``, in a subprocess so
that it has its own Ray): the job completes, every image once, rows equal a clean run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from ray_fixtures import RUN, assert_exactly_once, assert_same_tables, tables

pytestmark = pytest.mark.slow  # end to end on Ray: `make test-fast` leaves it out

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    import mrcnn_batch as mb
    from mrcnn_batch.run.driver import execute
    from mrcnn_batch.run.ray_executor import RayExecutor, RayOptions

    images, out, weights, run = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    fast_failure_detection = {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                              "health_check_initial_delay_ms": 0}
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, include_dashboard=False, _system_config=fast_failure_detection))
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]  # the workers run only here
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    executor = RayExecutor(RayOptions(workers=1, cpus_per_worker=1, retry_delay_s=0.1, start_timeout_s=120))
    removed = []

    def on_commit(record):
        # The node of the worker that just committed goes down now, before the loop hands that
        # worker its next shard (3 shards, one worker taking 2 at a time: the first commit frees
        # it for shard 3, and its other shard is in flight). A timer instead raced the shards.
        if removed:
            return
        pid = int(record["worker"].rsplit(":", 1)[1])
        node_id = next(w["node_id"] for w in executor.workers_seen if w["pid"] == pid)
        node = next(n for n in nodes if n.node_id == node_id)
        removed.append(node_id)
        cluster.remove_node(node, allow_graceful=False)

    config = mb.make_config(images, out, weights=weights, **run)
    s = execute(config, executor, on_commit=on_commit)
    print("RESULT " + json.dumps(dict(complete=s.complete, failed=s.failed_shards, executed=s.executed_shards,
          removed=removed, lost=executor.workers_lost, workers=[r["worker"] for r in s.records])))
    ray.shutdown()
    cluster.shutdown()
    """
)


def test_node_removed_mid_run(clean_run, tmp_path, image_dir, mask_weights):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(image_dir), str(out), str(mask_weights), json.dumps(RUN)],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["removed"] and result["complete"] and not result["failed"]
    assert result["lost"] >= 1  # the node went down under a dispatched shard, which ran again elsewhere
    assert sorted(result["executed"]) == [0, 1, 2]
    assert_exactly_once(str(out))
    assert_same_tables(tables(str(out)), tables(str(clean_run)))
