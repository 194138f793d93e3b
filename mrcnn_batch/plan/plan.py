"""The shard plan: every image of the input, with a stable id, in a deterministic shard.

The plan is a Parquet table (``schemas.PLAN``: shard, image_id, uri) written into the run
directory before any work starts; a resumed run reads it back rather than listing again.
Listings are sorted by key; manifests and COCO inputs keep their own order (COCO: by id).
Shards are contiguous runs of ``shard_size`` rows. Tar inputs are sorted by tar, then by key,
and each tar starts a new shard, so that a shard never spans tars (a worker reads one tar's
index per shard); otherwise shard ``s`` holds the rows ``[s * shard_size, (s + 1) * shard_size)``.
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
    groups = None if listing.groups is None else listing.groups.combine_chunks()
    if listing.sort:
        if groups is None:
            order = pc.sort_indices(keys)
        else:
            by = pa.table({"group": groups, "key": keys})
            order = pc.sort_indices(by, sort_keys=[("group", "ascending"), ("key", "ascending")])
            groups = groups.take(order)
        keys, uris = keys.take(order), uris.take(order)
    ids = stable_ids(keys) if listing.ids is None else listing.ids.combine_chunks()
    _check_unique(ids, uris, spec.url)
    shards = _shards(len(uris), shard_size, None if groups is None else groups.to_numpy())
    return pa.table([pa.array(shards, pa.int32()), ids, uris], schema=PLAN)


def _shards(n: int, shard_size: int, groups: np.ndarray | None) -> np.ndarray:
    """Shard numbers of ``n`` rows: runs of ``shard_size``, restarting at each group (sorted)."""
    if groups is None or n == 0:
        return np.arange(n, dtype=np.int64) // shard_size
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])  # first row of each group
    sizes = np.diff(np.r_[starts, n])
    first_shard = np.r_[0, np.cumsum(-(-sizes // shard_size))[:-1]]  # ceil division
    group_of_row = np.repeat(np.arange(len(starts)), sizes)
    return first_shard[group_of_row] + (np.arange(n) - starts[group_of_row]) // shard_size


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


def shard_ranges(plan: pa.Table) -> dict[int, tuple[int, int]]:
    """Each shard's rows as (offset, length): a shard is a contiguous run of the plan, so a
    worker is sent three numbers and slices the plan itself, zero-copy."""
    shards = plan.column("shard").to_numpy()
    if len(shards) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])
    lengths = np.diff(np.r_[starts, len(shards)])
    ranges = {int(shards[a]): (int(a), int(n)) for a, n in zip(starts, lengths)}
    if len(ranges) != len(starts):
        raise ValueError("the plan's shards are not contiguous runs of rows")
    return ranges


def shard_rows(plan: pa.Table, shard: int) -> pa.Table:
    """The plan rows of one shard (a zero-copy slice)."""
    offset, length = shard_ranges(plan).get(shard, (0, 0))
    return plan.slice(offset, length)


def shard_ids(plan: pa.Table) -> list[int]:
    return pc.unique(plan.column("shard")).to_pylist()
