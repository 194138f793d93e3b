"""Looking inside a model: one image through its stages, as numbers (JSON) and pictures (HTML).

stages (forward hooks, numbers) -> inspection (read, build, run, rows) -> pictures, page -> write
"""

from mrcnn_batch.inspect.inspection import Inspection, inspect_image, inspection_json
from mrcnn_batch.inspect.write import HTML_NAME, JSON_NAME, write_inspection

__all__ = ["HTML_NAME", "JSON_NAME", "Inspection", "inspect_image", "inspection_json", "write_inspection"]
