"""NumPy arrays out of Arrow columns and Arrow arrays out of NumPy arrays and Python lists,
read through their buffers.

pyarrow's own conversions (``Array.to_numpy``, ``pa.array``, ``pa.scalar``) first ask whether
the object is a pandas one, and that imports pandas: about 0.2 CPU seconds and 40 MiB, more than
evaluating 5,000 images' keypoints takes. These helpers give the same arrays without it, for
the plain cases the evaluation reads (numbers without nulls, ASCII strings) and fall back to
pyarrow's conversion otherwise (same result, pandas imported).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from mrcnn_batch.lazy import LazyModule

if TYPE_CHECKING:
    import pyarrow as pa
else:  # imported by the first conversion: NumPy-only callers (held) never import it
    pa = LazyModule("pyarrow")


@cache
def _numpy_types() -> dict:
    """Arrow's numeric types and their NumPy dtypes."""
    return {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
            pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64,
            pa.float32(): np.float32, pa.float64(): np.float64}


@cache
def _arrow_types() -> dict:
    return {np.dtype(v): k for k, v in _numpy_types().items()}


def one_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column as one array: itself, its only chunk, or its chunks concatenated
    (``combine_chunks`` copies even a single chunk)."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    if column.num_chunks == 1:
        return column.chunk(0)
    return column.combine_chunks() if column.num_chunks else pa.nulls(0, column.type)


def to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``column.to_numpy()`` of a numeric column (read-only where it shares Arrow's memory)."""
    column = one_array(column)
    dtype = _numpy_types().get(column.type)
    if dtype is None or column.null_count:
        return column.to_numpy(zero_copy_only=False)
    if len(column) == 0:
        return np.zeros(0, dtype)
    return np.frombuffer(column.buffers()[1], dtype, count=len(column), offset=column.offset * np.dtype(dtype).itemsize)


INTS, REALS = (np.int32, np.int64), (np.float32, np.float64)  # the widths a column is kept at, as held


def held(values: np.ndarray, dtypes: tuple[type, ...]) -> np.ndarray:
    """``values`` as a contiguous array of one of ``dtypes``: as they are where they hold one
    already (no widened copy of a run's int32 or float32 column), else converted to the last."""
    values = np.asarray(values)
    return np.ascontiguousarray(values, values.dtype if values.dtype in dtypes else dtypes[-1])


def is_word(column: pa.Array | pa.ChunkedArray, word: str) -> np.ndarray:
    """Which values of a string column (dictionary-encoded or not) are ``word``: read off each
    chunk's dictionary where it has one (``pc.equal`` with a Python string imports pandas)."""
    parts = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if chunk.null_count or not hasattr(chunk, "dictionary"):
            parts.append(np.array([v == word for v in chunk.to_pylist()], bool))
            continue
        hits = [i for i, w in enumerate(chunk.dictionary.to_pylist()) if w == word]
        parts.append(np.isin(to_numpy(chunk.indices), hits))
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + n)`` for each start and length."""
    return np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(int(lengths.sum()))


def from_numpy(values: np.ndarray) -> pa.Array:
    """``pa.array(values)`` of a 1-D numeric or boolean array (numbers shared, not copied)."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    arrow = _arrow_types().get(values.dtype)
    if arrow is None or values.ndim != 1:
        return pa.array(values)
    return pa.Array.from_buffers(arrow, len(values), [None, pa.py_buffer(values)])


def take(column: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> pa.Array:
    """``column.take(rows)`` as one array, a chunked column taken chunk by chunk: Arrow's take
    of a chunked string or binary column first concatenates every chunk (a copy of the whole
    column, kept by its memory pool)."""
    rows = np.asarray(rows, np.int64)
    if not isinstance(column, pa.ChunkedArray) or column.num_chunks <= 1:
        return one_array(column).take(from_numpy(rows))
    ends = np.cumsum([len(c) for c in column.chunks])
    which = np.searchsorted(ends, rows, side="right")  # each row's chunk
    if len(rows) and (rows.min() < 0 or rows.max() >= ends[-1]):
        raise IndexError(f"rows out of range for a column of {ends[-1]} values")
    order = np.argsort(which, kind="stable")
    cut = np.searchsorted(which[order], np.arange(column.num_chunks + 1))
    parts = [column.chunk(k).take(from_numpy(rows[order[a:b]] - (ends[k - 1] if k else 0)))
             for k, (a, b) in enumerate(zip(cut[:-1].tolist(), cut[1:].tolist())) if b > a]
    out = pa.concat_arrays(parts) if parts else column.chunk(0).slice(0, 0)
    if (order == np.arange(len(order))).all():
        return out
    back = np.empty(len(order), np.int64)
    back[order] = np.arange(len(order))
    return out.take(from_numpy(back))


def strings(values: Sequence[str], arrow_type: pa.DataType | None = None) -> pa.Array:
    """``pa.array(values, arrow_type)`` of ASCII ``str`` values (``pa.string()``, the default, or
    ``pa.large_string()``)."""
    arrow_type = pa.string() if arrow_type is None else arrow_type
    if arrow_type in (pa.string(), pa.large_string()) and all(type(v) is str for v in values):
        data = "".join(values).encode()
        if len(data) == sum(map(len, values)):  # ASCII: a character is a byte
            offsets = _offsets(map(len, values), len(values), arrow_type)
            if offsets is not None:
                return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.array(values, arrow_type)


def binaries(values: Sequence[bytes], arrow_type: pa.DataType | None = None) -> pa.Array:
    """``pa.array(values, arrow_type)`` of ``bytes`` values (``pa.binary()``, the default, or
    ``pa.large_binary()``)."""
    arrow_type = pa.binary() if arrow_type is None else arrow_type
    if arrow_type in (pa.binary(), pa.large_binary()) and all(type(v) is bytes for v in values):
        offsets = _offsets(map(len, values), len(values), arrow_type)
        if offsets is not None:
            return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))])
    return pa.array(values, arrow_type)


def _offsets(lengths: Iterable[int], n: int, arrow_type: pa.DataType) -> np.ndarray | None:
    """The offsets of ``n`` values of these byte lengths in a string / binary array of
    ``arrow_type`` (int32, or int64 for the large types); None where they overflow int32."""
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(lengths, np.int64, n), out=offsets[1:])
    if arrow_type in (pa.large_string(), pa.large_binary()):
        return offsets
    return offsets.astype(np.int32) if offsets[-1] <= np.iinfo(np.int32).max else None


def table_from_rows(rows: Sequence[dict], *, schema: pa.Schema) -> pa.Table:
    """``pa.Table.from_pylist(rows, schema=schema)`` for flat columns of integers, floats,
    booleans and strings (None: null); any other type or value goes to pyarrow's own."""
    columns = []
    for f in schema:
        column = _column([r.get(f.name) for r in rows], f.type)
        if column is None:
            return pa.Table.from_pylist(list(rows), schema=schema)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _column(values: list, arrow_type: pa.DataType) -> pa.Array | None:
    n = len(values)
    valid = np.fromiter((v is not None for v in values), bool, n)
    nulls = n - int(valid.sum())
    validity = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    kinds = {type(v) for v in values if v is not None}
    if arrow_type in (pa.string(), pa.large_string()):
        if not kinds <= {str}:
            return None
        encoded = [v.encode() if v is not None else b"" for v in values]
        offsets = _offsets(map(len, encoded), n, arrow_type)
        if offsets is None:
            return None
        return pa.Array.from_buffers(arrow_type, n, [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))], nulls)
    if arrow_type == pa.bool_():
        if not kinds <= {bool}:
            return None
        bits = np.packbits(np.fromiter((bool(v) for v in values), bool, n), bitorder="little")
        return pa.Array.from_buffers(arrow_type, n, [validity, pa.py_buffer(bits)], nulls)
    dtype = _numpy_types().get(arrow_type)
    if dtype is None or not kinds <= ({int} if np.issubdtype(dtype, np.integer) else {int, float}):
        return None
    try:
        data = np.array([0 if v is None else v for v in values], dtype)
    except OverflowError:
        return None
    if np.issubdtype(dtype, np.integer) and any(int(a) != v for a, v in zip(data.tolist(), values) if v is not None):
        return None  # out of the type's range: pyarrow's own error
    return pa.Array.from_buffers(arrow_type, n, [validity, pa.py_buffer(data)], nulls)
