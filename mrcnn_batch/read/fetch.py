"""Fetching the bytes of a batch of image URIs, concurrently, through fsspec.

A URI from the plan is data: a name is never re-parsed into URL parts. How a URI is read:

* ``tar://MEMBER::TAR_URL`` (format: ``plan/sources.py``): the percent-decoded MEMBER is looked
  up in the tar's header index (``read/tars.py``, built once per tar per process) and read at
  its offset; TAR_URL is resolved by the rules below.
* ``PROTOCOL://PATH`` of a storage filesystem (file, s3, gcs, memory, http, ...): PATH is taken
  whole, so a ``::``, ``?``, ``#`` or ``[`` in a listed name is part of the name. S3 objects are
  read by bucket and key (s3fs would take ``?versionId=`` in a key for a version).
* a chained fsspec URL written in a manifest (``simplecache::s3://b/x.jpg``,
  ``zip://x.jpg::s3://b/a.zip``): fsspec's own parsing, as the user meant it.
* a bare path: a local file.

Sizes are checked before bytes are read (the object's size, or a tar member's size from its
header): a file over ``max_bytes`` is a :class:`TooLarge`, and its bytes are never read.
Failures are returned, never raised: the caller turns :class:`TooLarge` into ``too_large``
rows and any other exception into ``read_error`` rows.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem, sync
from fsspec.implementations.chained import ChainedFileSystem

from mrcnn_batch.config import DEFAULT_MAX_BYTES
from mrcnn_batch.read.tars import INDEXES, Member, is_member_uri, read_members, split_member_uri

Result = bytes | BaseException

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_CHAIN_HEAD = re.compile(r"([a-z][a-z0-9+.-]*)::")


class TooLarge(Exception):
    """A file over the byte limit, left unread."""

    def __init__(self, what: str, size: int, limit: int):
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes (--max-bytes)")
        self.size = size
        self.limit = limit


def fetch_all(
    uris: list[str],
    *,
    storage_options: dict[str, Any],
    threads: int = 16,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Result]:
    """The bytes of every URI, or the exception that reading it raised, in input order."""
    out: list[Result | None] = [None] * len(uris)
    plain: dict[Any, list[tuple[int, str]]] = {}
    tars: dict[tuple[Any, str], tuple[str, list[tuple[int, str]]]] = {}
    for i, uri in enumerate(uris):
        try:
            if is_member_uri(uri):
                member, tar_url = split_member_uri(uri)
                fs, path = resolve(tar_url, storage_options)
                tars.setdefault((fs, path), (tar_url, []))[1].append((i, member))
            else:
                fs, path = resolve(uri, storage_options)
                plain.setdefault(fs, []).append((i, path))
        except Exception as e:  # noqa: BLE001 - an unknown protocol fails only this image
            out[i] = e
    for fs, items in plain.items():
        got = _read_objects(fs, [p for _, p in items], max_bytes=max_bytes, threads=threads)
        for (i, _), res in zip(items, got):
            out[i] = res
    for (fs, path), (tar_url, items) in tars.items():
        got = _read_tar_members(fs, path, tar_url, [m for _, m in items], max_bytes=max_bytes)
        for (i, _), res in zip(items, got):
            out[i] = res
    return out  # type: ignore[return-value]


def resolve(uri: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """The filesystem and path of ``uri``; a single ``PROTOCOL://PATH`` is never split further."""
    scheme = _SCHEME.match(uri)
    if scheme and not _is_wrapper(scheme.group(1)):
        fs = fsspec.filesystem(scheme.group(1), **storage_options)
        return fs, fs._strip_protocol(uri)
    head = _CHAIN_HEAD.match(uri)
    if scheme or (head and head.group(1) in fsspec.available_protocols()):
        return fsspec.core.url_to_fs(uri, **storage_options)
    fs = fsspec.filesystem("file", **storage_options)
    return fs, fs._strip_protocol(uri)


@functools.lru_cache(maxsize=None)
def _is_wrapper(protocol: str) -> bool:
    """Whether ``protocol`` reads from another URL (archives, caches): then ``::`` chains."""
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError):
        return False
    params = inspect.signature(cls.__init__).parameters
    return issubclass(cls, ChainedFileSystem) or "fo" in params or "target_protocol" in params


# -- whole objects ------------------------------------------------------------------------
def _read_objects(fs, paths: list[str], *, max_bytes: int, threads: int) -> list[Result]:
    if _is_s3(fs):
        return _gather(fs, [_s3_get(fs, p, max_bytes) for p in paths], threads)
    if isinstance(fs, AsyncFileSystem):
        return _gather(fs, [_async_get(fs, p, max_bytes) for p in paths], threads)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(lambda p: _safe(_sync_get, fs, p, max_bytes), paths))


def _sync_get(fs, path: str, max_bytes: int) -> bytes:
    size = fs.size(path)
    _check_size(fs, path, size, max_bytes)
    if size is not None:
        return fs.cat_file(path)
    with fs.open(path, "rb") as f:  # size unknown: read no more than the limit allows
        data = f.read(max_bytes + 1)
    _check_size(fs, path, len(data), max_bytes)
    return data


async def _async_get(fs, path: str, max_bytes: int) -> bytes:
    size = (await fs._info(path)).get("size")
    _check_size(fs, path, size, max_bytes)
    data = await fs._cat_file(path)
    _check_size(fs, path, len(data), max_bytes)
    return data


async def _s3_get(fs, path: str, max_bytes: int) -> bytes:
    """One GET by bucket and key: the size comes with the response, before the body is read.
    Retried as s3fs retries its own reads (throttling, dropped connections)."""
    from s3fs.core import _error_wrapper

    bucket, key = path.split("/", 1) if "/" in path else (path, "")

    async def get() -> bytes:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        body = resp["Body"]
        try:
            _check_size(fs, path, resp.get("ContentLength"), max_bytes)
            return await body.read()
        finally:
            body.close()

    return await _error_wrapper(get, retries=fs.retries)


def _gather(fs, coros: list, limit: int) -> list[Result]:
    async def run() -> list[Result]:
        gate = asyncio.Semaphore(max(1, limit))

        async def one(coro) -> Result:
            async with gate:
                try:
                    return bytes(await coro)
                except Exception as e:  # noqa: BLE001 - every failure becomes the image's status
                    return e

        return await asyncio.gather(*(one(c) for c in coros))

    return sync(fs.loop, run)


def _is_s3(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "s3" in protocols and hasattr(fs, "_call_s3")


def _check_size(fs, path: str, size: int | None, max_bytes: int) -> None:
    if size is not None and size > max_bytes:
        raise TooLarge(fs.unstrip_protocol(path), size, max_bytes)


def _safe(fn, *args) -> Result:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - every failure becomes the image's status
        return e


# -- tar members --------------------------------------------------------------------------
def _read_tar_members(fs, path: str, tar_url: str, names: list[str], *, max_bytes: int) -> list[Result]:
    try:
        index = INDEXES.get(fs, path, url=tar_url)
    except Exception as e:  # noqa: BLE001 - an unreadable tar fails its members only
        return [e] * len(names)
    out: list[Result | None] = [None] * len(names)
    wanted: list[tuple[int, Member]] = []
    for i, name in enumerate(names):
        m = index.members.get(name)
        if m is None:
            out[i] = index.error or FileNotFoundError(f"no member {name!r} in tar shard {tar_url!r}")
        elif m.sparse:
            out[i] = OSError(f"member {name!r} of tar shard {tar_url!r} is a GNU sparse file: not supported")
        elif m.size > max_bytes:
            out[i] = TooLarge(f"member {name!r} of tar shard {tar_url!r}", m.size, max_bytes)
        else:
            wanted.append((i, m))
    for (i, _), res in zip(wanted, read_members(fs, path, [m for _, m in wanted])):
        out[i] = res
    return out  # type: ignore[return-value]
