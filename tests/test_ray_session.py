"""Which Ray a command uses, and paths as a cluster sees them (see ``mrcnn_batch.ray_session``).

A real cluster started with ``ray start --head`` in a subprocess (Ray 2.60 turns token
authentication on there), the CLI in subprocesses as a user runs it: a running cluster is not
joined by accident, a stopped one does not hang a command, joining with and without the token,
relative paths on a cluster, and the same folder spelled three ways.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrcnn_batch.cli import app
from mrcnn_batch.config import IDENTITY_ADDED, local_url, same_identity
from mrcnn_batch.datasets.shapes import write_dataset

pytestmark = pytest.mark.slow  # end to end on Ray: `make test-fast` leaves it out

CLI = [sys.executable, "-m", "mrcnn_batch.cli"]
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
CURRENT = Path("/tmp/ray/ray_current_cluster")  # where Ray records the last cluster it started
REPO = Path(__file__).resolve().parents[1]
DASHBOARD: dict[str, str] = {}  # cluster address -> its dashboard (Jobs API) URL


def cli(*args, cwd=None, env=None, timeout=300):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    e.update(RAY_USAGE_STATS_ENABLED="0", **(env or {}))
    return subprocess.run([*CLI, *map(str, args)], check=False, capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start --head`` as a user starts it, with its dashboard (the Jobs API) and the
    project's environment on its PATH (as after activating it); stopped (and Ray's record of it
    put back as it was) at the end. Yields its address and a function that stops it early; the
    dashboard's URL is ``cluster.dashboard``.

    Its own temporary folder: a job's driver joins the cluster recorded in its cluster's folder
    (Ray's job supervisor resolves "auto"), and under pytest-xdist the other test process starts
    private Rays that record themselves in /tmp/ray. The record a plain ``ray start`` leaves in
    /tmp/ray, which ``ray.init()`` without an address would join, is written there as it would."""
    if RAY is None:
        pytest.skip("the ray command is not installed")
    before = CURRENT.read_bytes() if CURRENT.exists() else None
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    port, dashboard, agent = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` in a job is this one
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"  # Ray 2.60's default for `ray start`; said, so that it stays on
    log = open(tmp_path_factory.mktemp("ray") / "ray-start.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard=true",
                             "--dashboard-port", str(dashboard),
                             # the job agent's port, free: a Ray of this test process may hold the default 52365
                             "--dashboard-agent-listen-port", str(agent), "--temp-dir", temp_dir, "--block"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"

    def stop():
        if proc.poll() is None:
            # `ray start --block` stops its cluster on SIGTERM to itself (about 2 s); the same
            # signal to its whole process group takes a minute
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the cluster still there

    deadline = time.monotonic() + 180
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            socket.create_connection(("127.0.0.1", dashboard), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop()
                pytest.skip(f"ray start did not come up: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
    DASHBOARD[address] = f"http://127.0.0.1:{dashboard}"
    CURRENT.parent.mkdir(parents=True, exist_ok=True)
    CURRENT.write_text(address)
    try:
        yield address, stop
    finally:
        stop()
        log.close()
        if before is None:
            CURRENT.unlink(missing_ok=True)
        else:
            CURRENT.write_bytes(before)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-session")
    write_dataset(str(root), seed=7, num_images=2)  # images/ and annotations.json
    return root


DEMO = ["--model", "demo", "--shard-size", "1", "--batch-size", "1"]


def test_a_running_cluster_is_joined_only_when_named(cluster, photos):
    address, _ = cluster
    import ray.exceptions

    if hasattr(ray.exceptions, "AuthenticationError"):  # a Ray with token authentication (2.5x+)
        # the cluster, named, without its token: one line saying what to set, no traceback
        res = cli("infer", "images", "runs/joined", *DEMO, "--address", address, cwd=photos)
        assert res.returncode == 2, res.stderr
        assert "RAY_AUTH_MODE=token" in res.stderr and "Traceback" not in res.stderr
        assert "AuthenticationError" in res.stderr, res.stderr  # said at once, not after Ray's 20 s of retries
    # with the token: joined; relative paths are the driver's, not the cluster worker's folder
    res = cli("infer", "images", "runs/joined", *DEMO, "--address", address, cwd=photos, env={"RAY_AUTH_MODE": "token"})
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith(f"Ray: joined the cluster at {address}"), res.stderr
    done = sorted(p.name for p in (photos / "runs" / "joined" / "_commits").glob("shard-*.json"))
    assert done == ["shard-000000.json", "shard-000001.json"]
    # not named: eval on Ray beside a running cluster starts its own (it crashed joining that one)
    res = cli("eval", "runs/joined", "-a", "annotations.json", "--match-by", "file_name", "--workers", "1", cwd=photos)
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("Ray: a private local Ray for this command"), res.stderr


def submit(dashboard: str, *args, timeout=400):
    """``ray job submit`` as the README says (from the checkout, with jobs/runtime_env.yaml),
    with the cluster's token (RAY_AUTH_MODE=token, the token ``ray start`` wrote)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    deadline = time.monotonic() + 180
    while True:
        res = subprocess.run([RAY, "job", "submit", "--address", dashboard, "--runtime-env", "jobs/runtime_env.yaml", "--",
                              "python", "jobs/infer.py", *map(str, args)], check=False, capture_output=True, text=True,
                             env=env, cwd=REPO, timeout=timeout)
        # a cluster just started: its job agent registers a little after the dashboard answers
        if "No available agent to submit job" not in res.stderr or time.monotonic() > deadline:
            return res
        time.sleep(2)


def test_ray_job_submit_as_the_readme_says(cluster, photos):
    """The README's ``ray job submit`` against a ``ray start`` cluster with token authentication:
    the job joins that cluster and commits every shard where it was told; a relative OUTPUT is
    refused (it would be written into Ray's temporary copy of the uploaded folder)."""
    address, _ = cluster
    out = photos / "runs" / "job"
    res = submit(DASHBOARD[address], photos / "images", out, *DEMO, "--no-progress")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Ray: joined the cluster at" in res.stdout, res.stdout[-3000:]
    assert sorted(p.name for p in (out / "_commits").glob("shard-*.json")) == ["shard-000000.json", "shard-000001.json"]
    assert json.loads((out / "_run.json").read_text())["identity"]["input"] == str(photos / "images")
    res = submit(DASHBOARD[address], photos / "images", "runs/relative", *DEMO, "--no-progress")
    assert res.returncode != 0
    assert "OUTPUT 'runs/relative' is a relative path" in res.stdout, res.stdout[-3000:]


def test_a_stopped_cluster_neither_hangs_nor_is_joined(cluster, photos):
    address, stop = cluster
    stop()  # Ray's record of it stays behind in /tmp/ray, as after any `ray stop`
    res = cli("infer", "images", "runs/after-stop", *DEMO, cwd=photos, timeout=240)
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("Ray: a private local Ray for this command"), res.stderr
    res = cli("infer", "images", "runs/dead", *DEMO, "--address", address, cwd=photos, timeout=240)
    assert res.returncode == 2, res.stderr
    assert f"could not join the Ray cluster at {address}: nothing answers there" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (photos / "runs" / "dead" / "_commits").exists()


def test_the_same_folder_spelled_three_ways_resumes(tmp_path, monkeypatch):
    write_dataset(str(tmp_path), seed=7, num_images=2)
    (tmp_path / "images").rename(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    local = [*DEMO, "--executor", "local", "--no-progress"]
    first = CliRunner().invoke(app, ["infer", "photos/", "out", *local])
    assert first.exit_code == 0, first.output
    markers = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "_commits").glob("shard-*.json")}
    for spelling in ("./photos", str(tmp_path / "photos"), f"file://{tmp_path}/photos/"):
        res = CliRunner().invoke(app, ["infer", spelling, "./out/", *local])
        assert res.exit_code == 0, (spelling, res.output)
        assert "0 run now" in res.output, res.output
    assert {p: p.stat().st_mtime_ns for p in markers} == markers
    meta = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert meta["identity"]["input"] == str(tmp_path / "photos")


def test_paths_are_spelled_one_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_url("photos/") == local_url("./photos") == local_url(f"file://{tmp_path}/photos") == str(tmp_path / "photos")
    assert local_url("a/../photos//x/") == str(tmp_path / "photos" / "x")
    assert local_url("s3://bucket/photos/") == "s3://bucket/photos/"  # a prefix, as given
    # a run made before paths were made absolute stored them as typed: read from here, as then
    now = {**IDENTITY_ADDED, "input": str(tmp_path / "photos"), "image_root": None}
    assert same_identity({"input": "photos/", "image_root": None}, now)
    assert not same_identity({"input": "other/", "image_root": None}, now)
