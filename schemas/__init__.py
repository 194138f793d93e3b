"""The Parquet tables of a run: the single source of truth for their Arrow schemas.

Installed as ``mrcnn_batch.schemas``. Every writer builds its tables from these schemas,
every reader and test checks against them, and README.md in this folder documents them.
Bump ``SCHEMA_VERSION`` on any change to a column's name, type or meaning.

Data contracts (stated once, here):

* ``image_id`` (int64): the COCO id where the input has one (COCO annotations JSON, or a
  manifest's ``image_id`` column); otherwise the first 63 bits of BLAKE2b-64 of the image's key
  relative to the input root (see ``mrcnn_batch.plan.ids``), so a re-listing never renumbers.
* ``bbox``: ``[x, y, w, h]`` in original-image pixels (COCO convention), float32, where
  ``x, y`` are the box's top-left corner as torchvision predicts it (no half-pixel shift).
* ``mask``: COCO RLE of the full original image, ``size = [height, width]``, ``counts`` the
  compressed RLE string of pycocotools (column-major run lengths starting with a run of zeros).
* ``keypoints``: COCO triplets ``[x1, y1, v1, x2, y2, v2, ...]`` in original-image pixels;
  ``v`` is 2 (labelled and visible) for every predicted keypoint, confidence is in
  ``keypoint_scores``.
* ``shard``: the shard number of the run's plan (``_plan/plan.parquet``).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"

#: Statuses an ``images`` row can have. Every planned image gets exactly one row.
IMAGE_STATUSES = (
    "ok",            # decoded and predicted
    "read_error",    # the bytes could not be fetched (missing object, permission, storage down)
    "decode_error",  # the bytes are not a decodable image (empty, truncated, not an image)
    "too_large",     # the image's pixel count exceeds the configured limit
    "unsupported",   # an image format or mode this tool does not handle
    "predict_error", # decoded, but the model raised on it (message says why)
)

CATEGORY = pa.dictionary(pa.int32(), pa.string())

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("status", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("error", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("num_instances", pa.int32(), nullable=False),
        pa.field("num_keypoints", pa.int32(), nullable=False),
    ]
)

MASK = pa.struct(
    [
        pa.field("size", pa.list_(pa.int32()), nullable=False),  # [height, width]
        pa.field("counts", pa.string(), nullable=False),
    ]
)

INSTANCES = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("instance_id", pa.int32(), nullable=False),
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("category", CATEGORY, nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("area", pa.float64(), nullable=False),
        pa.field("mask", MASK),
    ]
)

KEYPOINTS = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("instance_id", pa.int32(), nullable=False),
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("category", CATEGORY, nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("keypoints", pa.list_(pa.float32()), nullable=False),
        pa.field("keypoint_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("mask_instance_id", pa.int32()),
    ]
)

PLAN = pa.schema(
    [
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
    ]
)

TABLES = {"images": IMAGES, "instances": INSTANCES, "keypoints": KEYPOINTS}


def with_metadata(schema: pa.Schema, *, table: str, run_id: str) -> pa.Schema:
    """The schema with the file-level metadata every written file carries."""
    return schema.with_metadata(
        {
            b"mrcnn_batch.schema_version": SCHEMA_VERSION.encode(),
            b"mrcnn_batch.table": table.encode(),
            b"mrcnn_batch.run_id": run_id.encode(),
        }
    )
