"""Nothing lost, nothing touched: ``--overwrite`` removes only a run's own files, and a torn or
failed write (a full disk) never counts as a commit nor breaks the run for good.

Through the CLI, in process, with the demo model on synthetic images and the local executor."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mrcnn_batch.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SHARDS_FAILED,
    EXIT_STORAGE,
    EXIT_USAGE,
    app,
)
from mrcnn_batch.datasets.shapes import HELDOUT_SEED, write_dataset
from mrcnn_batch.run.layout import RunDir

pytestmark = pytest.mark.heavy  # many model runs without Ray: scheduled early (tests/conftest.py)

ARGS = ["--model", "demo", "--executor", "local", "--shard-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_dataset(str(d), seed=HELDOUT_SEED + 11, num_images=5)
    return d / "images"


def infer(photos: Path, out, *extra: str):
    return CliRunner().invoke(app, ["infer", str(photos), str(out), *ARGS, *extra])


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (symbolic links not followed) with its bytes."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
    return out


def tables(out: Path) -> dict[str, list]:
    run = RunDir(str(out), {})
    return {t: sorted(run.read_table(t).to_pylist(), key=lambda r: (r["image_id"], r.get("instance_id", 0)))
            for t in ("images", "instances", "keypoints")}


@pytest.fixture(scope="module")
def clean(photos, tmp_path_factory) -> dict[str, list]:
    out = tmp_path_factory.mktemp("clean") / "run"
    res = infer(photos, out)
    assert res.exit_code == EXIT_OK, res.output
    return tables(out)


# -- overwrite ---------------------------------------------------------------------------------
def test_overwrite_refuses_a_folder_that_holds_no_run(photos, tmp_path):
    out = tmp_path / "home"
    (out / "thesis").mkdir(parents=True)
    (out / "thesis" / "chapter1.tex").write_text("years of work")
    (out / "notes.txt").write_text("keep me")
    before = tree(out)
    res = infer(photos, out, "--overwrite")
    assert res.exit_code == EXIT_USAGE, res.output
    assert "--overwrite refused" in res.output and "notes.txt" in res.output and "thesis/" in res.output
    assert tree(out) == before


def test_overwrite_refuses_a_run_holding_foreign_files_and_keeps_them(photos, tmp_path):
    out = tmp_path / "run"
    assert infer(photos, out).exit_code == EXIT_OK
    (out / "instances" / "my-analysis.csv").write_text("a,b\n")
    (out / "README.txt").write_text("mine")
    before = tree(out)
    res = infer(photos, out, "--overwrite", "--score-threshold", "0.3")
    assert res.exit_code == EXIT_USAGE, res.output
    assert "instances/my-analysis.csv" in res.output and "README.txt" in res.output
    assert tree(out) == before


def test_overwrite_never_follows_a_symbolic_link_out(photos, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "shard-000000.parquet").write_text("not ours, though it has our name")
    out = tmp_path / "run"
    assert infer(photos, out).exit_code == EXIT_OK
    shutil.rmtree(out / "keypoints")
    os.symlink(elsewhere, out / "keypoints")
    res = infer(photos, out, "--overwrite", "--score-threshold", "0.3")
    assert res.exit_code == EXIT_USAGE, res.output
    assert "keypoints" in res.output
    assert (elsewhere / "shard-000000.parquet").read_text() == "not ours, though it has our name"

    # An output that is itself a link to a folder of someone else's files.
    target = tmp_path / "target"
    target.mkdir()
    (target / "photo.jpg").write_bytes(b"\xff\xd8 precious")
    link = tmp_path / "link-out"
    os.symlink(target, link)
    res = infer(photos, link, "--overwrite")
    assert res.exit_code == EXIT_USAGE, res.output
    assert (target / "photo.jpg").read_bytes() == b"\xff\xd8 precious"


def test_overwrite_refuses_an_output_that_contains_the_input(tmp_path):
    parent = tmp_path / "project"
    write_dataset(str(parent), seed=HELDOUT_SEED + 12, num_images=2)
    before = tree(parent)
    res = infer(parent / "images", parent, "--overwrite")
    assert res.exit_code == EXIT_USAGE, res.output
    assert "contains the input" in res.output
    assert tree(parent) == before


def test_overwrite_replaces_a_run_of_its_own_files_only(photos, clean, tmp_path):
    out = tmp_path / "run"
    assert infer(photos, out, "--score-threshold", "0.9").exit_code == EXIT_OK
    res = infer(photos, out)
    assert res.exit_code == EXIT_REFUSED, res.output
    res = infer(photos, out, "--overwrite")
    assert res.exit_code == EXIT_OK, res.output
    assert tables(out) == clean


def test_overwrite_on_s3_refuses_a_bucket_with_other_objects(photos, s3):
    fs, bucket, options = s3
    fs.pipe(f"{bucket}/backups/db.dump", b"irreplaceable")
    import json

    res = CliRunner().invoke(app, ["infer", str(photos), f"s3://{bucket}", *ARGS, "--overwrite",
                                   "--output-storage-options", json.dumps(options)])
    assert res.exit_code == EXIT_USAGE, res.output
    assert "backups/" in res.output
    assert fs.cat(f"{bucket}/backups/db.dump") == b"irreplaceable"


# -- torn writes and damaged files -----------------------------------------------------------------
def test_a_torn_marker_is_not_a_commit_and_the_shard_runs_again(photos, clean, tmp_path):
    out = tmp_path / "run"
    assert infer(photos, out).exit_code == EXIT_OK
    (out / "_SUCCESS").unlink()
    (out / "_commits" / "shard-000001.json").write_bytes(b"")  # what an in-place write left on a full disk
    res = CliRunner().invoke(app, ["status", str(out)])
    assert res.exit_code == EXIT_SHARDS_FAILED, res.output
    assert "shard 1" in res.output and "not a commit" in res.output
    res = infer(photos, out)
    assert res.exit_code == EXIT_OK, res.output
    assert "3 shards (1 run now, resumed)" in res.output
    assert tables(out) == clean


def test_a_marker_of_another_run_or_for_other_files_is_not_counted(photos, clean, tmp_path):
    out = tmp_path / "run"
    assert infer(photos, out).exit_code == EXIT_OK
    marker = out / "_commits" / "shard-000000.json"
    marker.write_text(marker.read_text().replace(RunDir(str(out), {}).run_meta().run_id, uuid.uuid4().hex))
    table = pq.read_table(out / "images" / "shard-000002.parquet")
    pq.write_table(table.slice(0, 0), out / "images" / "shard-000002.parquet")  # files replaced after the commit
    run = RunDir(str(out), {})
    assert run.committed_shards() == [1]
    assert set(run.rejected) == {0, 2} and "belongs to run" in run.rejected[0] and "images" in run.rejected[2]
    res = infer(photos, out)
    assert res.exit_code == EXIT_OK, res.output
    assert tables(out) == clean


def test_a_damaged_run_json_names_the_way_out(photos, clean, tmp_path):
    out = tmp_path / "run"
    assert infer(photos, out).exit_code == EXIT_OK
    (out / "_run.json").write_bytes(b"")
    for cmd in (["status", str(out)], ["report", str(out), "--out", str(tmp_path / "r.html")], ["infer", str(photos), str(out), *ARGS]):
        res = CliRunner().invoke(app, cmd)
        assert res.exit_code == EXIT_REFUSED, (cmd, res.output)
        assert "_run.json is damaged" in res.output and "--overwrite" in res.output
    res = infer(photos, out, "--overwrite")
    assert res.exit_code == EXIT_OK, res.output
    assert tables(out) == clean


# -- a full disk -----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file taking all but about ``leave`` bytes of ``disk``."""
    ballast = disk / "ballast"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return ballast


def test_a_full_disk_is_reported_and_the_same_command_completes_once_space_is_freed(photos, clean, small_disk, tmp_path):
    out = small_disk / "run"
    report = tmp_path / "report.html"
    ballast = _fill(small_disk, leave=48 * 1024)  # the plan and _run.json fit; not every shard does
    res = infer(photos, out)
    assert res.exit_code in (EXIT_SHARDS_FAILED, EXIT_STORAGE), res.output
    assert "No space left on device" in res.output
    run = RunDir(str(out), {})
    done = run.committed_shards()
    assert len(done) < 3
    assert not run.rejected or all("not parse" not in r for r in run.rejected.values())
    res = CliRunner().invoke(app, ["status", str(out)])
    assert res.exit_code in (EXIT_SHARDS_FAILED, EXIT_USAGE), res.output  # pending, or no run yet
    if res.exit_code == EXIT_SHARDS_FAILED:
        res = CliRunner().invoke(app, ["report", str(out), "--out", str(report)])
        assert res.exit_code == EXIT_OK, res.output
        assert "Incomplete run" in report.read_text()

    ballast.unlink()  # space freed: the same command completes
    res = infer(photos, out)
    assert res.exit_code == EXIT_OK, res.output
    assert tables(out) == clean
    assert CliRunner().invoke(app, ["status", str(out)]).exit_code == EXIT_OK
    res = CliRunner().invoke(app, ["report", str(out), "--out", str(report)])
    assert res.exit_code == EXIT_OK, res.output


def test_the_commit_index_never_hides_a_rewritten_marker(photos, clean, tmp_path):
    out = tmp_path / "run"
    assert infer(photos, out).exit_code == EXIT_OK
    assert (out / "_commits" / "_index.json").exists()  # written by infer at its end
    run_id = RunDir(str(out), {}).run_meta().run_id
    marker = out / "_commits" / "shard-000000.json"
    marker.write_text(marker.read_text().replace(run_id, "f" * len(run_id)))  # same size, another run's
    run = RunDir(str(out), {})
    assert run.committed_shards() == [1, 2] and "belongs to run" in run.rejected[0]
    (out / "_commits" / "_index.json").write_bytes(b"{not json")  # damaged: only costs reads
    assert RunDir(str(out), {}).committed_shards() == [1, 2]
    res = infer(photos, out)
    assert res.exit_code == EXIT_OK, res.output
    assert tables(out) == clean


def test_a_crashed_driver_leaves_a_recent_commit_index(photos, clean, tmp_path, monkeypatch):
    import json

    import mrcnn_batch as mb
    from mrcnn_batch.run import driver

    class Crash(Exception):
        pass

    def crash_at_the_second_commit(record):
        seen.append(record["shard"])
        if len(seen) == 2:
            raise Crash

    seen: list[int] = []
    monkeypatch.setattr(driver, "INDEX_EVERY_S", 0.0)  # refresh at every commit (one at a time)
    out = tmp_path / "run"
    with pytest.raises(Crash):
        mb.infer(str(photos), str(out), executor="local", model="demo", shard_size=2, on_commit=crash_at_the_second_commit)
    assert not (out / "_SUCCESS").exists()
    indexed = {int(s) for s in json.loads((out / "_commits" / "_index.json").read_text())["markers"]}
    committed = set(RunDir(str(out), {}).committed_shards())
    assert seen[0] in indexed and indexed <= committed and set(seen) <= committed  # refreshed at the first commit
    res = infer(photos, out)  # the resume takes the indexed markers from the index
    assert res.exit_code == EXIT_OK, res.output
    assert tables(out) == clean


def test_a_run_made_before_max_bytes_existed_resumes_with_the_default(photos, tmp_path):
    import json

    out = tmp_path / "run"
    assert infer(photos, out).exit_code == EXIT_OK
    meta = json.loads((out / "_run.json").read_text())
    del meta["identity"]["max_bytes"]
    (out / "_run.json").write_text(json.dumps(meta))
    assert infer(photos, out).exit_code == EXIT_OK
    res = infer(photos, out, "--max-bytes", "1000")
    assert res.exit_code == EXIT_REFUSED and "max_bytes" in res.output, res.output


# -- a write that fails and then works ------------------------------------------------------------
def test_a_failed_write_is_tried_again_without_running_the_model_again(photos, clean, tmp_path, monkeypatch, caplog):
    """The first rename of every instances file fails (as a dropped connection would): the write
    is tried again, the shard is not run again, and the files equal a clean run's."""
    import errno

    from mrcnn_batch.run import processor

    monkeypatch.setattr(processor, "WRITE_BACKOFF_S", 0.01)
    real_replace, failed = os.replace, []

    def flaky_replace(src, dst):
        if "/instances/" in str(dst) and dst not in failed:
            failed.append(dst)
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    res = infer(photos, tmp_path / "run")
    assert res.exit_code == EXIT_OK, res.output
    assert len(failed) == 3  # 5 images in shards of 2: every shard's instances file failed once
    assert "try 1 of 3" in caplog.text and "attempt" not in caplog.text  # no shard ran twice
    assert tables(tmp_path / "run") == clean
    assert not [p for p in (tmp_path / "run").rglob("*.tmp-*")]  # the failed tries left nothing


def test_a_full_disk_is_not_tried_again(photos, tmp_path, monkeypatch, caplog):
    import errno

    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith(".parquet") and "/instances/" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    res = infer(photos, tmp_path / "run", "--max-attempts", "1")
    assert res.exit_code == EXIT_STORAGE or res.exit_code == EXIT_SHARDS_FAILED, res.output
    assert "try 1 of" not in caplog.text
