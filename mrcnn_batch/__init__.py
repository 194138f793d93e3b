"""mrcnn-batch: Mask R-CNN / Keypoint R-CNN over sharded image collections, to Parquet."""

__version__ = "0.1.0"

from mrcnn_batch.api import infer, list_models, open_run  # noqa: E402

__all__ = ["__version__", "infer", "list_models", "open_run"]
