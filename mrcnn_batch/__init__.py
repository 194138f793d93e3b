"""mrcnn-batch: Mask R-CNN / Keypoint R-CNN over sharded image collections, to Parquet.

The API (``infer``, ``open_run``, ``list_models``) is imported lazily, so that modules which
need no torch (evaluation workers, the CLI's help) start fast.
"""

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
