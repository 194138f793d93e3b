"""The HTML report of a run: one self-contained page (``page``) from the run's facts
(``facts``), charts (``figures``) and overlays (``mrcnn_batch.render``).

    >>> from mrcnn_batch.report import write_report
    >>> write_report("s3://bucket/runs/r1", "report.html", storage_options={...})
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

from mrcnn_batch.render.gallery import GalleryStyle, instance_gallery
from mrcnn_batch.render.overlays import OverlayStyle, draw_overlay, image_records, load_run_images, run_skeleton, to_png
from mrcnn_batch.report import figures
from mrcnn_batch.report.facts import RunFacts, gather
from mrcnn_batch.report.page import Figure, render_page
from mrcnn_batch.run.layout import open_run

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"

__all__ = ["ReportOptions", "RunFacts", "build_report", "gather", "write_report"]


@dataclass(frozen=True)
class ReportOptions:
    samples: int = 6  # overlays of the first ok images by id
    gallery_images: int = 40  # images whose instances the gallery picks from
    overlay: OverlayStyle = OverlayStyle()
    gallery: GalleryStyle = GalleryStyle()
    max_failures: int = 100  # failed images listed
    title: str | None = None


def build_report(url: str, *, storage_options: dict[str, Any] | None = None,
                 options: ReportOptions = ReportOptions()) -> str:
    """The report of the run at ``url`` as an HTML string."""
    opts = dict(storage_options or {})
    run = open_run(url, storage_options=opts)
    facts = gather(run, max_failures=options.max_failures)
    charts = {"status": figures.status_chart(facts.status_counts)}
    if facts.instances_per_category:
        charts["categories"] = figures.bar_chart(facts.instances_per_category, title="instances per category", xlabel="instances")
        charts["scores"] = figures.score_histogram(facts.scores)
    if facts.throughput.shards and facts.throughput.worker_seconds > 0:
        charts["shards"] = figures.shard_time_chart(facts.throughput.shard_seconds, facts.throughput.shard_images)
    overlays, gallery = _pictures(run, opts, options)
    return render_page(facts, charts=charts, overlays=overlays, gallery=gallery, title=options.title)


def _pictures(run, storage_options: dict[str, Any], options: ReportOptions) -> tuple[list[Figure], Figure | None]:
    n = max(options.samples, options.gallery_images)
    if n <= 0:
        return [], None
    records = image_records(run, limit=n)
    if not records:
        return [], None
    skeleton = run_skeleton(run)
    arrays = load_run_images(run, records, storage_options=storage_options)
    overlays = []
    for rec, arr in list(zip(records, arrays))[: options.samples]:
        if arr is None:
            continue
        shown = sum(1 for r in rec.instances if r["score"] >= options.overlay.score_threshold)
        png = to_png(draw_overlay(arr, rec.instances, rec.keypoints, skeleton=skeleton, style=options.overlay))
        width = arr.shape[1] * 2 if arr.shape[1] < 320 else None  # small images shown at 2x
        overlays.append(Figure(png, f"image {rec.image_id}: {shown} instances with score ≥ {options.overlay.score_threshold:g} · {rec.uri}", width))
    gallery = None
    picked = records[: options.gallery_images]
    got = instance_gallery(picked, arrays[: len(picked)], skeleton=skeleton, score_threshold=options.overlay.score_threshold,
                           style=options.gallery)
    if got is not None:
        grid, rows = got
        gallery = Figure(to_png(grid), "best-scoring instances per category (rows: " + ", ".join(rows) + ")")
    return overlays, gallery


def write_report(url: str, out: str | None = None, *, storage_options: dict[str, Any] | None = None,
                 output_storage_options: dict[str, Any] | None = None, options: ReportOptions = ReportOptions()) -> str:
    """Write the report (default ``RUN/report.html``); returns its URL."""
    page = build_report(url, storage_options=storage_options, options=options)
    target = out or posixpath.join(url.rstrip("/"), REPORT_FILE)
    fs, path = fsspec.core.url_to_fs(target, **(dict(storage_options or {}) if output_storage_options is None else output_storage_options))
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(page.encode("utf-8"))
    log.info("wrote the report of %s to %s", url, target)
    return fs.unstrip_protocol(path)
