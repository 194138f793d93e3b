"""Listing an input URL into (key, uri[, image_id]) columns, streamed into Arrow chunks.

Input kinds, told apart by the URL:

* a COCO annotations JSON (``*.json``): images from its ``images`` list, ids from the JSON
  (integers in the int64 range; ``1.9``, ``true`` or ``null`` are refused), files under
  ``image_root`` (default: the JSON's folder);
* a manifest: ``*.txt`` (one URI per line), ``*.csv`` or ``*.parquet`` with a ``uri`` column
  and an optional ``image_id`` column;
* tar shards (``*.tar``, or a glob of them): every regular image member, WebDataset style;
* otherwise a prefix (folder) or glob of image files on any fsspec filesystem. A URL is a
  glob only when it holds ``*``, ``?`` or ``[`` *and* names nothing that exists: a folder
  called ``photos[2024]`` is read as a folder.

Listed names are data. A URI built from a listing is ``PROTOCOL://PATH`` with the listed path
taken whole (``read/fetch.py`` never splits it at ``::``, ``?`` or ``#``), and a tar member's
URI is

    tar://MEMBER::TAR_URL

where MEMBER is the member's name percent-encoded as UTF-8 (``urllib.parse.quote`` with
``/`` kept; letters, digits and ``_.-~`` stay as they are, ``:`` becomes ``%3A``, ``%`` becomes
``%25``), so the first ``::`` always ends the member and TAR_URL is the rest, whatever the
name holds. ``tar://s0/000123.jpg::s3://bucket/shard-000.tar`` is the member
``s0/000123.jpg``; a member named ``a.png::/x.tar`` is ``tar://a.png%3A%3A/x.tar::...``. For
names of plain characters the URI is also fsspec's own chained URL for the member. A tar whose
headers cannot all be read is an error naming the tar, never a partial listing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Iterator

import fsspec
from fsspec.asyn import sync
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import glob_translate
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mrcnn_batch.config import InputSpec
from mrcnn_batch.read.tars import build_index, member_uri

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_CHUNK = 65_536


class InputError(ValueError):
    """The input URL cannot be listed into a plan."""


@dataclass(frozen=True)
class Listing:
    """A listed input: keys (for stable ids), URIs, and ids where the input carries them."""

    kind: str
    keys: pa.ChunkedArray
    uris: pa.ChunkedArray
    ids: pa.ChunkedArray | None
    sort: bool  # listings are sorted by key; manifests and COCO keep their own order
    groups: pa.ChunkedArray | None = None  # tar inputs: the tar of each row (int32 ordinal)


def input_kind(url: str) -> str:
    path = url.split("::")[0].split("?")[0].lower()
    if path.endswith(".json"):
        return "coco"
    if path.endswith((".txt", ".csv", ".parquet")):
        return "manifest"
    if path.endswith(".tar"):
        return "tar"
    return "files"


def list_input(spec: InputSpec) -> Listing:
    kind = input_kind(spec.url)
    fs, path = fsspec.core.url_to_fs(spec.url, **spec.storage_options)
    lister = {"coco": _list_coco, "manifest": _list_manifest, "tar": _list_tars, "files": _list_files}
    keys, uris, ids, *groups = lister[kind](fs, path, spec)
    if len(uris) == 0:
        raise InputError(f"no images found in {spec.url!r} (read as {kind} input)")
    return Listing(kind, keys, uris, ids, sort=kind in ("files", "tar"), groups=groups[0] if groups else None)


def _chunked(rows: Iterator[tuple], types: tuple = (pa.string(), pa.string())) -> list[pa.ChunkedArray]:
    """Columns from a stream of rows, holding at most one chunk of Python objects."""
    columns: list[list[pa.Array]] = [[] for _ in types]
    bufs: list[list] = [[] for _ in types]

    def flush() -> None:
        for col, buf, t in zip(columns, bufs, types):
            col.append(_array(buf, t))
            buf.clear()

    for row in rows:
        for buf, value in zip(bufs, row):
            buf.append(value)
        if len(bufs[0]) >= _CHUNK:
            flush()
    flush()
    return [pa.chunked_array(col, t) for col, t in zip(columns, types)]


def _array(values: list, t: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, t)
    except (UnicodeEncodeError, pa.ArrowInvalid):
        bad = next((v for v in values if isinstance(v, str) and not _is_utf8(v)), None)
        if bad is None:
            raise
        raise InputError(f"the name {bad!r} is not valid UTF-8: rename it to be read") from None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _is_glob(fs, path: str) -> bool:
    """A glob only where a glob character is not simply part of an existing name."""
    return _has_magic(path) and not fs.exists(path)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _list_files(fs, path: str, spec: InputSpec):
    if _is_glob(fs, path):
        root = _glob_root(path)
        match = re.compile(glob_translate(path)).match
        found = (p for p in _walk_files(fs, root) if _is_image(p) and match(p))
        pairs = ((posixpath.relpath(p, root), fs.unstrip_protocol(p)) for p in found)
    else:
        if not fs.exists(path):
            raise InputError(f"input {spec.url!r} does not exist")
        if fs.isfile(path):
            root = posixpath.dirname(path)
            pairs = iter([(posixpath.basename(path), fs.unstrip_protocol(path))])
        else:
            root = path.rstrip("/") or "/"
            pairs = (
                (posixpath.relpath(p, root), fs.unstrip_protocol(p))
                for p in _walk_files(fs, root)
                if _is_image(p)
            )
    keys, uris = _chunked(pairs)
    return keys, uris, None


def _walk_files(fs, root: str) -> Iterator[str]:
    """Every file under ``root``, streamed: S3 page by page, a local disk entry by entry.

    fsspec's ``walk`` lists a whole directory level (and s3fs caches every listing), so a
    flat prefix of a million keys would be a million info dicts at once; it remains the
    fallback for other filesystems."""
    if isinstance(fs, LocalFileSystem):
        yield from _scan_local(root)
    elif _is_s3(fs):
        yield from _scan_s3(fs, root)
    else:
        for dirpath, _dirs, files in fs.walk(root, detail=False):
            for name in files:
                yield posixpath.join(dirpath, name)


def _scan_local(root: str) -> Iterator[str]:
    stack, seen = [root], set()
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                for entry in it:
                    try:
                        if entry.is_dir():
                            stack.append(entry.path)
                        elif entry.is_file():
                            yield entry.path
                    except OSError:  # a dangling symlink or a vanished entry: not an image
                        continue
        except OSError as e:
            raise InputError(f"cannot list {d!r}: {e}") from None


def _is_s3(fs) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) and hasattr(fs, "_iterdir")


def _scan_s3(fs, root: str) -> Iterator[str]:
    """Every key under ``root`` from list-objects pages, no directory cache, one chunk at a time."""
    bucket, key, _ = fs.split_path(root)
    prefix = key.rstrip("/") + "/" if key else ""
    pages = fs._iterdir(bucket, delimiter="", prefix=prefix)

    async def take() -> list[str]:
        out: list[str] = []
        try:
            while len(out) < _CHUNK:
                out.append((await pages.__anext__())["name"])
        except StopAsyncIteration:
            pass
        return out

    while True:
        try:
            names = sync(fs.loop, take)
        except Exception as e:  # noqa: BLE001 - storage errors, named with the prefix
            raise InputError(f"cannot list s3://{bucket}/{prefix}: {type(e).__name__}: {e}") from None
        yield from names
        if len(names) < _CHUNK:
            return


def _glob_root(pattern: str) -> str:
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if _has_magic(part):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def _list_manifest(fs, path: str, spec: InputSpec):
    if not fs.exists(path):
        raise InputError(f"manifest {spec.url!r} does not exist")
    if path.lower().endswith(".parquet"):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    elif path.lower().endswith(".csv"):
        with fs.open(path, "rb") as f:
            table = pacsv.read_csv(f)
    else:
        with fs.open(path, "rb") as f:
            lines = (ln.strip() for ln in io.TextIOWrapper(f, encoding="utf-8"))
            _, uris = _chunked((ln, ln) for ln in lines if ln and not ln.startswith("#"))
        table = pa.table({"uri": uris})
    if "uri" not in table.column_names:
        raise InputError(
            f"manifest {spec.url!r} has no 'uri' column (found: {', '.join(table.column_names)})"
        )
    uris = table.column("uri").cast(pa.string())
    if uris.null_count:
        raise InputError(f"manifest {spec.url!r} has {uris.null_count} empty 'uri' values")
    ids = None
    if "image_id" in table.column_names:
        ids = table.column("image_id")
        if ids.null_count:
            raise InputError(f"manifest {spec.url!r} has {ids.null_count} empty 'image_id' values")
        try:
            ids = ids.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise InputError(f"manifest {spec.url!r}: 'image_id' must be integers ({e})") from None
    return uris, uris, ids


def _list_coco(fs, path: str, spec: InputSpec):
    if not fs.exists(path):
        raise InputError(f"COCO annotations {spec.url!r} do not exist")
    with fs.open(path, "rb") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"COCO annotations {spec.url!r} are not valid JSON: {e}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise InputError(f"COCO annotations {spec.url!r} have no 'images' list")
    if spec.image_root:
        rfs, root = fsspec.core.url_to_fs(spec.image_root, **spec.storage_options)
    else:
        rfs, root = fs, posixpath.dirname(path)
    root = root.rstrip("/")
    keys, uris, ids = [], [], []
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise InputError(
                f"COCO annotations {spec.url!r}: images[{i}] lacks 'id' or 'file_name'"
            )
        name = im["file_name"]
        if not isinstance(name, str) or not name:
            raise InputError(
                f"COCO annotations {spec.url!r}: images[{i}] has file_name {_json(name)};"
                " expected a non-empty string"
            )
        keys.append(name)
        uris.append(rfs.unstrip_protocol(posixpath.join(root, name)))
        ids.append(_coco_id(im["id"], f"COCO annotations {spec.url!r}: images[{i}]"))
    order = sorted(range(len(ids)), key=ids.__getitem__)
    take = lambda xs, t: pa.chunked_array([pa.array([xs[j] for j in order], t)])  # noqa: E731
    return take(keys, pa.string()), take(uris, pa.string()), take(ids, pa.int64())


def _coco_id(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where} has id {_json(value)}; an image id must be an integer")
    if not -(2**63) <= value < 2**63:
        raise InputError(f"{where} has id {value}, outside the int64 range of image ids")
    return value


def _json(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _list_tars(fs, path: str, spec: InputSpec):
    tars = sorted(fs.glob(path)) if _is_glob(fs, path) else [path]
    if not tars or not all(fs.exists(t) for t in tars):
        raise InputError(f"tar shard(s) {spec.url!r} do not exist")

    def rows():
        for ordinal, t in enumerate(tars):
            url = fs.unstrip_protocol(t)
            try:
                with fs.open(t, "rb") as f:
                    index = build_index(f, url=url)
            except OSError as e:
                raise InputError(f"cannot read tar shard {url!r}: {type(e).__name__}: {e}") from None
            if index.error is not None:
                raise InputError(f"{index.error}; repair it or leave it out of the input")
            for name in index.members:
                if _is_image(name):
                    yield f"{posixpath.basename(t)}/{name}", member_uri(name, url), ordinal

    keys, uris, groups = _chunked(rows(), (pa.string(), pa.string(), pa.int32()))
    return keys, uris, None, groups
