"""``mrcnn-batch demo``, ``render``, ``report`` and ``export``: showing a run and handing it on."""

from __future__ import annotations

import logging
import os
import time
from typing import List, Optional

import typer

from mrcnn_batch.cli import EXIT_SHARDS_FAILED, EXIT_USAGE, app
from mrcnn_batch.errors import MrcnnBatchError
from mrcnn_batch.run.preflight import check_reachable
from mrcnn_batch.cli.infer_cmd import err, fail, out, parse_storage_options


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _output_options(storage_options: dict, output_storage_options: Optional[str]) -> dict:
    if output_storage_options:
        return parse_storage_options(output_storage_options, "--output-storage-options")
    return storage_options


@app.command()
def demo(
    out_dir: str = typer.Option("mrcnn-demo", "--out", "-o", help="Local directory for the dataset, run, report, overlays and export."),
    s3: bool = typer.Option(False, "--s3", metavar="", help="Keep the dataset and the run in an embedded S3 endpoint (moto's server) instead of local files."),
    images: Optional[int] = typer.Option(None, "--images", "-n", min=1, help="Held-out images to generate (default: 300, about a minute on 2 CPU cores)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="ray (default: actors on an embedded local Ray) or local (in-process)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Log progress."),
) -> None:
    """Generate a held-out dataset, infer with the demo model, evaluate, render and report."""
    from mrcnn_batch.demo.pipeline import DEFAULT_EXECUTOR, DEFAULT_IMAGES, DemoConfig, DemoIncomplete, run_demo

    _logging(verbose)
    if executor not in (None, "ray", "local"):
        raise typer.BadParameter(f"--executor must be ray or local, got {executor!r}")
    config = DemoConfig(out=out_dir, num_images=images or DEFAULT_IMAGES, s3=s3, executor=executor or DEFAULT_EXECUTOR)
    where = "an embedded S3 endpoint (moto)" if s3 else os.path.abspath(out_dir)
    err.print(f"demo: {config.num_images} held-out images, demo model, executor {config.executor}, data in {where}", highlight=False, soft_wrap=True)
    started = time.perf_counter()

    def step(name: str) -> None:
        err.print(f"  [{time.perf_counter() - started:6.1f}s] {name}", highlight=False, soft_wrap=True)

    try:
        result = run_demo(config, on_step=step)
    except DemoIncomplete as e:
        fail(str(e), EXIT_SHARDS_FAILED)
    out.print()
    out.print("[bold]COCO metrics on the held-out set[/] (our eval; pycocotools on the exported results agrees to the max |Δ| shown)", soft_wrap=True)
    names = ("AP", "AP50", "AP75")
    out.print(f"  {'':10s}" + "".join(f"{n:>8s}" for n in names) + f"{'|Δ| vs pycocotools':>22s}", highlight=False, soft_wrap=True)
    for t, m in result.metrics.items():
        out.print(f"  {t:10s}" + "".join(f"{m[n]:8.3f}" for n in names) + f"{result.pycocotools_max_diff.get(t, float('nan')):22.1e}", highlight=False, soft_wrap=True)
    status = ", ".join(f"{k} {v}" for k, v in result.images_by_status.items())
    out.print(f"\nimages: {status}; instances: {result.instances}", highlight=False, soft_wrap=True)
    out.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()), highlight=False, soft_wrap=True)
    if result.s3_endpoint:
        out.print(f"dataset and run were in {result.dataset} and {result.run} (endpoint {result.s3_endpoint}, gone now); run copied to:", highlight=False, soft_wrap=True)
    out.print(f"\nrun directory   {result.local_run}", highlight=False, soft_wrap=True)
    out.print(f"metrics         {result.eval_dir}/metrics.json (+ metrics.parquet, pr_*.png)", highlight=False, soft_wrap=True)
    out.print(f"report          {result.report}", highlight=False, soft_wrap=True)
    out.print(f"overlays        {os.path.dirname(result.overlays[0]) if result.overlays else '-'}", highlight=False, soft_wrap=True)
    out.print(f"COCO results    {', '.join(result.exports)}", highlight=False, soft_wrap=True)


@app.command()
def render(
    run: str = typer.Argument(..., help="Run directory (any fsspec URL)."),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="Where to write <image_id>.png and gallery.png (default: RUN/render)."),
    image_id: Optional[List[int]] = typer.Option(None, "--image-id", help="Render this image (repeatable). Default: the first --limit ok images by id."),
    limit: int = typer.Option(32, "--limit", help="Images rendered when no --image-id is given."),
    score_threshold: float = typer.Option(0.5, "--score-threshold", help="Draw instances and keypoints scoring at least this."),
    no_masks: bool = typer.Option(False, "--no-masks", metavar="", help="Do not draw the masks."),
    no_boxes: bool = typer.Option(False, "--no-boxes", metavar="", help="Do not draw the boxes."),
    no_labels: bool = typer.Option(False, "--no-labels", metavar="", help="Do not write category and score labels."),
    no_keypoints: bool = typer.Option(False, "--no-keypoints", metavar="", help="Do not draw keypoints and skeletons."),
    gallery: bool = typer.Option(True, "--gallery/--no-gallery", metavar="", help="Also write gallery.png: the best instances of each category."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help="fsspec storage options (JSON) for the run and its images."),
    output_storage_options: Optional[str] = typer.Option(None, "--output-storage-options", help="Storage options (JSON) for --out; default: --storage-options."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Log progress."),
) -> None:
    """Overlays of a run's predictions: masks, boxes, labels, keypoint skeletons; and a gallery."""
    import posixpath

    import fsspec

    from mrcnn_batch.render import OverlayStyle, render_gallery, render_run
    from mrcnn_batch.render.gallery import GalleryStyle
    from mrcnn_batch.run.layout import open_run

    _logging(verbose)
    opts = parse_storage_options(storage_options, "--storage-options")
    out_opts = _output_options(opts, output_storage_options)
    style = OverlayStyle(score_threshold=score_threshold, masks=not no_masks, boxes=not no_boxes,
                         labels=not no_labels, keypoints=not no_keypoints)
    target = out_dir or posixpath.join(run.rstrip("/"), "render")
    try:
        check_reachable(run, opts, role="run")
        rd = open_run(run, storage_options=opts)
        written = render_run(run, target, image_ids=image_id or None, limit=limit, storage_options=opts,
                             output_storage_options=out_opts, style=style)
        if gallery:
            got = render_gallery(rd, storage_options=opts, score_threshold=score_threshold,
                                 style=GalleryStyle(overlay=style))
            if got is not None:
                fs, root = fsspec.core.url_to_fs(target, **out_opts)
                path = posixpath.join(root.rstrip("/"), "gallery.png")
                with fs.open(path, "wb") as f:
                    f.write(got[0])
                written.append(fs.unstrip_protocol(path))
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except (FileNotFoundError, KeyError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) else str(e), EXIT_USAGE)
    for w in written:
        out.print(w, highlight=False, soft_wrap=True)
    err.print(f"{len(written)} files written to {target}", highlight=False, soft_wrap=True)


@app.command()
def report(
    run: str = typer.Argument(..., help="Run directory (any fsspec URL)."),
    out_file: Optional[str] = typer.Option(None, "--out", "-o", help="The HTML file (default: RUN/report.html)."),
    samples: int = typer.Option(6, "--samples", help="Sample overlays shown."),
    score_threshold: float = typer.Option(0.5, "--score-threshold", help="Overlays and gallery draw instances scoring at least this."),
    title: Optional[str] = typer.Option(None, "--title", help="The page's heading (default: 'mrcnn-batch run report')."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help="fsspec storage options (JSON) for the run and its images."),
    output_storage_options: Optional[str] = typer.Option(None, "--output-storage-options", help="Storage options (JSON) for --out; default: --storage-options."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Log progress."),
) -> None:
    """One self-contained HTML page: statuses, categories, scores, throughput, metrics, overlays."""
    from mrcnn_batch.render import OverlayStyle
    from mrcnn_batch.report import ReportOptions, write_report

    _logging(verbose)
    opts = parse_storage_options(storage_options, "--storage-options")
    options = ReportOptions(samples=samples, overlay=OverlayStyle(score_threshold=score_threshold), title=title)
    try:
        check_reachable(run, opts, role="run")
        written = write_report(run, out_file, storage_options=opts,
                               output_storage_options=_output_options(opts, output_storage_options), options=options)
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except FileNotFoundError as e:
        fail(str(e), EXIT_USAGE)
    out.print(written, highlight=False, soft_wrap=True)


@app.command()
def export(
    run: str = typer.Argument(..., help="Run directory (any fsspec URL)."),
    format: str = typer.Option("coco-results", "--format", "-f", help="coco-results: results_<type>.json for COCO.loadRes/COCOeval; coco: a COCO dataset (coco.json) for CVAT, Label Studio, FiftyOne."),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="Directory to write into (default: RUN/export)."),
    iou_types: Optional[str] = typer.Option(None, "--iou-types", help="coco-results only: comma-separated bbox,segm,keypoints (default: what the model produced)."),
    image_root: Optional[str] = typer.Option(None, "--image-root", help="coco only: file_name is the image URI relative to this prefix (default: the full URI)."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help="fsspec storage options (JSON) for the run."),
    output_storage_options: Optional[str] = typer.Option(None, "--output-storage-options", help="Storage options (JSON) for --out; default: --storage-options."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Log progress."),
) -> None:
    """COCO JSON of a run, for the COCO API and annotation tools."""
    from mrcnn_batch.export import FORMATS, export_run

    _logging(verbose)
    if format not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    types = tuple(t.strip() for t in iou_types.split(",") if t.strip()) if iou_types else None
    if types and format != "coco-results":
        raise typer.BadParameter("--iou-types applies to --format coco-results only")
    opts = parse_storage_options(storage_options, "--storage-options")
    try:
        check_reachable(run, opts, role="run")
        written = export_run(run, out_dir, format=format, iou_types=types, image_root=image_root, storage_options=opts,
                             output_storage_options=_output_options(opts, output_storage_options))
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e), EXIT_USAGE)
    for w in written:
        out.print(w, highlight=False, soft_wrap=True)
