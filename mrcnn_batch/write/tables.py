"""Writing a shard's tables as Parquet, exactly as ``schemas`` defines them.

zstd-compressed; ``category`` dictionary-encoded against the model's full category list, so every
shard of a run shares one dictionary; the schema version, table name and run id in the file
metadata.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from mrcnn_batch.schemas import CATEGORY, TABLES, with_metadata

COMPRESSION = "zstd"


def build_table(name: str, columns: dict[str, list], *, categories: tuple[str, ...], run_id: str) -> pa.Table:
    schema = TABLES[name]
    arrays = []
    for f in schema:
        values = columns.get(f.name, [])
        if f.type == CATEGORY:
            lookup = {c: i for i, c in enumerate(categories)}
            idx = pa.array([lookup[v] for v in values], pa.int32())
            arrays.append(pa.DictionaryArray.from_arrays(idx, pa.array(list(categories), pa.string())))
        elif pa.types.is_dictionary(f.type):
            arrays.append(pa.array(values, pa.string()).dictionary_encode().cast(f.type))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=with_metadata(schema, table=name, run_id=run_id))


def table_bytes(table: pa.Table) -> bytes:
    """``table`` as a Parquet file's bytes (written whole by the run directory)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression=COMPRESSION)
    return buf.getvalue().to_pybytes()
