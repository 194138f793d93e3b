"""``mrcnn-batch render`` and ``report``: a run's predictions drawn on its images, and one HTML page."""

from __future__ import annotations

from typing import Annotated

import typer

from mrcnn_batch.cli import EXIT_USAGE, app
from mrcnn_batch.cli.common import (
    Command,
    OutputStorageOptions,
    OverlayScore,
    RunArg,
    StorageOptions,
    Verbose,
    err,
    fail,
    out,
    output_options,
    parse_storage_options,
    setup_logging,
)
from mrcnn_batch.errors import MrcnnBatchError
from mrcnn_batch.run.preflight import check_reachable


@app.command(cls=Command)
def render(
    run: RunArg,
    out_dir: Annotated[str | None, typer.Option("--out", "-o", metavar="DIR", help="Where to write <stem>-<image_id>.png and gallery.png (default: RUN/render).")] = None,
    image_id: Annotated[list[int] | None, typer.Option("--image-id", metavar="ID", help="Render this image (repeatable). Default: the first --limit ok images by id.")] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="Images rendered when no --image-id is given.")] = 32,
    score_threshold: OverlayScore = 0.5,
    no_masks: Annotated[bool, typer.Option("--no-masks", metavar="", help="Do not draw the masks.")] = False,
    no_boxes: Annotated[bool, typer.Option("--no-boxes", metavar="", help="Do not draw the boxes.")] = False,
    no_labels: Annotated[bool, typer.Option("--no-labels", metavar="", help="Do not write category and score labels.")] = False,
    no_keypoints: Annotated[bool, typer.Option("--no-keypoints", metavar="", help="Do not draw keypoints and skeletons.")] = False,
    gallery: Annotated[bool, typer.Option("--gallery/--no-gallery", metavar="", help="Also write gallery.png: the best instances of each category.")] = True,
    storage_options: StorageOptions = None,
    output_storage_options: OutputStorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Overlays of a run's predictions: masks, boxes, labels, keypoint skeletons; and a gallery."""
    import posixpath

    import fsspec

    from mrcnn_batch.render import OverlayStyle, render_gallery, render_run
    from mrcnn_batch.render.gallery import GalleryStyle
    from mrcnn_batch.run.layout import open_run

    setup_logging(verbose)
    opts = parse_storage_options(storage_options, "--storage-options")
    out_opts = output_options(opts, output_storage_options)
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


@app.command(cls=Command)
def report(
    run: RunArg,
    out_file: Annotated[str | None, typer.Option("--out", "-o", metavar="FILE", help="The HTML file (default: RUN/report.html).")] = None,
    samples: Annotated[int, typer.Option("--samples", metavar="N", help="Sample overlays shown.")] = 6,
    score_threshold: OverlayScore = 0.5,
    title: Annotated[str | None, typer.Option("--title", metavar="TEXT", help="The page's heading (default: 'mrcnn-batch run report').")] = None,
    storage_options: StorageOptions = None,
    output_storage_options: OutputStorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """One self-contained HTML page: statuses, categories, scores, throughput, metrics, overlays."""
    from mrcnn_batch.render import OverlayStyle
    from mrcnn_batch.report import ReportOptions, write_report

    setup_logging(verbose)
    opts = parse_storage_options(storage_options, "--storage-options")
    options = ReportOptions(samples=samples, overlay=OverlayStyle(score_threshold=score_threshold), title=title)
    try:
        check_reachable(run, opts, role="run")
        written = write_report(run, out_file, storage_options=opts,
                               output_storage_options=output_options(opts, output_storage_options), options=options)
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except FileNotFoundError as e:
        fail(str(e), EXIT_USAGE)
    out.print(written, highlight=False, soft_wrap=True)
