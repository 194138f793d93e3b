"""Object storage (a real S3 endpoint through s3fs), the written tables' schemas and metadata,
and reading them with DuckDB with no help."""

from __future__ import annotations


import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mrcnn_batch as mb
from conftest import QUICK
from mrcnn_batch.schemas import SCHEMA_VERSION, TABLES


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, image_dir, mask_weights):
    out = tmp_path_factory.mktemp("runs") / "local"
    mb.infer(str(image_dir), str(out), weights=str(mask_weights), shard_size=2, **QUICK)
    return mb.open_run(str(out))


def _sorted_rows(run, table):
    return sorted(run.read_table(table).to_pylist(), key=lambda r: (r["image_id"], r.get("instance_id", 0)))


def test_s3_input_and_output_give_the_same_rows(local_run, s3, image_dir, mask_weights):
    fs, bucket, options = s3
    for p in sorted(image_dir.glob("*.jpg")):
        fs.put_file(str(p), f"{bucket}/photos/{p.name}")
    fs.put_file(str(mask_weights), f"{bucket}/models/mask.pth")
    summary = mb.infer(
        f"s3://{bucket}/photos/",
        f"s3://{bucket}/runs/r1",
        weights=f"s3://{bucket}/models/mask.pth",
        storage_options=options,
        shard_size=2,
        **QUICK,
    )
    assert summary.complete
    run = mb.open_run(f"s3://{bucket}/runs/r1", storage_options=options)
    assert fs.exists(f"{bucket}/runs/r1/_SUCCESS")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{bucket}/runs/r1/_commits")) == [
        "_index.json", *(f"shard-{i:06d}.json" for i in range(3))
    ]
    for table in ("instances", "keypoints"):
        assert _sorted_rows(run, table) == _sorted_rows(local_run, table)
    ours = {r["image_id"]: r for r in run.read_table("images").to_pylist()}
    theirs = {r["image_id"]: r for r in local_run.read_table("images").to_pylist()}
    assert ours.keys() == theirs.keys()  # ids come from keys relative to the root, not the bucket
    assert all(ours[k]["uri"].startswith("s3://") for k in ours)
    # no secret reaches the run directory
    meta = run.run_meta().to_json().decode()
    assert "testing" not in meta and options["endpoint_url"] not in meta


def test_files_follow_the_schemas_with_metadata(local_run):
    meta = local_run.run_meta()
    for table, schema in TABLES.items():
        for shard in local_run.committed_shards():
            path = local_run.path(f"{table}/shard-{shard:06d}.parquet")
            f = pq.ParquetFile(path)
            assert f.schema_arrow.remove_metadata().equals(schema), table
            md = f.schema_arrow.metadata
            assert md[b"mrcnn_batch.schema_version"] == SCHEMA_VERSION.encode()
            assert md[b"mrcnn_batch.run_id"] == meta.run_id.encode()
            assert f.metadata.row_group(0).column(0).compression == "ZSTD"
    assert meta.schema_version == SCHEMA_VERSION
    assert meta.weights["sha256"] and meta.model["name"] == "maskrcnn_resnet50_fpn"


def test_duckdb_reads_the_tables_without_help(local_run):
    root = local_run.root
    con = duckdb.connect()
    per_category = con.execute(
        f"SELECT category, count(*) AS n, avg(score) FROM read_parquet('{root}/instances/*.parquet')"
        " GROUP BY category ORDER BY n DESC"
    ).fetchall()
    expected = {}
    for r in local_run.read_table("instances").to_pylist():
        expected[r["category"]] = expected.get(r["category"], 0) + 1
    assert {c: n for c, n, _ in per_category} == expected
    joined = con.execute(
        f"SELECT i.uri, count(x.instance_id) FROM read_parquet('{root}/images/*.parquet') i"
        f" LEFT JOIN read_parquet('{root}/instances/*.parquet') x USING (image_id) GROUP BY i.uri"
    ).fetchall()
    assert len(joined) == 5
    h, w = con.execute(
        f"SELECT mask.size[1], mask.size[2] FROM read_parquet('{root}/instances/*.parquet') LIMIT 1"
    ).fetchone()
    assert h > 0 and w > 0


def test_resume_and_refusal(local_run, image_dir, mask_weights):
    again = mb.infer(str(image_dir), local_run.url, weights=str(mask_weights), shard_size=2, **QUICK)
    assert again.resumed and again.executed_shards == [] and again.complete
    from mrcnn_batch.run.driver import RunRefused

    with pytest.raises(RunRefused, match="score_threshold: 0.05 there, 0.5 now"):
        mb.infer(str(image_dir), local_run.url, weights=str(mask_weights), shard_size=2, score_threshold=0.5, **QUICK)


def test_commit_markers_carry_counts_and_timings(local_run):
    for shard in local_run.committed_shards():
        rec = local_run.read_json(f"_commits/shard-{shard:06d}.json")
        assert rec["shard"] == shard and rec["rows"]["images"] == sum(rec["status_counts"].values())
        assert rec["seconds"] >= rec["model_seconds"] > 0
        assert rec["bytes"]["instances"] > 0


def test_opening_a_run_to_read_it_imports_no_torch(local_run):
    import subprocess
    import sys

    code = ("import sys, mrcnn_batch as mb; run = mb.open_run(sys.argv[1]); "
            "n = run.dataset('instances').to_table().num_rows; assert n > 0; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(n)")
    proc = subprocess.run([sys.executable, "-c", code, local_run.url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_reading_shards_file_by_file_gives_the_datasets_table(local_run, tmp_path):
    import shutil

    shards = local_run.committed_shards()
    for table, schema in TABLES.items():
        columns = schema.names[::2]
        got = local_run.read_shards(table, shards, columns)
        assert got.equals(local_run.dataset(table, shards).to_table(columns=columns)), table
        assert local_run.read_table(table, shards).equals(local_run.dataset(table, shards).to_table()), table
        # one shard at a time, in shard order (read ahead by threads), the same rows
        parts = list(local_run.iter_shards(table, shards, columns))
        assert len(parts) == len(shards) and pa.concat_tables(parts).equals(got), table
        assert [len(p) for p in parts] == [local_run.dataset(table, [s]).count_rows() for s in shards]
    # a file of an older schema version, without a column: nulls there, as the dataset gives them
    root = tmp_path / "run"
    shutil.copytree(local_run.path(""), root)
    old = mb.open_run(str(root))
    path = root / f"instances/shard-{shards[0]:06d}.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["area"]), path)
    columns = ["image_id", "area", "score"]
    got = old.read_shards("instances", shards, columns)
    assert got.equals(old.dataset("instances", shards).to_table(columns=columns))
    assert got["area"].null_count == pq.read_metadata(path).num_rows > 0
