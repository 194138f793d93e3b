"""Tar shards: member URIs, one header index per tar, and reading members at their offsets.

The member URI format is stated once, with the other input kinds, at the top of
``plan/sources.py``: ``tar://MEMBER::TAR_URL`` with MEMBER percent-encoded, so that the first
``::`` always ends the member name and a member name is never read as a URL.

A tar is indexed by one walk over its headers (tarfile, seeking past the data), which records
every regular member's data offset and size. Members are then read by seeking straight to
their data, in offset order, so a shard read in batches of any size reads each header once
and each member's bytes once, and nothing else. Each process keeps the index of its last few tars (bounded);
concurrent readers of one tar wait for a single walk. Inputs are assumed not to change while a
run reads them.

A tar whose headers cannot all be read (random bytes, a corrupt header after the first
member, data cut short) is a :class:`TarCorrupt` that names the tar and the byte offset; the
index keeps the members before the damage, so those stay readable. Never a silent shortfall.
"""

from __future__ import annotations

import json
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

SCHEME = "tar://"
SEPARATOR = "::"
INDEX_CACHE_TARS = 32  # tar indexes kept per process (a few MB even for 100k-member tars)


class TarCorrupt(ValueError):
    """A tar's headers cannot be read to their end."""


def member_uri(member: str, tar_url: str) -> str:
    """The plan's URI of ``member`` of the tar at ``tar_url`` (see ``plan/sources.py``)."""
    return SCHEME + quote(member, safe="/", errors="surrogateescape") + SEPARATOR + tar_url


def is_member_uri(uri: str) -> bool:
    return uri.startswith(SCHEME) and SEPARATOR in uri


def split_member_uri(uri: str) -> tuple[str, str]:
    """(member name, tar URL): the first ``::`` ends the encoded member, the rest is the URL."""
    encoded, _, tar_url = uri[len(SCHEME) :].partition(SEPARATOR)
    if not encoded or not tar_url:
        raise ValueError(f"{uri!r} is not a tar member URI (expected tar://MEMBER::TAR_URL)")
    return unquote(encoded, errors="surrogateescape"), tar_url


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data, in the tar
    size: int
    sparse: bool  # GNU sparse members are stored in pieces: not readable as one range


@dataclass(frozen=True)
class TarIndex:
    """The regular members of a tar, in tar order; ``error`` where the walk stopped early."""

    url: str
    members: dict[str, Member] = field(default_factory=dict)
    error: TarCorrupt | None = None


_DAMAGE = (tarfile.TarError, EOFError, ValueError)  # not OSError: the storage's own errors


def build_index(fileobj, *, url: str) -> TarIndex:
    """Walk every header of the tar open in ``fileobj`` (seekable), reading no member data.

    OSErrors of the storage propagate; damage to the tar is recorded as ``error``."""
    members: dict[str, Member] = {}
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r:")
    except _DAMAGE as e:
        return TarIndex(url, members, TarCorrupt(f"tar shard {url!r} is not a readable tar: {e}"))
    try:
        while (info := tf.next()) is not None:
            tf.members.clear()  # tarfile keeps every TarInfo; the index keeps three numbers
            if info.isfile():
                members[info.name] = Member(info.name, info.offset_data, info.size, info.sparse is not None)
    except _DAMAGE as e:
        return TarIndex(url, members, _damaged(url, tf.offset, len(members), str(e)))
    # tarfile ends quietly at a header it cannot parse after the first: only zeros (the
    # end-of-archive blocks) or the end of the file may follow the last member.
    fileobj.seek(tf.offset)
    block = fileobj.read(tarfile.BLOCKSIZE)
    if block.strip(b"\0"):
        return TarIndex(url, members, _damaged(url, tf.offset, len(members), "invalid header"))
    return TarIndex(url, members)


def _damaged(url: str, offset: int, n: int, why: str) -> TarCorrupt:
    return TarCorrupt(f"tar shard {url!r} is corrupt at byte {offset}, after {n} member(s): {why}")


def read_members(fs, path: str, members: list[Member]) -> list[bytes | BaseException]:
    """The data of ``members`` of the tar at ``path``: one range read per member, in offset
    order (concurrent ranged GETs on object stores), no header read again."""
    out: list[bytes | BaseException] = [b""] * len(members)
    todo = sorted((j for j, m in enumerate(members) if m.size > 0), key=lambda j: members[j].offset)
    if not todo:
        return out
    starts = [members[j].offset for j in todo]
    ends = [members[j].offset + members[j].size for j in todo]
    for j, data in zip(todo, fs.cat_ranges([path] * len(todo), starts, ends, on_error="return")):
        m = members[j]
        if isinstance(data, BaseException) or len(data) == m.size:
            out[j] = data if isinstance(data, BaseException) else bytes(data)
        else:
            out[j] = EOFError(f"the tar ends {m.size - len(data)} bytes into member {m.name!r}")
    return out


class IndexCache:
    """The last ``capacity`` tar indexes of this process, each built once even under threads."""

    def __init__(self, capacity: int = INDEX_CACHE_TARS):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, TarIndex] = OrderedDict()
        self._building: dict[tuple, threading.Lock] = {}

    def get(self, fs, path: str, *, url: str) -> TarIndex:
        # fsspec makes one filesystem instance per thread: key by its class and options.
        key = (type(fs), json.dumps(fs.storage_options, sort_keys=True, default=repr), path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            try:
                with fs.open(path, "rb") as f:
                    index = build_index(f, url=url)
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:
                self._items[key] = index
                self._building.pop(key, None)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return index

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


INDEXES = IndexCache()
