"""Listing every input kind into a deterministic plan with stable ids."""

from __future__ import annotations

import json
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrcnn_batch.config import InputSpec
from mrcnn_batch.plan import InputError, build_plan, input_kind
from mrcnn_batch.plan.ids import stable_id
from mrcnn_batch.schemas import PLAN


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    (root / "a" / "b").mkdir(parents=True)
    for rel in ["x.jpg", "a/y.PNG", "a/b/z.jpeg", "README.md", "a/notes.txt"]:
        (root / rel).write_bytes(b"data")
    return root


def plan_of(url, **kw):
    return build_plan(InputSpec(url=url, **kw), shard_size=2)


def test_prefix_lists_images_recursively_sorted_with_ids_from_relative_keys(tree):
    plan = plan_of(str(tree))
    assert plan.schema.equals(PLAN)
    uris = plan.column("uri").to_pylist()
    assert [u.rsplit("/imgs/", 1)[1] for u in uris] == ["a/b/z.jpeg", "a/y.PNG", "x.jpg"]
    assert plan.column("image_id").to_pylist() == [stable_id(k) for k in ["a/b/z.jpeg", "a/y.PNG", "x.jpg"]]
    assert plan.column("shard").to_pylist() == [0, 0, 1]
    assert all(i >= 0 for i in plan.column("image_id").to_pylist())


def test_ids_survive_relisting_new_files_and_moving_the_collection(tree, tmp_path):
    before = dict(zip(plan_of(str(tree)).column("uri").to_pylist(), plan_of(str(tree)).column("image_id").to_pylist()))
    (tree / "a" / "0first.jpg").write_bytes(b"new")
    after = plan_of(str(tree))
    for uri, image_id in zip(after.column("uri").to_pylist(), after.column("image_id").to_pylist()):
        if uri in before:
            assert before[uri] == image_id
    moved = tmp_path / "elsewhere"
    shutil.copytree(tree, moved)
    assert sorted(plan_of(str(moved)).column("image_id").to_pylist()) == sorted(after.column("image_id").to_pylist())


def test_glob(tree):
    plan = plan_of(str(tree / "a" / "**" / "*.jpeg"))
    assert [u.rsplit("/", 1)[1] for u in plan.column("uri").to_pylist()] == ["z.jpeg"]


def test_manifests_txt_csv_parquet(tree, tmp_path):
    uris = [str(tree / "x.jpg"), str(tree / "a/y.PNG")]
    (tmp_path / "m.txt").write_text("# comment\n" + "\n".join(uris) + "\n\n")
    (tmp_path / "m.csv").write_text("uri,image_id\n" + "".join(f"{u},{i}\n" for i, u in zip([7, 3], uris)))
    pq.write_table(pa.table({"uri": uris}), tmp_path / "m.parquet")
    txt = plan_of(str(tmp_path / "m.txt"))
    assert txt.column("uri").to_pylist() == uris  # manifest order is kept
    assert txt.column("image_id").to_pylist() == [stable_id(u) for u in uris]
    assert plan_of(str(tmp_path / "m.csv")).column("image_id").to_pylist() == [7, 3]
    assert plan_of(str(tmp_path / "m.parquet")).column("uri").to_pylist() == uris


def test_coco_json_uses_its_ids_and_image_root(tree, tmp_path):
    coco = {"images": [{"id": 42, "file_name": "x.jpg"}, {"id": 5, "file_name": "a/y.PNG"}], "annotations": []}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    plan = plan_of(str(tmp_path / "ann.json"), image_root=str(tree))
    assert plan.column("image_id").to_pylist() == [5, 42]
    assert plan.column("uri").to_pylist()[0].endswith("imgs/a/y.PNG")


def test_tar_shards(tree, tmp_path):
    for n in range(2):
        with tarfile.open(tmp_path / f"shard-{n}.tar", "w") as tf:
            tf.add(tree / "x.jpg", arcname=f"s{n}/x.jpg")
            tf.add(tree / "README.md", arcname=f"s{n}/README.md")
    plan = plan_of(str(tmp_path / "shard-*.tar"))
    uris = plan.column("uri").to_pylist()
    assert len(uris) == 2 and all(u.startswith("tar://s") and "::" in u for u in uris)
    assert input_kind(str(tmp_path / "shard-0.tar")) == "tar"
    from mrcnn_batch.read import fetch_all

    assert fetch_all(uris, storage_options={}) == [b"data", b"data"]


def test_errors_name_the_input(tree, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        plan_of(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        plan_of(str(tmp_path / "empty"))
    (tmp_path / "dup.csv").write_text("uri,image_id\na.jpg,1\nb.jpg,1\n")
    with pytest.raises(InputError, match="image id 1 to two images: 'a.jpg' and 'b.jpg'"):
        plan_of(str(tmp_path / "dup.csv"))
    (tmp_path / "bad.csv").write_text("path\na.jpg\n")
    with pytest.raises(InputError, match="no 'uri' column"):
        plan_of(str(tmp_path / "bad.csv"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        plan_of(str(tmp_path / "bad.json"))
    for i, bad in enumerate(["abc", "1.5"]):
        (tmp_path / f"ids{i}.csv").write_text(f"uri,image_id\na.jpg,{bad}\n")
        with pytest.raises(InputError, match=f"ids{i}.csv': 'image_id' must be integers"):
            plan_of(str(tmp_path / f"ids{i}.csv"))


def test_listing_many_keys_is_chunked(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(3000):
        (root / f"{i:05d}.jpg").touch()
    plan = build_plan(InputSpec(url=str(root)), shard_size=1000)
    assert plan.num_rows == 3000
    assert plan.column("shard").to_pylist()[-1] == 2
    assert len(set(plan.column("image_id").to_pylist())) == 3000


def test_s3_prefix_is_listed_page_by_page_without_the_listing_cache(s3, monkeypatch):
    """More keys than one list-objects page (1000), nested; s3fs's directory cache stays empty."""
    import mrcnn_batch.plan.sources as sources

    fs, bucket, options = s3
    names = [f"d{i % 3}/{i:05d}.jpg" for i in range(1100)] + ["d0/notes.txt", "top.png"]
    fs.pipe({f"{bucket}/set/{n}": b"x" for n in names})
    fs.pipe({f"{bucket}/settled/other.jpg": b"x"})  # shares the prefix's stem, not its folder
    fs.invalidate_cache()
    monkeypatch.setattr(sources, "_CHUNK", 500)  # several chunks per page and pages per chunk

    listed = sources.list_input(InputSpec(url=f"s3://{bucket}/set", storage_options=options))
    keys = sorted(listed.keys.to_pylist())
    assert keys == sorted(n for n in names if not n.endswith(".txt"))
    assert sorted(listed.uris.to_pylist()) == sorted(f"s3://{bucket}/set/{k}" for k in keys)
    live = [f for f in sources.fsspec.core.url_to_fs(f"s3://{bucket}", **options)[0].dircache]
    assert not live  # nothing kept per key beyond the listing's own Arrow chunks

    globbed = sources.list_input(InputSpec(url=f"s3://{bucket}/set/d1/*.jpg", storage_options=options))
    assert sorted(globbed.keys.to_pylist()) == sorted(n.split("/", 1)[1] for n in names if n.startswith("d1/"))


def test_s3_listing_errors_name_the_input(s3):
    fs, bucket, options = s3
    with pytest.raises(InputError, match="cannot list s3://no-such-bucket-here"):
        build_plan(InputSpec(url="s3://no-such-bucket-here/x/*.jpg", storage_options=options), shard_size=2)


def test_local_listing_memory_does_not_grow_with_the_number_of_files(tmp_path, monkeypatch):
    """Python memory while listing is bounded by one chunk, not by the number of files: ten
    times the files (in one flat folder, the worst case for a per-folder listing) peaks about
    the same. The listing itself lives in Arrow buffers, outside Python's allocator."""
    import tracemalloc

    import mrcnn_batch.plan.sources as sources

    monkeypatch.setattr(sources, "_CHUNK", 500)

    def peak(n: int) -> int:
        root = tmp_path / f"flat{n}"
        root.mkdir()
        for i in range(n):
            (root / f"{i:06d}.jpg").touch()
        tracemalloc.start()
        listed = sources.list_input(InputSpec(url=str(root)))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(listed.uris) == n
        return top

    small, large = peak(2_000), peak(20_000)
    assert large < 2 * small, (small, large)


def test_shard_ranges_slice_the_plan_as_the_shard_column_says(tmp_path):
    import pyarrow as pa

    from mrcnn_batch.plan import shard_ranges, shard_rows
    from mrcnn_batch.schemas import PLAN

    shards = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    plan = pa.table([pa.array(shards, pa.int32()), pa.array(range(10), pa.int64()),
                     pa.array([f"u{i}" for i in range(10)])], schema=PLAN)
    ranges = shard_ranges(plan)
    assert ranges == {0: (0, 3), 1: (3, 2), 2: (5, 1), 3: (6, 4)}
    for s, (offset, length) in ranges.items():
        assert shard_rows(plan, s).column("shard").to_pylist() == [s] * length
        assert shard_rows(plan, s).column("image_id").to_pylist() == list(range(offset, offset + length))
    broken = pa.table([pa.array([0, 1, 0], pa.int32()), pa.array([1, 2, 3], pa.int64()),
                       pa.array(["a", "b", "c"])], schema=PLAN)
    with pytest.raises(ValueError, match="not contiguous"):
        shard_ranges(broken)
