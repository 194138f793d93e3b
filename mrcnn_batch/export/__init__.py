"""Exporting a run as COCO JSON: results files (``COCO.loadRes``) and a COCO dataset."""

from mrcnn_batch.export.coco import FORMATS, coco_dataset, coco_results, export_run

__all__ = ["FORMATS", "coco_dataset", "coco_results", "export_run"]
