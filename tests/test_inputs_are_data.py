"""Inputs are data: tar member names, file names and S3 keys are never parsed as URLs or globs;
a corrupt tar is an error naming it; a tar is indexed once per process and read by offset; a
file over the byte limit is refused from its size, unread; bad COCO ids are refused."""

from __future__ import annotations

import io
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from typer.testing import CliRunner

from mrcnn_batch.config import DEFAULT_MAX_BYTES, InputSpec, ReadConfig, RunConfig
from mrcnn_batch.plan import InputError, build_plan, shard_ids, shard_rows
from mrcnn_batch.read import fetch_all
from mrcnn_batch.read.fetch import TooLarge
from mrcnn_batch.read.tars import member_uri, split_member_uri


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def plan_of(url: str, shard_size: int = 64, **kw):
    return build_plan(InputSpec(url=url, **kw), shard_size=shard_size)


def blob(i: int, size: int = 700) -> bytes:
    """Distinct bytes per member; sizes off the 512-byte grid so every member is padded."""
    return np.random.default_rng(i).integers(0, 256, size + 37 * i, dtype=np.uint8).tobytes()


# -- tar member names ---------------------------------------------------------------------
HOSTILE = [
    "a.png::{private}::x.png",
    "b::file://{private}::x.png",
    "c d%41%3A%3A.png",
    "q?versionId=1#frag.png",
    "[x]*.png",
    "日本/写真.png",
    "plain/000123.png",
]


def test_a_member_name_is_never_read_as_a_url(tmp_path):
    private = write_tar(tmp_path / "private.tar", [("x.png", b"PRIVATE")])
    names = [n.format(private=private) for n in HOSTILE]
    own = {n: f"own bytes of {n}".encode() for n in names}
    write_tar(tmp_path / "evil.tar", list(own.items()))

    plan = plan_of(str(tmp_path / "evil.tar"))
    uris = plan.column("uri").to_pylist()
    assert len(uris) == len(names)
    got = fetch_all(uris, storage_options={})
    by_member = {split_member_uri(u)[0]: b for u, b in zip(uris, got)}
    assert by_member == own
    for u in uris:
        assert u.startswith("tar://") and u.endswith("::" + fsspec.filesystem("file").unstrip_protocol(str(tmp_path / "evil.tar")))
    # A plain name keeps a readable URI, which is also fsspec's own URL for the member.
    plain = next(u for u in uris if "plain/000123.png" in u)
    assert plain.startswith("tar://plain/000123.png::")
    with fsspec.open(plain, "rb") as f:
        assert f.read() == own["plain/000123.png"]


@pytest.mark.parametrize("name", ["a.png::x", "%", "%25", "a/b c.png", "\udcff.png"])
def test_member_uris_round_trip(name):
    assert split_member_uri(member_uri(name, "s3://b/k::x.tar")) == (name, "s3://b/k::x.tar")


def _corrupt_second_header(path: Path) -> Path:
    with tarfile.open(path) as tf:
        second = tf.getmembers()[1].offset
    data = bytearray(path.read_bytes())
    data[second + 148 : second + 156] = b"garbage!"  # the header's checksum field
    path.write_bytes(bytes(data))
    return path


def _bad_tar(d: Path, kind: str) -> Path:
    path = d / f"{kind}.tar"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "short":
        path.write_bytes(b"not a tar")
    elif kind == "second":
        _corrupt_second_header(write_tar(path, [(f"{i}.png", blob(i)) for i in range(4)]))
    else:  # "cut": the data of the first member cut short
        write_tar(path, [(f"{i}.png", blob(i, 5000)) for i in range(3)])
        path.write_bytes(path.read_bytes()[:2000])
    return path


@pytest.mark.parametrize("kind", ["random", "short", "second", "cut"])
def test_a_corrupt_tar_is_an_error_naming_it(tmp_path, kind):
    bad = _bad_tar(tmp_path, kind)
    with pytest.raises(InputError, match=rf"tar shard '.*{bad.name}'"):
        plan_of(str(bad))
    write_tar(tmp_path / "a-good.tar", [("g.png", b"g")])
    write_tar(tmp_path / "z-good.tar", [("g.png", b"g")])
    with pytest.raises(InputError, match=bad.name):  # also among good tars
        plan_of(str(tmp_path / "*.tar"))


def test_a_corrupt_tar_through_the_cli_is_exit_2_naming_it(tmp_path):
    from mrcnn_batch.cli import app

    bad = _bad_tar(tmp_path, "second")
    res = CliRunner().invoke(app, ["infer", str(bad), str(tmp_path / "out"), "--dry-run", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "second.tar" in res.output and "corrupt" in res.output


def test_a_tar_damaged_after_planning_fails_only_its_unreadable_members(tmp_path):
    tar = write_tar(tmp_path / "late.tar", [(f"{i}.png", blob(i)) for i in range(4)])
    uris = plan_of(str(tar)).column("uri").to_pylist()
    _corrupt_second_header(tar)
    got = fetch_all(uris, storage_options={})
    assert got[0] == blob(0)
    for res in got[1:]:
        assert isinstance(res, ValueError) and "late.tar" in str(res) and "corrupt" in str(res)


# -- one index per tar, members read at their offsets ---------------------------------------
class CountingFile(io.FileIO):
    def __init__(self, path: str, log: list):
        super().__init__(path, "rb")
        self._log, self._path = log, path

    def read(self, n: int = -1) -> bytes:
        at = self.tell()
        data = super().read(n)
        self._log.append((self._path, at, len(data)))
        return data


class CountingFS(LocalFileSystem):
    """The local disk under ``countfile://``, logging every read: (path, offset, length)."""

    protocol = ("countfile",)
    reads: list = []

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("countfile://"):
            path = path[len("countfile://") :]
        return LocalFileSystem._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return "countfile://" + self._strip_protocol(name)

    def _open(self, path, mode="rb", **kwargs):
        assert mode == "rb"
        return CountingFile(self._strip_protocol(path), self.reads)


@pytest.fixture
def countfs():
    fsspec.register_implementation("countfile", CountingFS, clobber=True)
    CountingFS.reads = []
    yield CountingFS


def _coverage(path: Path, reads: list) -> np.ndarray:
    times = np.zeros(path.stat().st_size + 1024, dtype=np.int64)
    for p, at, n in reads:
        if p == str(path):
            times[at : at + n] += 1
    return times


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_a_shard_reads_each_tar_header_and_member_once_at_any_batch_size(tmp_path, countfs, batch_size):
    members = [(f"{i:03d}.jpg", blob(i)) for i in range(20)]
    members.insert(7, ("notes.txt", b"not an image" * 100))  # skipped by the plan, never read
    tar = write_tar(tmp_path / f"shard-bs{batch_size}.tar", members)
    with tarfile.open(tar) as tf:
        infos = tf.getmembers()

    plan = plan_of(f"countfile://{tar}", shard_size=64)
    assert shard_ids(plan) == [0]
    countfs.reads.clear()
    uris = shard_rows(plan, 0).column("uri").to_pylist()
    batches = [uris[i : i + batch_size] for i in range(0, len(uris), batch_size)]
    with ThreadPoolExecutor(2) as pool:  # two batches in flight, as the shard processor reads
        got = [b for part in pool.map(lambda b: fetch_all(b, storage_options={}), batches) for b in part]

    assert {split_member_uri(u)[0]: b for u, b in zip(uris, got)} == {n: d for n, d in members if n.endswith(".jpg")}
    times = _coverage(tar, countfs.reads)
    for info in infos:
        header = times[info.offset : info.offset_data]
        assert header.min() == header.max() == 1, f"header of {info.name} read {header.max()} times"
        data = times[info.offset_data : info.offset_data + info.size]
        expected = 0 if info.name == "notes.txt" else 1
        assert data.min() == data.max() == expected, f"data of {info.name}"


def test_tar_shards_never_span_tars(tmp_path):
    for t, n in [("a", 5), ("b", 1), ("c", 7)]:
        write_tar(tmp_path / f"{t}.tar", [(f"{i:02d}.png", blob(i, 10)) for i in range(n)])
    plan = plan_of(str(tmp_path / "*.tar"), shard_size=4)
    tars = [split_member_uri(u)[1].rsplit("/", 1)[1] for u in plan.column("uri").to_pylist()]
    assert tars == ["a.tar"] * 5 + ["b.tar"] + ["c.tar"] * 7
    assert plan.column("shard").to_pylist() == [0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 4, 4, 4]


# -- the byte limit -----------------------------------------------------------------------
def test_a_file_over_the_byte_limit_is_refused_from_its_size_unread(tmp_path, countfs):
    (tmp_path / "small.jpg").write_bytes(b"x" * 1000)
    (tmp_path / "over.jpg").write_bytes(b"x" * 1001)
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(1_500_000_000)  # sparse: 1.5 GB that takes no disk
    uris = [f"countfile://{tmp_path}/{n}" for n in ("small.jpg", "over.jpg")]
    small, over = fetch_all(uris, storage_options={}, max_bytes=1000)
    assert small == b"x" * 1000
    assert isinstance(over, TooLarge) and "1001 bytes" in str(over) and "over.jpg" in str(over)
    (big,) = fetch_all([f"countfile://{huge}"], storage_options={})  # the default limit
    assert isinstance(big, TooLarge) and big.size == 1_500_000_000 and big.limit == DEFAULT_MAX_BYTES
    assert not [r for r in countfs.reads if r[0] != f"{tmp_path}/small.jpg"]


def test_a_tar_member_over_the_byte_limit_is_refused_unread(tmp_path, countfs):
    tar = write_tar(tmp_path / "m.tar", [("ok.png", b"y" * 100), ("big.png", b"z" * 5000)])
    uris = plan_of(f"countfile://{tar}").column("uri").to_pylist()
    countfs.reads.clear()
    big, ok = fetch_all(uris, storage_options={}, max_bytes=4096)
    assert ok == b"y" * 100
    assert isinstance(big, TooLarge) and "5000 bytes" in str(big) and "big.png" in str(big)
    with tarfile.open(tar) as tf:
        info = tf.getmember("big.png")
    assert _coverage(tar, countfs.reads)[info.offset_data : info.offset_data + info.size].max() == 0


def test_the_byte_limit_is_part_of_the_run_identity():
    a = RunConfig(input=InputSpec("x"), output="o")
    b = RunConfig(input=InputSpec("x"), output="o", read=ReadConfig(max_bytes=1000))
    assert a.identity(weights_sha256="w")["max_bytes"] == DEFAULT_MAX_BYTES
    assert a.identity(weights_sha256="w") != b.identity(weights_sha256="w")


# -- plan inputs ---------------------------------------------------------------------------
def _coco(tmp_path: Path, image: dict) -> str:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, image], "annotations": []}))
    return str(path)


@pytest.mark.parametrize(
    "image, found",
    [
        ({"id": None, "file_name": "b.jpg"}, "id null"),
        ({"id": 2**63, "file_name": "b.jpg"}, "outside the int64 range"),
        ({"id": 10**30, "file_name": "b.jpg"}, "outside the int64 range"),
        ({"id": 1.9, "file_name": "b.jpg"}, "id 1.9"),
        ({"id": True, "file_name": "b.jpg"}, "id true"),
        ({"id": "7", "file_name": "b.jpg"}, 'id "7"'),
        ({"id": 2, "file_name": None}, "file_name null"),
        ({"id": 2, "file_name": ""}, 'file_name ""'),
    ],
)
def test_bad_coco_images_are_refused_naming_the_input(tmp_path, image, found):
    url = _coco(tmp_path, image)
    with pytest.raises(InputError, match=rf"ann.json'.*images\[1\] has {found}" if "range" not in found else found):
        plan_of(url)


def test_coco_ids_at_the_int64_bounds_are_kept(tmp_path):
    url = _coco(tmp_path, {"id": 2**63 - 1, "file_name": "b.jpg"})
    assert plan_of(url).column("image_id").to_pylist() == [1, 2**63 - 1]


def test_bad_coco_id_through_the_cli_is_exit_2(tmp_path):
    from mrcnn_batch.cli import app

    url = _coco(tmp_path, {"id": None, "file_name": "b.jpg"})
    res = CliRunner().invoke(app, ["infer", url, str(tmp_path / "out"), "--dry-run", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "images[1] has id null" in res.output


def test_a_folder_named_with_glob_characters_is_a_folder(tmp_path):
    folder = tmp_path / "photos[1]"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"A")
    (folder / "b?.jpg").write_bytes(b"B")
    (tmp_path / "photos1").mkdir()  # what the name would match as a glob
    (tmp_path / "photos1" / "c.jpg").write_bytes(b"C")
    plan = plan_of(str(folder))
    uris = plan.column("uri").to_pylist()
    assert [u.rsplit("/", 1)[1] for u in uris] == ["a.jpg", "b?.jpg"]
    assert fetch_all(uris, storage_options={}) == [b"A", b"B"]
    # ...and a glob is still a glob where nothing of that name exists.
    assert [u.rsplit("/", 1)[1] for u in plan_of(str(tmp_path / "photos1" / "[c]*.jpg")).column("uri").to_pylist()] == ["c.jpg"]
    write_tar(tmp_path / "shards[0].tar", [("t.png", b"T")])
    assert fetch_all(plan_of(str(tmp_path / "shards[0].tar")).column("uri").to_pylist(), storage_options={}) == [b"T"]


def test_a_local_file_name_with_url_characters_is_read_as_named(tmp_path):
    names = ["a::b.jpg", "q?x=1.jpg", "h#f.jpg", "s3:"]
    (tmp_path / "d").mkdir()
    for n in names[:3]:
        (tmp_path / "d" / n).write_bytes(n.encode())
    (tmp_path / "d" / "s3:").mkdir()
    (tmp_path / "d" / "s3:" / "x.jpg").write_bytes(b"local, not s3")
    uris = plan_of(str(tmp_path / "d")).column("uri").to_pylist()
    got = dict(zip((u.split("/d/", 1)[1] for u in uris), fetch_all(uris, storage_options={})))
    assert got == {"a::b.jpg": b"a::b.jpg", "q?x=1.jpg": b"q?x=1.jpg", "h#f.jpg": b"h#f.jpg", "s3:/x.jpg": b"local, not s3"}


def test_a_file_name_that_is_not_utf8_is_an_input_error(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.jpg").write_bytes(b"x")
    try:
        (d / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"x")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    with pytest.raises(InputError, match="not valid UTF-8"):
        plan_of(str(d))


def test_an_s3_key_with_url_characters_is_listed_and_read(s3):
    fs, bucket, options = s3
    keys = ["imgs/x.jpg?versionId=1.jpg", "imgs/h#frag.jpg", "imgs/a::s3://other/b.jpg", "imgs/[p].jpg"]
    for k in keys:  # put by key: s3fs's own paths would read ?versionId= as a version
        fs.call_s3("put_object", Bucket=bucket, Key=k, Body=k.encode())
    fs.call_s3("put_object", Bucket=bucket, Key="imgs/big.jpg", Body=b"b" * 3000)
    plan = plan_of(f"s3://{bucket}/imgs", storage_options=options)
    uris = [u for u in plan.column("uri").to_pylist() if not u.endswith("/big.jpg")]
    assert dict(zip(uris, fetch_all(uris, storage_options=options))) == {f"s3://{bucket}/{k}": k.encode() for k in keys}
    (big,) = fetch_all([f"s3://{bucket}/imgs/big.jpg"], storage_options=options, max_bytes=2000)
    assert isinstance(big, TooLarge) and "3000 bytes" in str(big)


def test_a_tar_shard_gives_the_same_rows_at_batch_sizes_1_2_8(tmp_path):
    """Through the shard processor with the demo model: hostile member names read as named,
    shards that never span tars, and rows independent of the batch size."""
    import mrcnn_batch as mb
    from mrcnn_batch.datasets.shapes import HELDOUT_SEED, write_dataset

    write_dataset(str(tmp_path / "src"), seed=HELDOUT_SEED + 3, num_images=6)
    pngs = sorted((tmp_path / "src" / "images").glob("*.png"))
    write_tar(tmp_path / "a.tar", [(f"x::{tmp_path}/b.tar::{p.name}", p.read_bytes()) for p in pngs[:4]])
    write_tar(tmp_path / "b.tar", [(f"s/{p.name}", p.read_bytes()) for p in pngs[4:]])
    tables = []
    for bs in (1, 2, 8):
        out = tmp_path / f"out{bs}"
        summary = mb.infer(str(tmp_path / "*.tar"), str(out), model="demo", shard_size=3, batch_size=bs, executor="local")
        assert summary.complete
        run = mb.open_run(str(out))
        images = run.read_table("images").sort_by("image_id")
        instances = run.read_table("instances").sort_by([("image_id", "ascending"), ("instance_id", "ascending")])
        tables.append((images.to_pylist(), instances.to_pylist()))
    images, instances = tables[0]
    assert [r["status"] for r in images] == ["ok"] * 6 and instances
    assert sorted((r["shard"], r["uri"].rsplit("/", 1)[1]) for r in images) == [(0, "a.tar")] * 3 + [(1, "a.tar"), (2, "b.tar"), (2, "b.tar")]
    assert tables[0] == tables[1] == tables[2]
