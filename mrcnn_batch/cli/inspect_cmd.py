"""``mrcnn-batch inspect``: one image through a model's stages, as a page and a JSON of numbers."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from mrcnn_batch.cli import EXIT_USAGE, app
from mrcnn_batch.cli.common import (
    Command,
    StorageOptions,
    Verbose,
    fail,
    out,
    parse_storage_options,
    setup_logging,
)
from mrcnn_batch.config import (
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_MODEL,
    DEFAULT_SCORE_THRESHOLD,
)
from mrcnn_batch.errors import MrcnnBatchError


@app.command(cls=Command)
def inspect(
    image: Annotated[str, typer.Argument(metavar="IMAGE", show_default=False, help="One image (any fsspec URL).")],
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registry name (see `mrcnn-batch models`); one network: a composite (mask+keypoint) model is refused, inspect its components one by one.")] = DEFAULT_MODEL,
    weights: Annotated[str | None, typer.Option("--weights", "-w", metavar="URL", help="State dict or checkpoint at any fsspec URL. Default: the model's registry weights.")] = None,
    storage_options: StorageOptions = None,
    out_dir: Annotated[str | None, typer.Option("--out", "-o", metavar="DIR", help="Folder to write inspect.html and inspect.json into (default: inspect-<image stem> in the current folder).")] = None,
    score_threshold: Annotated[float, typer.Option(metavar="SCORE", help="Keep detections scoring at least this (as infer).")] = DEFAULT_SCORE_THRESHOLD,
    mask_threshold: Annotated[float, typer.Option(metavar="P", help="Mask probability threshold of the pasted masks (as infer).")] = DEFAULT_MASK_THRESHOLD,
    max_detections: Annotated[int, typer.Option(metavar="N", help="Detections kept (as infer).")] = DEFAULT_MAX_DETECTIONS,
    min_size: Annotated[int | None, typer.Option(metavar="PX", help="Resize so the short side is this (default: the model's).")] = None,
    max_size: Annotated[int | None, typer.Option(metavar="PX", help="...and the long side at most this (default: the model's).")] = None,
    rpn_proposals: Annotated[int | None, typer.Option("--rpn-proposals", min=1, metavar="N", help="Proposals kept after the RPN's NMS (as infer; default: the model's).")] = None,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="cpu, cuda, cuda:N or auto (cuda when present).")] = "cpu",
    top: Annotated[int, typer.Option("--top", min=0, metavar="N", help="Proposals drawn on the page (the best N after NMS).")] = 20,
    verbose: Verbose = False,
) -> None:
    """Run one IMAGE through a model and show each stage: a page (inspect.html) and its numbers (inspect.json).

    Forward hooks on torchvision's modules record the input, the resized batch, every FPN level,
    the anchors, the RPN's proposals before and after NMS, the box head's RoIs, the detections
    (equal to infer's rows), mask logits and keypoint heatmaps. The page draws the anchors of
    the image's centre, the top proposals, the final boxes, each mask beside its pasted mask,
    and the keypoint heatmaps. Composite models are refused (exit 2): inspect each component.
    """
    opts = parse_storage_options(storage_options, "--storage-options")
    from mrcnn_batch.config import missing_local_path

    if missing_local_path(image):
        fail(f"image {image!r} does not exist", EXIT_USAGE)
    setup_logging(verbose)
    from mrcnn_batch.inspect import inspect_image, write_inspection
    from mrcnn_batch.models.weights import WeightsUnavailable

    if out_dir is None:
        stem = os.path.splitext(os.path.basename(image.rstrip("/")))[0] or "image"
        out_dir = os.path.join(os.getcwd(), f"inspect-{stem}")
    try:
        result = inspect_image(image, model=model, weights=weights, storage_options=opts, score_threshold=score_threshold,
                               mask_threshold=mask_threshold, max_detections=max_detections, min_size=min_size,
                               max_size=max_size, rpn_proposals=rpn_proposals, device=device)
        written = write_inspection(result, out_dir, top=top, storage_options=opts)
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except (WeightsUnavailable, KeyError, ValueError, FileNotFoundError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e), EXIT_USAGE)
    for w in written:
        out.print(w, highlight=False, soft_wrap=True)
