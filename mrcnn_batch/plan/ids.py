"""The image-id rule (written once, here).

An image keeps the id its input gives it: the COCO id of an annotations JSON, or the
``image_id`` column of a manifest. Otherwise its id is derived from its *key*, the image's path
relative to the input root (for a prefix or glob), its member name within its tar shard
prefixed with the shard's file name, or its full URI (for a manifest without ids): the first
63 bits of BLAKE2b-64 of the UTF-8 key, as a non-negative int64. So ids survive re-listing,
reordering, and moving the whole collection to another bucket.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa


def stable_id(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def stable_ids(keys: pa.Array | list[str]) -> pa.Array:
    out = np.fromiter((stable_id(k) for k in _iter_str(keys)), dtype=np.int64, count=len(keys))
    return pa.array(out, type=pa.int64())


def _iter_str(keys):
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        for chunk in keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]:
            yield from chunk.to_pylist()
    else:
        yield from keys
