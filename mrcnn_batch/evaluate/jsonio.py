"""Reading COCO JSON (ground truth or results) from any fsspec URL, with clear errors.

Ids are held as int64 columns: an id is an integer (not a bool) in [-2**63, 2**63 - 1]."""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec
import orjson

from mrcnn_batch.evaluate.errors import EvalInputError

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def read_json(url: str, *, storage_options: dict[str, Any] | None = None, what: str) -> Any:
    """Parse the JSON document at ``url`` (``.gz``/``.bz2``/... decompressed by suffix)."""
    try:
        with fsspec.open(url, "rb", compression="infer", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError:
        raise EvalInputError(f"{what} {url}: no such file") from None
    except OSError as e:
        raise EvalInputError(f"{what} {url}: cannot be read: {e}") from e
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


def results_iou_types(doc: Any) -> tuple[str, ...]:
    """The IoU types a results file supports, from its first result (as loadRes decides)."""
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
        raise EvalInputError("predictions: cannot tell the IoU type of an empty or malformed results list; pass --iou-types")
    first = doc[0]
    if "keypoints" in first:
        return ("keypoints",)
    types = tuple(t for t, key in (("bbox", "bbox"), ("segm", "segmentation")) if key in first)
    if not types:
        raise EvalInputError("predictions: results[0] has no 'bbox', 'segmentation' or 'keypoints'")
    return types
