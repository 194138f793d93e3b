"""mrcnn-batch: Mask R-CNN / Keypoint R-CNN over sharded image collections, to Parquet.

The API (``infer``, ``open_run``, ``list_models``) is imported lazily, so that modules which
need no torch (evaluation workers, the CLI's help) start fast.

Arrow's C++ allocator is the system's (glibc's) unless the environment names another: set here,
before anything imports pyarrow, which picks its default pool once at import. Arrow's own default,
mimalloc, keeps the pages of the Parquet buffers a reader frees (in each reader thread's heap,
and for buffers Arrow allocates inside, where ``pyarrow.set_memory_pool`` does not reach), where
NumPy's arrays cannot use them: 13-30 MiB more at an evaluation's peak, for no speed.
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"

__all__ = ["__version__", "infer", "list_models", "make_config", "open_run"]


def __getattr__(name: str):
    if name == "open_run":  # reading a run needs pyarrow and fsspec, never torch
        from mrcnn_batch.run.layout import open_run

        return open_run
    if name in ("infer", "list_models", "make_config"):
        from mrcnn_batch import api

        return getattr(api, name)
    raise AttributeError(f"module 'mrcnn_batch' has no attribute {name!r}")
