"""Reading COCO JSON (ground truth or results) from any fsspec URL, with clear errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec

from mrcnn_batch.evaluate.errors import EvalInputError

log = logging.getLogger(__name__)


def read_json(url: str, *, storage_options: dict[str, Any] | None = None, what: str) -> Any:
    """Parse the JSON document at ``url`` (``.gz``/``.bz2``/... decompressed by suffix)."""
    try:
        with fsspec.open(url, "rb", compression="infer", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError:
        raise EvalInputError(f"{what} {url}: no such file") from None
    except OSError as e:
        raise EvalInputError(f"{what} {url}: cannot be read: {e}") from e
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalInputError(f"{what} {url}: not valid JSON: {e}") from None


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_box(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(is_number(x) for x in v)


def is_number_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(is_number(x) for x in v)
