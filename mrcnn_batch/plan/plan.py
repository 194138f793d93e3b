"""The shard plan: every image of the input, with a stable id, in a deterministic shard.

The plan is a Parquet table (``schemas.PLAN``: shard, image_id, uri) written into the run
directory before any work starts; a resumed run reads it back rather than listing again.
Listings are sorted by key; manifests and COCO inputs keep their own order (COCO: by id).
Shard ``s`` holds the rows ``[s * shard_size, (s + 1) * shard_size)``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mrcnn_batch.config import InputSpec
from mrcnn_batch.plan.ids import stable_ids
from mrcnn_batch.plan.sources import InputError, list_input
from mrcnn_batch.schemas import PLAN


def build_plan(spec: InputSpec, *, shard_size: int) -> pa.Table:
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    listing = list_input(spec)
    keys, uris = listing.keys.combine_chunks(), listing.uris.combine_chunks()
    if listing.sort:
        order = pc.sort_indices(keys)
        keys, uris = keys.take(order), uris.take(order)
    ids = stable_ids(keys) if listing.ids is None else listing.ids.combine_chunks()
    _check_unique(ids, uris, spec.url)
    n = len(uris)
    shards = pa.array(np.arange(n, dtype=np.int64) // shard_size, pa.int32())
    return pa.table([shards, ids, uris], schema=PLAN)


def _check_unique(ids: pa.Array, uris: pa.Array, url: str) -> None:
    arr = ids.to_numpy(zero_copy_only=False)
    if len(np.unique(arr)) == len(arr):
        return
    order = np.argsort(arr, kind="stable")
    dup = order[1:][arr[order][1:] == arr[order][:-1]][0]
    first = order[np.searchsorted(arr[order], arr[dup])]
    raise InputError(
        f"input {url!r} gives image id {int(arr[dup])} to two images:"
        f" {uris[int(first)].as_py()!r} and {uris[int(dup)].as_py()!r}"
    )


def shard_rows(plan: pa.Table, shard: int) -> pa.Table:
    return plan.filter(pc.equal(plan.column("shard"), shard))


def shard_ids(plan: pa.Table) -> list[int]:
    return pc.unique(plan.column("shard")).to_pylist()
