"""Writing an inspection: ``inspect.json`` (the numbers) and ``inspect.html`` (the page) into a
folder at any fsspec URL."""

from __future__ import annotations

import json
from typing import Any

import fsspec

from mrcnn_batch.config import local_url
from mrcnn_batch.errors import StorageError
from mrcnn_batch.inspect.inspection import Inspection, inspection_json
from mrcnn_batch.inspect.page import render_page

JSON_NAME = "inspect.json"
HTML_NAME = "inspect.html"


def write_inspection(ins: Inspection, out: str, *, top: int = 20, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Write both files into folder ``out``; return their URLs."""
    out = local_url(out).rstrip("/")
    files = {
        JSON_NAME: json.dumps(inspection_json(ins), indent=1, allow_nan=False),
        HTML_NAME: render_page(ins, top=top),
    }
    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    written = []
    for name, text in files.items():
        url = f"{out}/{name}"
        try:
            fs.makedirs(root, exist_ok=True)
            with fs.open(f"{root.rstrip('/')}/{name}", "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise StorageError(f"cannot write {url}: {e}") from e
        written.append(url)
    return written
