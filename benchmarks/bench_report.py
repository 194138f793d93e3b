"""The report's per-category aggregation of a large run's instances: by category name (the
former way: every row's name as a Python string) against dictionary indices (``report.facts``).

Each way runs in a fresh process over the same in-memory column (``--shards`` chunks of
``--rows`` instances, each with its own dictionary, as shards' files have) and prints CPU
seconds, wall seconds and the peak RSS the aggregation added.

    .venv/bin/python benchmarks/bench_report.py --shards 1000 --rows 10000   # 10 million
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CATEGORIES = ["person", "bicycle", "car", "dog", "cat", "N/A", "bus", "truck", "zebra", "giraffe"]


def column(shards: int, rows: int):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    chunks = []
    for _ in range(shards):
        present = sorted(rng.choice(len(CATEGORIES), size=6, replace=False).tolist())
        dictionary = pa.array([CATEGORIES[i] for i in present])
        indices = pa.array(rng.integers(0, len(present), rows).astype(np.int32))
        chunks.append(pa.DictionaryArray.from_arrays(indices, dictionary))
    scores = rng.random(shards * rows).astype(np.float32)
    return pa.chunked_array(chunks, type=pa.dictionary(pa.int32(), pa.string())), scores


def by_name(col, scores):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    names = pc.cast(col, pa.string()).to_numpy(zero_copy_only=False)
    out = {str(c): scores[names == c] for c in sorted(set(names.tolist()))}
    return {k: len(v) for k, v in out.items()}, float(np.sum([v.sum() for v in out.values()]))


def by_codes(col, scores):
    import numpy as np

    from mrcnn_batch.report.facts import category_codes, scores_by_category

    out = scores_by_category(*category_codes(col), scores)
    return {k: len(v) for k, v in out.items()}, float(np.sum([v.sum() for v in out.values()]))


def child(way: str, shards: int, rows: int) -> None:
    import mrcnn_batch.report.facts  # noqa: F401 - its imports are not the aggregation's cost

    col, scores = column(shards, rows)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    counts, total = (by_name if way == "by_name" else by_codes)(col, scores)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"way": way, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                      "added_peak_mib": round((peak - base) / 1024), "counts": counts, "score_sum": total}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.shards, args.rows)
        return
    results = []
    for way in ("by_name", "by_codes"):
        proc = subprocess.run([sys.executable, __file__, "--child", way, "--shards", str(args.shards),
                               "--rows", str(args.rows)], capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert results[0]["counts"] == results[1]["counts"], "the two ways disagree"
    print(f"{args.shards * args.rows:,} instances in {args.shards} shards")
    print(f"{'':10s}{'CPU s':>8s}{'wall s':>8s}{'added peak RSS':>16s}")
    for r in results:
        print(f"{r['way']:10s}{r['cpu_s']:8.2f}{r['wall_s']:8.2f}{r['added_peak_mib']:13d} MiB")
    print(f"same counts per category: yes; score sums {results[0]['score_sum']:.1f} / {results[1]['score_sum']:.1f}")


if __name__ == "__main__":
    main()
