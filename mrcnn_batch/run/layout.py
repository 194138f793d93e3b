"""The run directory: one output URL holding a run's plan, tables, commit markers and metrics.

Commit protocol (written once, here). For each shard ``N`` a worker writes, under
deterministic names, ``images/shard-N.parquet``, ``instances/shard-N.parquet`` and
``keypoints/shard-N.parquet`` (``N`` zero-padded to six digits), and only then the marker
``_commits/shard-N.json`` (row counts and file sizes). A shard exists only once its marker
exists: readers list markers, never data files. A retried shard overwrites its own files, so
there are no duplicates and no orphans. When every planned shard has a marker the driver writes
``_SUCCESS``.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mrcnn_batch.schemas import PLAN, TABLES

RUN_JSON = "_run.json"
PLAN_FILE = "_plan/plan.parquet"
COMMITS = "_commits"
SUCCESS = "_SUCCESS"
EVAL_DIR = "eval"


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def table_path(table: str, shard: int) -> str:
    return f"{table}/{shard_name(shard)}.parquet"


def commit_path(shard: int) -> str:
    return f"{COMMITS}/{shard_name(shard)}.json"


@dataclass
class RunDir:
    """A run directory on any fsspec filesystem."""

    url: str
    storage_options: dict[str, Any]

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self.path(rel))  # other processes write here
        return self.fs.exists(self.path(rel))

    def read_json(self, rel: str) -> dict[str, Any]:
        with self.fs.open(self.path(rel), "rb") as f:
            return json.loads(f.read())

    def write_json(self, rel: str, obj: Any) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True).encode()
        self.fs.makedirs(posixpath.dirname(self.path(rel)), exist_ok=True)
        with self.fs.open(self.path(rel), "wb") as f:
            f.write(data)

    def run_meta(self) -> dict[str, Any]:
        if not self.exists(RUN_JSON):
            raise FileNotFoundError(f"{self.url} is not a run directory: no {RUN_JSON}")
        return self.read_json(RUN_JSON)

    def read_plan(self) -> pa.Table:
        with self.fs.open(self.path(PLAN_FILE), "rb") as f:
            return pq.read_table(f, schema=PLAN)

    def committed_shards(self) -> list[int]:
        """Shards with a commit marker, sorted."""
        d = self.path(COMMITS)
        self.fs.invalidate_cache(d)  # markers are written by other processes (s3fs caches listings)
        if not self.fs.exists(d):
            return []
        out = []
        for p in self.fs.ls(d, detail=False):
            name = posixpath.basename(p)
            if name.startswith("shard-") and name.endswith(".json"):
                out.append(int(name[len("shard-") : -len(".json")]))
        return sorted(out)

    def dataset(self, table: str, shards: list[int] | None = None) -> ds.Dataset:
        """A committed table as a pyarrow dataset (only shards with a marker)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        shards = self.committed_shards() if shards is None else shards
        paths = [self.path(table_path(table, s)) for s in shards]
        return ds.dataset(paths, schema=TABLES[table], format="parquet", filesystem=self.fs)

    def read_table(self, table: str, shards: list[int] | None = None) -> pa.Table:
        return self.dataset(table, shards).to_table()


def open_run(url: str, *, storage_options: dict[str, Any] | None = None) -> RunDir:
    """Open a run directory for reading its committed tables (``run.read_table("instances")``)."""
    run = RunDir(url, dict(storage_options or {}))
    run.run_meta()
    return run
