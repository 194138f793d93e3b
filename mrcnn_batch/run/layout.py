"""The run directory: one output URL holding a run's plan, tables, commit markers and metrics.

This module is the only one that knows the run directory's names and writes its JSON files.

Commit protocol (written once, here). For each shard ``N`` a worker writes, under
deterministic names, ``images/shard-N.parquet``, ``instances/shard-N.parquet`` and
``keypoints/shard-N.parquet`` (``N`` zero-padded to six digits), and only then the marker
``_commits/shard-N.json`` (a :class:`CommitRecord`: run id, row counts and file sizes). A shard
exists only once it has a *valid* marker: one that parses, names this shard and the run id of
``_run.json``, and whose file sizes are those of the shard's files. Anything else (a torn write,
another run's marker, a table file replaced after the commit) is not a commit: the shard runs
again and a warning says why. Readers list markers, never data files. A retried shard overwrites
its own files, so there are no duplicates and no orphans. When every planned shard is committed
the driver writes ``_SUCCESS``.

Writes are whole or nothing: JSON and Parquet go to a temporary name beside the target and are
renamed over it on file systems that rename (local disks); on object stores each file is one
PUT. An I/O error (a full disk, a refused permission, throttling) is raised as
:class:`StorageError` naming the file, with the system's message verbatim.

``--overwrite`` removes only the run's own names (:func:`own_entries`), and refuses an output
that holds anything else.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mrcnn_batch.errors import RunDamaged, StorageError
from mrcnn_batch.memory import give_back_freed_memory
from mrcnn_batch.schemas import PLAN, TABLES

if TYPE_CHECKING:  # imported where used: pyarrow.dataset imports pandas where it is installed (~0.2 s)
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)

RUN_JSON = "_run.json"
PLAN_DIR = "_plan"
PLAN_FILE = f"{PLAN_DIR}/plan.parquet"
COMMITS = "_commits"
COMMIT_INDEX = f"{COMMITS}/_index.json"
SUCCESS = "_SUCCESS"
FAILED_JSON = "_failed.json"
LEASE = "_driver.json"
EVAL_DIR = "eval"
TABLE_DIRS = tuple(TABLES)  # images, instances, keypoints

_SHARD_FILE = re.compile(r"shard-\d{6}\.(parquet|json)")
_TEMP = re.compile(r"\..+\.tmp-[0-9a-f]{12}")
_EVAL_FILE = re.compile(r"metrics\.(json|parquet)|pr_[a-z_]+\.png")
# What a run writes at its top level, and the files it writes inside each of its folders.
_OWN_FILES = {RUN_JSON, SUCCESS, FAILED_JSON, LEASE}
_OWN_DIRS = {
    PLAN_DIR: re.compile(r"plan\.parquet"),
    COMMITS: re.compile(r"shard-\d{6}\.json|_index\.json"),
    EVAL_DIR: _EVAL_FILE,
    **{t: _SHARD_FILE for t in TABLE_DIRS},
}


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def table_path(table: str, shard: int) -> str:
    return f"{table}/{shard_name(shard)}.parquet"


def commit_path(shard: int) -> str:
    return f"{COMMITS}/{shard_name(shard)}.json"


@dataclass(frozen=True)
class CommitRecord:
    """A shard's commit marker (``_commits/shard-N.json``)."""

    shard: int
    run_id: str
    rows: dict[str, int]  # table -> rows
    bytes: dict[str, int]  # table -> file size
    status_counts: dict[str, int]  # image status -> images
    worker: str = ""
    committed_at: float = 0.0
    seconds: float = 0.0  # the shard's processing time in its worker
    model_seconds: float = 0.0  # of which in the model's forward passes

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: bytes) -> "CommitRecord":
        """Parse a marker; ``ValueError`` saying what is wrong with it."""
        d = _json_object(data)
        try:
            rec = cls(
                shard=_int(d["shard"]), run_id=str(d["run_id"]),
                rows={str(k): _int(v) for k, v in d["rows"].items()},
                bytes={str(k): _int(v) for k, v in d["bytes"].items()},
                status_counts={str(k): _int(v) for k, v in d["status_counts"].items()},
                worker=str(d.get("worker", "")), committed_at=float(d.get("committed_at", 0.0)),
                seconds=float(d.get("seconds", 0.0)), model_seconds=float(d.get("model_seconds", 0.0)),
            )
        except KeyError as e:
            raise ValueError(f"it lacks {e.args[0]!r}") from None
        except (AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"a field has the wrong type ({e})") from None
        missing = [t for t in TABLE_DIRS if t not in rec.rows or t not in rec.bytes]
        if missing:
            raise ValueError(f"it has no rows or size for {', '.join(missing)}")
        return rec


@dataclass(frozen=True)
class RunMeta:
    """``_run.json``: what a run is. ``identity`` decides resume or refusal; ``model`` is the
    registry entry's metadata (categories, keypoint names, skeleton, OKS sigmas)."""

    run_id: str
    created_at: float = 0.0
    schema_version: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the public RunConfig (no storage options)
    model: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)  # source, sha256
    plan: dict[str, Any] = field(default_factory=dict)  # images, shards
    versions: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "RunMeta":
        """Parse ``_run.json``; ``ValueError`` saying what is wrong with it."""
        d = _json_object(data)
        if not isinstance(d.get("run_id"), str):
            raise ValueError("it holds no run id")
        dicts = ("identity", "config", "model", "weights", "plan", "versions")
        wrong = [k for k in dicts if not isinstance(d.get(k) or {}, dict)]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} must be objects")
        try:
            return cls(run_id=d["run_id"], created_at=float(d.get("created_at") or 0.0),
                       schema_version=str(d.get("schema_version") or ""),
                       **{k: dict(d.get(k) or {}) for k in dicts})
        except (TypeError, ValueError) as e:
            raise ValueError(f"a field has the wrong type ({e})") from None

    @property
    def planned_shards(self) -> int | None:
        n = self.plan.get("shards")
        return int(n) if isinstance(n, int) else None


def _json_object(data: bytes) -> dict[str, Any]:
    """``data`` parsed as a JSON object; ``ValueError`` saying why it is not one."""
    try:
        d = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"it does not parse ({len(data)} bytes: {e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"it holds a {type(d).__name__}, not an object")
    return d


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{v!r} is not an integer")
    return v


@dataclass
class RunDir:
    """A run directory on any fsspec filesystem (``is_local``: a local disk, where writes rename)."""

    url: str
    storage_options: dict[str, Any]
    rejected: dict[int, str] = field(default_factory=dict, init=False)  # shard -> why its marker is no commit
    _stamps: dict[int, str] = field(default_factory=dict, init=False, repr=False)  # markers as last listed

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def where(self, rel: str) -> str:
        """``rel`` as the user would write it, for messages."""
        return posixpath.join(self.url.rstrip("/"), rel)

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self.path(rel))  # other processes write here
        return self.fs.exists(self.path(rel))

    # -- reading and writing whole files ------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        """The whole file, in one GET on object stores (an object replaced meanwhile is read whole,
        old or new: opening it would check its ETag between requests and fail instead)."""
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StorageError(f"could not read {self.where(rel)}: {_describe(e)}") from e

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_bytes(self, rel: str, data: bytes) -> int:
        """Write ``data`` to ``rel`` whole or not at all; its size."""
        path = self.path(rel)
        try:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            if self.is_local:
                folder, name = os.path.split(path)
                tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
                    raise
            else:
                self.fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all
        except OSError as e:
            raise StorageError(f"could not write {self.where(rel)}: {_describe(e)}") from e
        return len(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm(self.path(rel))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"could not remove {self.where(rel)}: {_describe(e)}") from e

    # -- the run's records ---------------------------------------------------------------
    def run_meta(self) -> RunMeta:
        if not self.exists(RUN_JSON):
            raise FileNotFoundError(f"{self.url} is not a run directory: no {RUN_JSON}")
        data = self.read_bytes(RUN_JSON)
        try:
            return RunMeta.from_json(data)
        except ValueError as e:
            raise RunDamaged(
                f"{self.where(RUN_JSON)} is damaged ({len(data)} bytes; {e}): the run's settings are lost. "
                "Pass --overwrite to start the run again (only the run's own files are removed), or restore "
                "the file from a copy"
            ) from None

    def write_run_meta(self, meta: RunMeta) -> None:
        self.write_bytes(RUN_JSON, meta.to_json())

    def failures(self) -> dict[int, str]:
        """The shards the last ``infer`` gave up on (``_failed.json``), with the reason; none when
        unrecorded or unreadable: the file is advice, the markers are the truth."""
        if not self.exists(FAILED_JSON):
            return {}
        try:
            return {int(k): str(v) for k, v in self.read_json(FAILED_JSON)["failed"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("%s: ignoring %s, which does not parse (%s)", self.url, FAILED_JSON, e)
            return {}

    def record_failures(self, failed: dict[int, str]) -> None:
        """Write (or clear) the failed shards of the last ``infer``."""
        if failed:
            self.write_json(FAILED_JSON, {"failed": {str(k): v for k, v in sorted(failed.items())}})
        else:
            self.remove(FAILED_JSON)

    def read_plan(self, columns: list[str] | None = None) -> pa.Table:
        """The plan's table (``columns`` of it: all by default), with the plan schema's types."""
        schema = PLAN if columns is None else pa.schema([PLAN.field(c) for c in columns])
        with self.fs.open(self.path(PLAN_FILE), "rb") as f:  # Parquet's own reader: no pyarrow.dataset (pandas)
            table = pq.ParquetFile(f).read(columns=schema.names)
        return pa.Table.from_arrays([_as_type(table[c], schema.field(c).type) for c in schema.names], schema=schema)

    def commits(self, *, run_id: str | None = None, quiet: bool = False) -> dict[int, CommitRecord]:
        """The valid commit markers by shard (see the commit protocol above). Rejected markers
        are logged (unless ``quiet``) and kept in ``rejected`` with the reason.

        One listing of ``_commits/`` and of each table's folder, the four at once (every marker's
        files are checked against them, also where the files were replaced after the commit); a
        marker listed exactly as the commit index (:meth:`write_commit_index`) saw it is taken
        from the index, the others are read in one batched call. So a scan of a run of thousands
        of shards on S3 costs a few list requests and one GET, not one GET per shard."""
        self.rejected = {}
        stamps = {}
        with ThreadPoolExecutor(1 + len(TABLE_DIRS), thread_name_prefix="list") as pool:
            listings = {t: pool.submit(self._sizes, t) for t in TABLE_DIRS}
            markers = self._ls(COMMITS)
            sizes = {t: f.result() for t, f in listings.items()}
        for p in markers:
            name = posixpath.basename(p["name"].rstrip("/"))
            if _SHARD_FILE.fullmatch(name) and name.endswith(".json"):
                stamps[int(name[len("shard-") : -len(".json")])] = _stamp(p)
        self._stamps = stamps
        if not stamps:
            return {}
        run_id = run_id or self.run_meta().run_id
        indexed = self._read_commit_index(run_id)
        blobs: dict[int, Any] = {}
        for shard, stamp in stamps.items():
            entry = indexed.get(str(shard))
            if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("record"), dict):
                blobs[shard] = json.dumps(entry["record"]).encode()
        unread = [self.path(commit_path(s)) for s in stamps if s not in blobs]
        if unread:
            try:
                got = self.fs.cat(unread, on_error="return")
            except OSError as e:
                raise StorageError(f"could not read the commit markers in {self.where(COMMITS)}: {_describe(e)}") from e
            for k, v in got.items():
                name = posixpath.basename(k)
                blobs[int(name[len("shard-") : -len(".json")])] = v
        out: dict[int, CommitRecord] = {}
        for shard in sorted(stamps):
            blob = blobs.get(shard)
            reason = None
            if isinstance(blob, FileNotFoundError) or blob is None:
                continue  # removed since the listing
            if isinstance(blob, BaseException):
                raise StorageError(f"could not read {self.where(commit_path(shard))}: {_describe(blob)}")
            try:
                rec = CommitRecord.from_json(blob)
            except ValueError as e:
                reason = str(e)
            else:
                if rec.shard != shard:
                    reason = f"it names shard {rec.shard}"
                elif rec.run_id != run_id:
                    reason = f"it belongs to run {rec.run_id}, not {run_id}"
                else:
                    bad = [t for t in TABLE_DIRS if sizes[t].get(f"{shard_name(shard)}.parquet") != rec.bytes[t]]
                    if bad:
                        reason = f"its {', '.join(bad)} file(s) are missing or have another size than it records"
            if reason is None:
                out[shard] = rec
            else:
                self.rejected[shard] = reason
                if not quiet:
                    log.warning("%s: the marker of shard %d is not a commit (%s); the shard runs again",
                                self.url, shard, reason)
        return out

    def write_commit_index(self, commits: dict[int, CommitRecord], *, run_id: str) -> None:
        """Record ``commits`` (from the last :meth:`commits` scan) with each marker's listing
        stamp, so that the next scan reads only markers written or rewritten since. Advisory:
        a missing or damaged index only costs reads."""
        stamps = self._stamps
        doc = {"run_id": run_id,
               "markers": {str(s): {"stamp": stamps[s], "record": rec.as_dict()} for s, rec in commits.items() if s in stamps}}
        self.write_bytes(COMMIT_INDEX, json.dumps(doc, separators=(",", ":")).encode())

    def _read_commit_index(self, run_id: str) -> dict[str, Any]:
        if not self.exists(COMMIT_INDEX):
            return {}
        try:
            doc = json.loads(self.read_bytes(COMMIT_INDEX))
            if doc.get("run_id") != run_id:
                return {}
            markers = doc["markers"]
            return markers if isinstance(markers, dict) else {}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("%s: ignoring %s, which does not parse (%s)", self.url, COMMIT_INDEX, e)
            return {}

    def committed_shards(self, *, run_id: str | None = None) -> list[int]:
        """Shards with a valid commit marker, sorted."""
        return sorted(self.commits(run_id=run_id))

    def _sizes(self, rel: str) -> dict[str, int]:
        return {posixpath.basename(p["name"].rstrip("/")): int(p.get("size") or 0) for p in self._ls(rel)}

    def _ls(self, rel: str) -> list[dict[str, Any]]:
        d = self.path(rel)
        self.fs.invalidate_cache(d)  # other processes write here (s3fs caches listings)
        try:
            return [p for p in self.fs.ls(d, detail=True) if p.get("type") != "directory"]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"could not list {self.where(rel)}: {_describe(e)}") from e

    def dataset(self, table: str, shards: list[int] | None = None) -> ds.Dataset:
        """A committed table as a pyarrow dataset (only shards with a marker)."""
        paths = [self.path(table_path(table, s)) for s in self._table_shards(table, shards)]
        import pyarrow.dataset as ds

        return ds.dataset(paths, schema=TABLES[table], format="parquet", filesystem=self.fs)

    def read_shards(self, table: str, shards: list[int], columns: list[str]) -> pa.Table:
        """``columns`` of these shards' files of ``table``, in shard order: what
        ``dataset(table, shards).to_table(columns=columns)`` gives, read file by file (eight at
        once) by Parquet's own reader, so that pyarrow.dataset (which imports pandas: 0.2 CPU
        s) is not imported. A column a file lacks (an older schema version) comes back as nulls."""
        schema = pa.schema([TABLES[table].field(c) for c in columns])
        parts = list(self.iter_shards(table, shards, columns))
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def iter_shards(self, table: str, shards: list[int], columns: list[str], *, ahead: int = 8) -> Iterator[pa.Table]:
        """:meth:`read_shards`' table one shard at a time, in shard order, ``ahead`` files read
        ahead by threads: a reader that converts each and lets it go never holds the whole
        table."""
        schema = pa.schema([TABLES[table].field(c) for c in columns])

        def one(shard: int) -> pa.Table:
            with self.fs.open(self.path(table_path(table, shard)), "rb") as f:
                pf = pq.ParquetFile(f)
                have = set(pf.schema_arrow.names)
                part = pf.read(columns=[c for c in columns if c in have])
            return pa.Table.from_arrays(  # (as the dataset: nulls even in a field declared non-null)
                [_as_type(part[c], schema.field(c).type) if c in have else pa.nulls(len(part), schema.field(c).type)
                 for c in columns], schema=schema)

        if not shards:
            return
        # (Arrow allocates with the system's allocator here: see mrcnn_batch/__init__.py)
        ahead = max(1, min(ahead, len(shards)))
        try:
            with ThreadPoolExecutor(ahead, thread_name_prefix="read-shard") as pool:
                pending = deque(pool.submit(one, s) for s in shards[:ahead])
                for s in shards[ahead:] + [None] * ahead:
                    done = pending.popleft().result()
                    if s is not None:
                        pending.append(pool.submit(one, s))
                    yield done
                    del done
        finally:
            give_back_freed_memory()  # the reader threads' buffers, freed into their own arenas

    def read_table(self, table: str, shards: list[int] | None = None) -> pa.Table:
        """A committed table (only shards with a marker), every column: ``dataset(table,
        shards).to_table()``, read by :meth:`read_shards` (no pyarrow.dataset, so no pandas)."""
        return self.read_shards(table, self._table_shards(table, shards), TABLES[table].names)

    def _table_shards(self, table: str, shards: list[int] | None) -> list[int]:
        """``shards`` of a known table, or every committed one."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        return self.committed_shards() if shards is None else shards

    # -- what belongs to a run -------------------------------------------------------------
    def foreign_entries(self) -> list[str]:
        """What the output holds that a run did not write (relative names; folders end in /).

        Symbolic links are never a run's own: a link at any of its names is listed too."""
        out = []
        for name, kind in self._entries(""):
            if kind == "dir" and name in _OWN_DIRS:
                out += [f"{name}/{child}" + ("/" if ckind == "dir" else "")
                        for child, ckind in self._entries(name) if not _own(name, child, ckind)]
            elif not _own("", name, kind):
                out.append(name + ("/" if kind == "dir" else ""))
        return sorted(out)

    def remove_own(self, *, keep: tuple[str, ...] = ()) -> None:
        """Remove the run's own files (never anything :meth:`foreign_entries` lists), keeping ``keep``."""
        for name, kind in self._entries(""):
            if name in keep:
                continue
            if _own("", name, kind):
                self.remove(name)
            elif kind == "dir" and name in _OWN_DIRS:
                for child, ckind in self._entries(name):
                    if _own(name, child, ckind):
                        self.remove(f"{name}/{child}")
                if not self._entries(name):
                    try:
                        self.fs.rmdir(self.path(name))
                    except (OSError, NotImplementedError):
                        pass  # object stores have no folders to remove

    def _entries(self, rel: str) -> list[tuple[str, str]]:
        """(name, kind) of the entries of folder ``rel``; kind is file, dir or link (local only)."""
        d = self.path(rel) if rel else self.root
        if self.is_local:
            try:
                with os.scandir(d) as it:
                    return [(e.name, "link" if e.is_symlink() else "dir" if e.is_dir() else "file") for e in it]
            except FileNotFoundError:
                return []
            except OSError as e:
                raise StorageError(f"could not list {self.where(rel) if rel else self.url}: {_describe(e)}") from e
        self.fs.invalidate_cache(d)
        try:
            listing = self.fs.ls(d, detail=True)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"could not list {self.where(rel) if rel else self.url}: {_describe(e)}") from e
        out = []
        for p in listing:
            name = posixpath.basename(p["name"].rstrip("/"))
            if name and p["name"].rstrip("/") != d.rstrip("/"):
                out.append((name, "dir" if p.get("type") == "directory" else "file"))
        return out


def _as_type(column: pa.ChunkedArray, arrow_type: pa.DataType) -> pa.ChunkedArray:
    """The column cast to ``arrow_type`` (itself where it has that type: a cast imports pyarrow.compute)."""
    return column if column.type == arrow_type else column.cast(arrow_type)


def open_run(url: str, *, storage_options: dict[str, Any] | None = None) -> RunDir:
    """Open a run directory for reading its committed tables (``run.read_table("instances")``)."""
    run = RunDir(url, dict(storage_options or {}))
    run.run_meta()
    return run


def _own(folder: str, name: str, kind: str) -> bool:
    """Whether the file ``name`` in ``folder`` ("" for the top) is one a run writes: its names,
    or the temporary names of its writes; never a link or a folder."""
    if kind != "file":
        return False
    if _TEMP.fullmatch(name):
        return True
    return name in _OWN_FILES if not folder else bool(_OWN_DIRS[folder].fullmatch(name))


def _stamp(entry: dict[str, Any]) -> str:
    """What a listing says of a file's version: its size and ETag or modification time."""
    version = entry.get("ETag") or entry.get("LastModified") or entry.get("mtime") or entry.get("created") or ""
    return f"{int(entry.get('size') or 0)}:{version}"


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__
