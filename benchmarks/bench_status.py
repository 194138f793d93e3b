"""Reading a large run's commit markers: ``status`` and the resume scan of a run with N shards on
a real S3 endpoint (moto's server on 127.0.0.1, through s3fs), beside the baseline of reading
the markers one GET after another (what ``status``, resume and the end-of-run totals did before
markers were read in one batched call), in one run, on the same objects.

    .venv/bin/python benchmarks/bench_status.py [--shards 4000] [--out benchmarks/results/status.json]

``infer`` writes a commit index (``_commits/_index.json``) at its end; the scans after it read
only markers written since (here: none). The run is synthetic: one image per shard, tiny Parquet files, valid markers. Prints wall and
CPU seconds of each, and the CPU seconds moto's server process spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
from mrcnn_batch.schemas import PLAN, TABLES, with_metadata

from mrcnn_batch.run.layout import (
    COMMITS,
    PLAN_FILE,
    RUN_JSON,
    CommitRecord,
    RunDir,
    commit_path,
    table_path,
)
from mrcnn_batch.run.status import run_status
from mrcnn_batch.write.tables import table_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_run(fs, root: str, shards: int) -> str:
    run_id = uuid.uuid4().hex
    plan = pa.Table.from_pylist([{"shard": s, "image_id": s, "uri": f"s3://x/{s}.jpg"} for s in range(shards)], schema=PLAN)
    objects = {f"{root}/{RUN_JSON}": json.dumps({"run_id": run_id, "identity": {"model": "demo"}}).encode(),
               f"{root}/{PLAN_FILE}": table_bytes(plan)}
    empty = {t: table_bytes(pa.Table.from_pylist([], schema=with_metadata(TABLES[t], table=t, run_id=run_id))) for t in TABLES}
    for s in range(shards):
        for t, data in empty.items():
            objects[f"{root}/{table_path(t, s)}"] = data
        rec = CommitRecord(shard=s, run_id=run_id, rows={t: 0 for t in TABLES}, bytes={t: len(d) for t, d in empty.items()},
                           status_counts={"ok": 1})
        objects[f"{root}/{commit_path(s)}"] = rec.to_json()
    items = list(objects.items())
    for i in range(0, len(items), 2000):
        fs.pipe(dict(items[i : i + 2000]))
    return run_id


SERVER_PID = 0  # moto's process: its CPU seconds are the server's share of each step


def server_cpu() -> float:
    fields = Path(f"/proc/{SERVER_PID}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn):
    w, c, s = time.perf_counter(), time.process_time(), server_cpu() if SERVER_PID else 0.0
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, (server_cpu() if SERVER_PID else 0.0) - s, out


def sequential_markers(run: RunDir) -> int:
    """The baseline: list the markers, then GET them one after another."""
    d = run.path(COMMITS)
    run.fs.invalidate_cache(d)
    n = 0
    for p in run.fs.ls(d, detail=False):
        json.loads(run.fs.cat_file(p))
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import s3fs

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    # The server in a process of its own, as S3 is: its CPU is not counted as ours.
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    global SERVER_PID
    SERVER_PID = server.pid
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        t0 = time.perf_counter()
        build_run(fs, "bench/run", args.shards)
        print(f"built a {args.shards}-shard run on moto S3 in {time.perf_counter() - t0:.1f}s")
        url = "s3://bench/run"
        base = timed(lambda: sequential_markers(RunDir(url, options)))
        scan = timed(lambda: len(RunDir(url, options).commits()))
        status = timed(lambda: run_status(url, storage_options=options))
        run = RunDir(url, options)  # what infer does at its end: index the markers it saw
        run.write_commit_index(run.commits(), run_id=run.run_meta().run_id)
        scan_ix = timed(lambda: len(RunDir(url, options).commits()))
        status_ix = timed(lambda: run_status(url, storage_options=options))
        assert base[3] == scan[3] == len(status[3].shards_done) == scan_ix[3] == len(status_ix[3].shards_done) == args.shards
        listing = timed(lambda: len(RunDir(url, options)._ls("_commits")))
        rows = [("one listing of _commits/ alone (the server's share)", listing),
                ("markers one GET after another (before)", base),
                ("resume scan, no index: one batched read", scan),
                ("status, no index", status),
                ("resume scan with the commit index", scan_ix),
                ("status with the commit index", status_ix)]
        print(f"{'':52s} {'wall s':>8s} {'CPU s':>8s} {'server CPU s':>13s}")
        for name, (w, c, srv, _) in rows:
            print(f"{name:52s} {w:8.2f} {c:8.2f} {srv:13.2f}")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"shards": args.shards, **{n: {"wall_s": w, "cpu_s": c, "server_cpu_s": srv} for n, (w, c, srv, _) in rows}}, indent=2))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
