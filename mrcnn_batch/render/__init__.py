"""Rendering a run: per-image overlays (``overlays``) and a gallery of single instances (``gallery``)."""

from mrcnn_batch.render.gallery import GalleryStyle, instance_gallery, instance_tile, render_gallery
from mrcnn_batch.render.overlays import (
    ImageRecord,
    OverlayStyle,
    draw_overlay,
    image_records,
    load_images,
    load_run_images,
    render_records,
    render_run,
    to_png,
)

__all__ = [
    "GalleryStyle",
    "ImageRecord",
    "OverlayStyle",
    "draw_overlay",
    "image_records",
    "instance_gallery",
    "instance_tile",
    "load_images",
    "load_run_images",
    "render_gallery",
    "render_records",
    "render_run",
    "to_png",
]
