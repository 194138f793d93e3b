"""The demo: the whole pipeline on the synthetic shapes dataset (`mrcnn_batch.datasets.shapes`) with the packaged `demo` model."""
