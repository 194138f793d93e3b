"""A module imported where it is first used, not where it is named.

pyarrow takes 27 MiB and about 0.1 CPU s to import. Evaluating a results file's boxes or
keypoints reads NumPy columns only, so the modules on that path name pyarrow through a
:class:`LazyModule`: it is imported by the first attribute read (a mask evaluation, a run's
Parquet tables, an Arrow conversion), never by the import of the module that names it.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for the module ``name``: reading an attribute imports it (once) and reads it there."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<LazyModule {self._name!r}>"
