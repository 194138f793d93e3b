"""Fetching the bytes of a batch of image URIs, concurrently, through fsspec.

Any fsspec URL works, chained ``tar://MEMBER::TAR_URL`` members included (a tar shard is
opened once per batch). Failures are returned, never raised: the caller turns them into
``read_error`` rows.
"""

from __future__ import annotations

import logging
import tarfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.utils import get_protocol

log = logging.getLogger(__name__)


def fetch_all(
    uris: list[str], *, storage_options: dict[str, Any], threads: int = 16
) -> list[bytes | BaseException]:
    """The bytes of every URI, or the exception that reading it raised, in input order."""
    out: list[bytes | BaseException | None] = [None] * len(uris)
    plain: dict[str, list[int]] = defaultdict(list)
    tars: dict[str, list[int]] = defaultdict(list)
    for i, uri in enumerate(uris):
        if uri.startswith("tar://") and "::" in uri:
            tars[uri.split("::", 1)[1]].append(i)
        else:
            plain[get_protocol(uri)].append(i)
    for idx in plain.values():
        fs, _ = fsspec.core.url_to_fs(uris[idx[0]], **storage_options)
        paths = [fs._strip_protocol(uris[i]) for i in idx]
        for i, res in zip(idx, _cat(fs, paths, threads)):
            out[i] = res
    for tar_url, idx in tars.items():
        members = {uris[i].split("::", 1)[0][len("tar://") :]: i for i in idx}
        for i, res in _read_tar_members(tar_url, members, storage_options).items():
            out[i] = res
    return out  # type: ignore[return-value]


def _cat(fs, paths: list[str], threads: int) -> list[bytes | BaseException]:
    if isinstance(fs, AsyncFileSystem):
        # s3fs, gcsfs, http...: one concurrent batch on fsspec's event loop.
        got = fs.cat(paths, on_error="return")
        if len(paths) == 1 and not isinstance(got, dict):
            got = {paths[0]: got}
        return [_normalise(got.get(p, FileNotFoundError(p))) for p in paths]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(lambda p: _safe(fs.cat_file, p), paths))


def _normalise(res: Any) -> bytes | BaseException:
    return res if isinstance(res, (bytes, BaseException)) else bytes(res)


def _safe(fn, *args) -> bytes | BaseException:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - every failure becomes the image's status
        return e


def _read_tar_members(
    tar_url: str, members: dict[str, int], storage_options: dict[str, Any]
) -> dict[int, bytes | BaseException]:
    out: dict[int, bytes | BaseException] = {}
    try:
        with fsspec.open(tar_url, "rb", **storage_options) as f:
            with tarfile.open(fileobj=f, mode="r|") as tf:
                for m in tf:
                    if m.name in members and m.isfile():
                        reader = tf.extractfile(m)
                        out[members[m.name]] = reader.read() if reader else b""
    except Exception as e:  # noqa: BLE001 - a broken shard fails only its unread members
        log.warning("reading tar shard %s failed: %s", tar_url, e)
        for i in members.values():
            out.setdefault(i, e)
    for name, i in members.items():
        out.setdefault(i, FileNotFoundError(f"no member {name!r} in tar shard {tar_url}"))
    return out
