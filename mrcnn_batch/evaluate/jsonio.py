"""Reading COCO JSON (ground truth or results) from any fsspec URL, with clear errors.

Ids are held as int64 columns: an id is an integer (not a bool) in [-2**63, 2**63 - 1]."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import orjson

from mrcnn_batch.arrays import from_numpy
from mrcnn_batch.evaluate.errors import EvalInputError
from mrcnn_batch.lazy import LazyModule

if TYPE_CHECKING:
    import pyarrow as pa
else:  # a results file of boxes or keypoints is read without it (see ResultColumns)
    pa = LazyModule("pyarrow")

try:  # the compiled reader of plain results files (_results.c), built when the package is installed
    from mrcnn_batch.evaluate import _results
except ImportError:  # a checkout run from its folder, or installed where nothing compiles
    _results = None

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def read_json(url: str, *, storage_options: dict[str, Any] | None = None, what: str) -> Any:
    """Parse the JSON document at ``url`` (``.gz``/``.bz2``/... decompressed by suffix)."""
    return parse_document(read_document(url, storage_options=storage_options, what=what), url, what=what)


def compiled_ground_truth(data: bytes) -> tuple | None:
    """A COCO annotations file's annotations as columns and its images and categories as
    parsed lists, read by the compiled reader (``_results.c``, segmentations skipped), where it
    was built and the file is plain enough for it; None otherwise (see ``_results.ground_truth``)."""
    if _results is None:
        return None
    out = _results.ground_truth(data)
    if out is None:
        return None
    i0, i1, c0, c1 = out[1]
    try:
        images, categories = orjson.loads(data[i0:i1]), orjson.loads(data[c0:c1])
    except orjson.JSONDecodeError:  # (what orjson refuses, the full parse reads or words)
        return None
    return images, categories, out[0], out[2:]


def read_results(url: str, *, storage_options: dict[str, Any] | None = None) -> Any:
    """A COCO results file: where it is a plain array of results, its columns (read by the
    compiled reader a piece at a time, :func:`compiled_results`: :class:`ResultColumns`, or an
    Arrow table where they hold masks; else from its whole bytes by Arrow's reader,
    :func:`results_table`), otherwise the parsed list, as :func:`read_json` gives it."""
    if _results is not None:
        with _opened(url, storage_options, what="predictions") as f:
            columns = compiled_results(f)
        if columns is not None:
            return columns
    data = read_document(url, storage_options=storage_options, what="predictions")
    table = results_table(data)
    return table if table is not None else parse_document(data, url, what="predictions")


@dataclass(frozen=True, eq=False)
class ResultColumns:
    """A plain results file of boxes and/or keypoints as the compiled reader gives it: NumPy
    views of its buffers, no pyarrow. A list field is its values (float64, or float32 where every
    value of the field is one exactly, as a run's export writes them: half the memory) and its
    ``rows + 1`` int32 offsets (every result has every present field). :meth:`table` is the
    Arrow table :func:`results_table` gives for the same file."""

    rows: int
    image_id: np.ndarray  # int64
    category_id: np.ndarray  # int64
    score: np.ndarray  # float64
    bbox: tuple[np.ndarray, np.ndarray] | None = None  # (offsets, values)
    keypoints: tuple[np.ndarray, np.ndarray] | None = None  # (offsets, values)

    def first(self) -> dict[str, Any]:
        """The first result (the one pycocotools' loadRes decides the file's kind by)."""
        out: dict[str, Any] = {"image_id": int(self.image_id[0]), "category_id": int(self.category_id[0]),
                               "score": float(self.score[0])}
        for name in ("bbox", "keypoints"):
            if (field := getattr(self, name)) is not None:
                at, values = field
                out[name] = values[at[0]:at[1]].tolist()
        return out

    def table(self) -> pa.Table:
        columns = {"image_id": from_numpy(self.image_id), "category_id": from_numpy(self.category_id),
                   "score": from_numpy(self.score)}
        for name in ("bbox", "keypoints"):
            if (field := getattr(self, name)) is not None:
                columns[name] = pa.ListArray.from_arrays(from_numpy(field[0]), from_numpy(field[1].astype(np.float64)))
        return pa.Table.from_arrays(list(columns.values()), schema=pa.schema([_result_fields().field(c) for c in columns]))


def compiled_results(source: bytes | Any, *, chunk: int = 1 << 23, longest: int = 1 << 26) -> ResultColumns | pa.Table | None:
    """A results file read by the compiled reader (``_results.c``: whitespace and key order
    free, numbers as Python's parser reads them), where it was built and the file is plain
    enough for it: :class:`ResultColumns`, or :func:`results_table`'s table where the results
    hold masks (their strings are Arrow's); None otherwise. ``source``: the document's bytes or
    a binary file, read ``chunk`` bytes at a time (the whole file is never held); a result that
    does not read with ``longest`` bytes from its start on gives None (malformed, or left to
    the slower paths)."""
    if _results is None:
        return None
    f = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    into = getattr(f, "readinto", None)  # (straight into the reader's window: no bytes object per piece)
    out = _results.read(into, chunk, longest, True) if into is not None else _results.read(f.read, chunk, longest)
    if out is None:
        return None
    rows, present, image, category, score, bbox, bbox_at, kp, kp_at, size, size_at, counts, counts_at, narrow = out
    has_bbox, has_keypoints, has_segmentation = present[3:]  # (ids and score: every result has them)

    def lists(buf: Any, at: Any, dtype) -> tuple[np.ndarray, np.ndarray]:
        return np.frombuffer(at, np.int32), np.frombuffer(buf, dtype)

    reals = [np.float32 if f32 else np.float64 for f32 in narrow]  # (float32 where every value is one)
    columns = ResultColumns(rows, np.frombuffer(image, np.int64), np.frombuffer(category, np.int64),
                            np.frombuffer(score, np.float64), lists(bbox, bbox_at, reals[0]) if has_bbox else None,
                            lists(kp, kp_at, reals[1]) if has_keypoints else None)
    if not has_segmentation:
        return columns
    strings = pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(counts_at), pa.py_buffer(counts)])
    try:
        strings.validate(full=True)  # UTF-8
    except pa.ArrowInvalid:
        return None
    segmentation = pa.StructArray.from_arrays([pa.ListArray.from_arrays(*map(from_numpy, lists(size, size_at, np.int64))),
                                               strings], names=["size", "counts"])
    table = columns.table()
    return table.append_column(_result_fields().field("segmentation"), segmentation)


def compiled_results_table(source: bytes | Any, *, chunk: int = 1 << 23, longest: int = 1 << 26) -> pa.Table | None:
    """:func:`compiled_results` as :func:`results_table`'s Arrow table."""
    out = compiled_results(source, chunk=chunk, longest=longest)
    return out.table() if isinstance(out, ResultColumns) else out


def results_table(data: bytes, *, piece: int = 1 << 24) -> pa.Table | None:
    """``data`` read by Arrow's JSON reader, one column per field, with no Python object per
    result (less time and memory), where it is a one-line array of objects that all have the
    same fields, ids as integers, masks (if any) as compressed RLE; the fields evaluation reads
    (``_result_fields``), the others left out. None otherwise: then the document is parsed as
    usual, which checks it result by result. The array's objects are cut apart at ``}, {`` and
    ``},{``, about ``piece`` bytes at a time (a copy of one piece at once): a cut inside a string
    leaves a line that is not a JSON object, which the reader refuses, as it refuses a line of
    two objects, so a table is returned only where every line is one of the results."""
    first, last = 0, len(data)  # the document without surrounding whitespace: data[first:last]
    while first < last and data[first] in b" \t\r\n":
        first += 1
    while last > first and data[last - 1] in b" \t\r\n":
        last -= 1
    if last - first < 4 or data[first:first + 1] != b"[" or data[last - 1:last] != b"]":
        return None
    if data.find(b"\n", first, last) >= 0:
        return None
    import pyarrow.json as pj

    parts, rows, at, end = [], 0, first + 1, last - 1
    options = {"read_options": pj.ReadOptions(block_size=1 << 22), "memory_pool": pa.system_memory_pool(),
               "parse_options": pj.ParseOptions(explicit_schema=_result_fields(), unexpected_field_behavior="ignore")}
    try:
        while at < end:
            cut = min((c for c in (data.find(b"}, {", at + piece, end), data.find(b"},{", at + piece, end)) if c >= 0),
                      default=end - 1) + 1  # just after a "}" that ends an object
            lines = data[at:cut].replace(b"}, {", b"}\n{").replace(b"},{", b"}\n{")
            parts.append(pj.read_json(pa.BufferReader(lines), **options))
            rows += lines.count(b"\n") + 1
            if cut >= end:
                break
            at = data.find(b"{", cut, end)  # the next object, past ", "
            if at < 0 or data[cut:at].strip() != b",":
                return None
        table = pa.concat_tables(parts)
    except (pa.ArrowException, ValueError):
        return None
    finally:
        pa.system_memory_pool().release_unused()  # the parser's freed blocks, back to the system
    table = table.select([c for c in table.column_names if table[c].null_count < table.num_rows])  # fields present
    names = table.column_names
    if table.num_rows != rows or not {"image_id", "category_id", "score"} <= set(names):
        return None
    if any(table[c].null_count for c in names):  # a field some results lack
        return None
    return table


@cache
def _result_fields() -> pa.Schema:
    """The fields a result's evaluation reads (others are left out), with the types that read
    every block alike (an integer where a float is expected is read as one; a float id is refused)."""
    return pa.schema([("image_id", pa.int64()), ("category_id", pa.int64()), ("score", pa.float64()),
                      ("bbox", pa.list_(pa.float64())), ("keypoints", pa.list_(pa.float64())),
                      ("segmentation", pa.struct([("size", pa.list_(pa.int64())), ("counts", pa.string())]))])


def read_document(url: str, *, storage_options: dict[str, Any] | None = None, what: str) -> bytes:
    """The bytes of the document at ``url`` (decompressed by suffix), for :func:`parse_document`."""
    with _opened(url, storage_options, what=what) as f:
        return f.read()


@contextmanager
def _opened(url: str, storage_options: dict[str, Any] | None, *, what: str) -> Iterator[Any]:
    """The document at ``url`` open for reading (decompressed by suffix); what cannot be opened
    or read, worded."""
    try:
        with fsspec.open(url, "rb", compression="infer", **(storage_options or {})) as f:
            yield f
    except FileNotFoundError:
        raise EvalInputError(f"{what} {url}: no such file") from None
    except OSError as e:
        raise EvalInputError(f"{what} {url}: cannot be read: {e}") from e


def parse_document(data: bytes, url: str, *, what: str) -> Any:
    """:func:`read_json`'s parse of bytes :func:`read_document` gave."""
    if not _may_hold_long_integer(data):
        try:  # orjson: faster on a results file; what it refuses (NaN, deep nesting, lone
            # surrogates), the standard parser reads or words the error
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(data)
    except RecursionError:
        raise EvalInputError(
            f"{what} {url}: not valid COCO JSON: arrays or objects nested too deeply for the parser "
            "(COCO files nest a few levels)"
        ) from None
    except ValueError as e:  # malformed, not UTF-8, or an integer of more digits than Python converts
        raise EvalInputError(f"{what} {url}: not valid JSON: {e}") from None


# Characters that may precede a JSON number ("0"), digits ("1"), anything else ("2").
_NUMBER_CHARS = bytes(
    ord("1") if chr(i).isdigit() and i < 128 else ord("0") if chr(i) in ":,[ \t\r\n-" else ord("2") for i in range(256)
)


def _may_hold_long_integer(data: bytes) -> bool:
    """Whether ``data`` may hold an integer of 19 digits or more: orjson reads one beyond
    64 bits as a float, the standard parser as an integer (which the id checks then name)."""
    return data.translate(_NUMBER_CHARS).find(b"0" + b"1" * 19) >= 0


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_int64(v: Any) -> bool:
    """An integer that fits the int64 columns ids are held in."""
    return is_int(v) and INT64_MIN <= v <= INT64_MAX


def id_problem(v: Any) -> str | None:
    """Why ``v`` is not an id ("missing or not an integer", "out of range"), or None."""
    if not is_int(v):
        return "missing or not an integer"
    if not INT64_MIN <= v <= INT64_MAX:
        return f"{v} is out of range (ids must fit a signed 64-bit integer: -2**63 to 2**63 - 1)"
    return None


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_box(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(is_number(x) for x in v)


def is_number_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(is_number(x) for x in v)


def leading(doc: Any) -> Any:
    """A results document as what decides its kind (loadRes reads the first result): the
    first result of :class:`ResultColumns` or of an Arrow table, as a list of it (none where
    there are no results); a parsed document as it is."""
    if isinstance(doc, ResultColumns):
        return [doc.first()] if doc.rows else []
    if not isinstance(doc, list) and isinstance(doc, pa.Table):
        return doc.slice(0, 1).to_pylist()
    return doc


def results_iou_types(doc: Any) -> tuple[str, ...]:
    """The IoU types a results file supports, from its first result (as loadRes decides)."""
    doc = leading(doc)
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
        raise EvalInputError("predictions: cannot tell the IoU type of an empty or malformed results list; pass --iou-types")
    first = doc[0]
    if "keypoints" in first:
        return ("keypoints",)
    types = tuple(t for t, key in (("bbox", "bbox"), ("segm", "segmentation")) if key in first)
    if not types:
        raise EvalInputError("predictions: results[0] has no 'bbox', 'segmentation' or 'keypoints'")
    return types
