"""``mrcnn-batch export``: a run as COCO JSON, for the COCO API and annotation tools."""

from __future__ import annotations

from typing import Annotated

import typer

from mrcnn_batch.cli import EXIT_USAGE, app
from mrcnn_batch.cli.common import (
    Command,
    OutputStorageOptions,
    RunArg,
    StorageOptions,
    Verbose,
    fail,
    out,
    output_options,
    parse_storage_options,
    setup_logging,
)
from mrcnn_batch.errors import MrcnnBatchError
from mrcnn_batch.run.preflight import check_reachable


@app.command(cls=Command)
def export(
    run: RunArg,
    format: Annotated[str, typer.Option("--format", "-f", metavar="FORMAT", help="coco-results: results_<type>.json for COCO.loadRes/COCOeval; coco: a COCO dataset (coco.json) for Label Studio, FiftyOne, pycocotools; coco-dir: the COCO directory layout (annotations/instances_<subset>.json, person_keypoints_<subset>.json, images/<subset>/ with the images copied) for datumaro, CVAT, detectron2.")] = "coco-results",
    out_dir: Annotated[str | None, typer.Option("--out", "-o", metavar="DIR", help="Directory to write into (default: RUN/export).")] = None,
    iou_types: Annotated[str | None, typer.Option("--iou-types", metavar="TYPES", help="coco-results only: comma-separated bbox,segm,keypoints (default: what the model produced).")] = None,
    image_root: Annotated[str | None, typer.Option("--image-root", metavar="URL", help="coco, coco-dir: file_name is the image URI relative to this prefix (default: coco the full URI, coco-dir the file's name).")] = None,
    subset: Annotated[str, typer.Option("--subset", metavar="NAME", help="coco-dir only: the subset's name in its file and folder names.")] = "default",
    storage_options: StorageOptions = None,
    output_storage_options: OutputStorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """COCO JSON of a run, for the COCO API and annotation tools."""
    from mrcnn_batch.export import FORMATS, export_run

    setup_logging(verbose)
    if format not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    types = tuple(t.strip() for t in iou_types.split(",") if t.strip()) if iou_types else None
    if types and format != "coco-results":
        raise typer.BadParameter("--iou-types applies to --format coco-results only")
    if subset != "default" and format != "coco-dir":
        raise typer.BadParameter("--subset applies to --format coco-dir only")
    opts = parse_storage_options(storage_options, "--storage-options")
    try:
        check_reachable(run, opts, role="run")
        written = export_run(run, out_dir, format=format, iou_types=types, image_root=image_root, subset=subset, storage_options=opts,
                             output_storage_options=output_options(opts, output_storage_options))
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e), EXIT_USAGE)
    for w in written:
        out.print(w, highlight=False, soft_wrap=True)
