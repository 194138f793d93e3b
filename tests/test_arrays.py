"""mrcnn_batch.arrays gives what pyarrow's own conversions give (they import pandas; these do not)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mrcnn_batch.arrays import INTS, REALS, binaries, from_numpy, held, one_array, strings, table_from_rows, take, to_numpy

DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64, np.float32, np.float64, np.bool_]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DTYPES).flatmap(lambda d: hnp.arrays(d, st.integers(0, 40))), st.integers(0, 5), st.integers(0, 5))
def test_numpy_round_trips_as_pyarrow_converts(values, lo, hi):
    got, want = from_numpy(values), pa.array(values)
    got.validate(full=True)
    assert got.type == want.type and got.null_count == 0
    np.testing.assert_array_equal(np.array(got.to_pylist(), values.dtype), np.array(want.to_pylist(), values.dtype))  # NaN too
    part = got.slice(min(lo, len(values)), max(0, len(values) - lo - hi))
    if values.dtype != np.bool_:
        np.testing.assert_array_equal(to_numpy(part), part.to_numpy(zero_copy_only=False))
        chunked = pa.chunked_array([part, got], type=got.type)
        np.testing.assert_array_equal(to_numpy(chunked), chunked.to_numpy())


def test_columns_with_nulls_or_other_types_fall_back_to_pyarrow():
    with_null = pa.array([1.0, None, 3.0])
    np.testing.assert_array_equal(to_numpy(with_null), with_null.to_numpy(zero_copy_only=False))
    words = pa.array(["a", "b"])
    assert to_numpy(words).tolist() == ["a", "b"]
    assert to_numpy(pa.chunked_array([], pa.int64())).dtype == np.int64


@pytest.mark.parametrize("build, type_, item", [
    (strings, pa.string(), st.text(max_size=6)), (strings, pa.large_string(), st.text(max_size=6)),
    (binaries, pa.binary(), st.binary(max_size=6)), (binaries, pa.large_binary(), st.binary(max_size=6)),
])
@given(data=st.data())
def test_strings_and_binaries_as_pyarrow_builds_them(build, type_, item, data):
    values = data.draw(st.lists(item))
    got = build(values, type_)
    got.validate(full=True)
    assert got.equals(pa.array(values, type_))


ROW_SCHEMA = pa.schema([pa.field("name", pa.string()), pa.field("wide", pa.large_string()), pa.field("n", pa.int64()),
                        pa.field("small", pa.int32()), pa.field("x", pa.float64()), pa.field("flag", pa.bool_())])
ROWS = st.lists(st.fixed_dictionaries({
    "name": st.none() | st.text(max_size=5), "wide": st.none() | st.text(max_size=5),
    "n": st.none() | st.integers(-2**63, 2**63 - 1), "small": st.none() | st.integers(-2**31, 2**31 - 1),
    "x": st.none() | st.floats(allow_nan=False) | st.integers(-2**53, 2**53), "flag": st.none() | st.booleans(),
}), max_size=12)


@given(ROWS)
def test_tables_from_rows_as_pyarrow_builds_them(rows):
    got = table_from_rows(rows, schema=ROW_SCHEMA)
    got.validate(full=True)
    assert got.equals(pa.Table.from_pylist(rows, schema=ROW_SCHEMA))


def _outcome(build, rows):
    try:
        return build(rows, schema=ROW_SCHEMA)
    except Exception as e:  # noqa: BLE001 - compared, not swallowed
        return type(e)


@pytest.mark.parametrize("bad", [{"n": 2**64}, {"n": 1.5}, {"n": True}, {"name": 3}, {"flag": 1}, {"x": "1"}, {"small": 2**40}])
def test_rows_pyarrow_must_judge_go_to_pyarrow(bad):
    got, want = _outcome(table_from_rows, [bad]), _outcome(pa.Table.from_pylist, [bad])
    assert got == want if isinstance(want, type) else got.equals(want)


@st.composite
def chunked_strings(draw):
    """A chunked string column (chunks empty, sliced or whole) and rows to take from it."""
    chunks = []
    for words in draw(st.lists(st.lists(st.text(max_size=4), max_size=6), max_size=5)):
        arr = pa.array(words, pa.string())
        lo = draw(st.integers(0, len(words)))
        chunks.append(arr.slice(lo, draw(st.integers(0, len(words) - lo))))
    column = pa.chunked_array(chunks, pa.string())
    rows = draw(st.lists(st.integers(0, max(len(column) - 1, 0)), max_size=12) if len(column) else st.just([]))
    return column, np.array(rows, np.int64)


@settings(max_examples=200, deadline=None)
@given(chunked_strings(), st.booleans())
def test_take_gives_pyarrows_take_as_one_array(case, sort):
    column, rows = case
    rows = np.sort(rows) if sort else rows
    got = take(column, rows)
    assert isinstance(got, pa.Array) and got.type == column.type
    assert got.to_pylist() == column.take(pa.array(rows, pa.int64())).to_pylist()
    one = one_array(column)
    assert isinstance(one, pa.Array) and one.to_pylist() == column.to_pylist()


def test_take_refuses_rows_out_of_range():
    column = pa.chunked_array([pa.array(["a"]), pa.array(["b", "c"])])
    with pytest.raises(IndexError):
        take(column, np.array([3]))
    with pytest.raises(IndexError):
        take(column, np.array([-1]))


def test_one_array_of_one_chunk_is_that_chunk():
    chunk = pa.array(np.arange(5.0))
    assert one_array(pa.chunked_array([chunk])).buffers()[1].address == chunk.buffers()[1].address  # no copy



def test_held_keeps_a_width_it_lists_and_converts_the_others_to_the_last():
    ints, reals = np.arange(4, dtype=np.int32), np.arange(4, dtype=np.float32)
    assert held(ints, INTS) is ints and held(reals, REALS) is reals  # no widened copy
    assert held(np.arange(4, dtype=np.uint8), INTS).dtype == np.int64 and held([1, 2], REALS).dtype == np.float64
    strided = np.arange(8, dtype=np.int64)[::2]
    assert held(strided, INTS).flags.c_contiguous and held(strided, INTS).tolist() == [0, 2, 4, 6]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["ok", "decode_error", "too_large", "", "okay", None]), max_size=8), max_size=4),
       st.sampled_from(["ok", "okay", "missing"]), st.booleans())
def test_is_word_gives_pyarrows_equal(chunks, word, encoded):
    import pyarrow.compute as pc

    from mrcnn_batch.arrays import is_word

    arrays = [pa.array(c, pa.string()) for c in chunks]
    if encoded:  # each chunk its own dictionary, as each shard's file has
        arrays = [a.dictionary_encode() for a in arrays]
    column = pa.chunked_array(arrays, arrays[0].type if arrays else pa.string())
    want = pc.fill_null(pc.equal(pc.cast(column, pa.string()), pa.scalar(word, pa.string())), False)
    assert is_word(column, word).tolist() == want.to_pylist()
