"""Planning a large prefix: wall time and peak Python memory of ``build_plan`` beside the
obvious baseline (fsspec's ``find`` of the prefix, then a Python list of keys and URIs), in one
run, on the same files.

A flat local folder of N empty ``.jpg`` files is the worst case for a per-directory listing;
``--s3 N`` adds the same on a moto S3 server through s3fs (list-objects pages of 1,000 keys).
Peak Python memory is tracemalloc's (Arrow buffers are outside it: they are the plan itself,
about 100 bytes a key, reported apart).

    .venv/bin/python benchmarks/bench_plan.py --files 200000
    .venv/bin/python benchmarks/bench_plan.py --files 100000 --s3 20000
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import fsspec

from mrcnn_batch.config import InputSpec
from mrcnn_batch.plan import build_plan


def measure(fn) -> tuple[float, float, object]:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return wall, peak / 2**20, out


def baseline(url: str, options: dict) -> int:
    """What one writes without streaming: every key listed into Python objects, then a table."""
    import pyarrow as pa

    fs, root = fsspec.core.url_to_fs(url, **options)
    found = sorted(p for p in fs.find(root) if p.lower().endswith(".jpg"))
    keys = [posixpath.relpath(p, root) for p in found]
    uris = [fs.unstrip_protocol(p) for p in found]
    return pa.table({"key": keys, "uri": uris}).num_rows


def row(where: str, n: int, url: str, options: dict) -> dict:
    fs = fsspec.core.url_to_fs(url, **options)[0]
    fs.invalidate_cache()
    b_wall, b_peak, b_rows = measure(lambda: baseline(url, options))
    fs.invalidate_cache()
    p_wall, p_peak, plan = measure(lambda: build_plan(InputSpec(url=url, storage_options=options), shard_size=256))
    assert plan.num_rows == b_rows == n, (plan.num_rows, b_rows, n)
    return {"where": where, "keys": n, "baseline_s": b_wall, "baseline_peak_mib": b_peak, "plan_s": p_wall,
            "plan_peak_mib": p_peak, "plan_arrow_mib": plan.nbytes / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200_000, help="local files in one flat folder")
    ap.add_argument("--s3", type=int, default=0, help="also this many keys on a moto S3 server (slow to create)")
    ap.add_argument("--json", default="benchmarks/results/plan.json")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="mrcnn_plan_") as tmp:
        folder = Path(tmp) / "flat"
        folder.mkdir()
        for i in range(args.files):
            (folder / f"{i:08d}.jpg").touch()
        rows.append(row("local", args.files, str(folder), {}))
    if args.s3:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server._server.server_address  # noqa: SLF001 - the port moto picked
            options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
            os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
            fs = fsspec.filesystem("s3", **options)
            fs.mkdir("bench")
            for start in range(0, args.s3, 1000):
                fs.pipe({f"bench/flat/{i:08d}.jpg": b"" for i in range(start, min(start + 1000, args.s3))})
            rows.append(row("s3 (moto)", args.s3, "s3://bench/flat", options))
        finally:
            server.stop()

    print(f"{'where':10s} {'keys':>9s}   {'baseline s':>10s} {'peak MiB':>9s}   {'plan s':>7s} {'peak MiB':>9s}"
          f" {'(Arrow MiB)':>11s}   peak ratio")
    for r in rows:
        print(f"{r['where']:10s} {r['keys']:9d}   {r['baseline_s']:10.2f} {r['baseline_peak_mib']:9.1f}   "
              f"{r['plan_s']:7.2f} {r['plan_peak_mib']:9.1f} {r['plan_arrow_mib']:11.1f}   "
              f"{r['baseline_peak_mib'] / max(r['plan_peak_mib'], 1e-9):9.1f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
