"""``mrcnn-batch infer``: a detector over a collection, to a run directory of Parquet tables."""

from __future__ import annotations

import logging
import signal
from typing import Annotated

import typer
from rich.text import Text

from mrcnn_batch.cli import EXIT_SHARDS_FAILED, EXIT_USAGE, app
from mrcnn_batch.cli.common import (
    Address,
    Command,
    OutputStorageOptions,
    StorageOptions,
    Verbose,
    err,
    fail,
    out,
    parse_storage_options,
    say,
    setup_logging,
)
from mrcnn_batch.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_REFINE_MASKS,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SHARD_SIZE,
)
from mrcnn_batch.errors import Interrupted, MrcnnBatchError, UsageError


@app.command(cls=Command)
def infer(
    input: Annotated[str, typer.Argument(metavar="INPUT", show_default=False, help="Images: a prefix or glob, a manifest (.txt/.csv/.parquet), a COCO annotations .json, or tar shard(s). Any fsspec URL.")],
    output: Annotated[str, typer.Argument(metavar="OUTPUT", show_default=False, help="Run directory (any fsspec URL). Resumed if it holds this run.")],
    model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registry name (see `mrcnn-batch models`).")] = DEFAULT_MODEL,
    weights: Annotated[str | None, typer.Option("--weights", "-w", metavar="URL", help="State dict or checkpoint at any fsspec URL. Default: the model's registry weights.")] = None,
    image_root: Annotated[str | None, typer.Option("--image-root", metavar="URL", help="With a COCO .json input: where its file_names live (default: the JSON's folder).")] = None,
    storage_options: StorageOptions = None,
    output_storage_options: OutputStorageOptions = None,
    score_threshold: Annotated[float, typer.Option(metavar="SCORE", help="Keep detections scoring at least this.")] = DEFAULT_SCORE_THRESHOLD,
    mask_threshold: Annotated[float, typer.Option(metavar="P", help="Mask probability threshold.")] = DEFAULT_MASK_THRESHOLD,
    max_detections: Annotated[int, typer.Option(metavar="N", help="Detections kept per image.")] = DEFAULT_MAX_DETECTIONS,
    rpn_proposals: Annotated[int | None, typer.Option("--rpn-proposals", min=1, metavar="N", help="Proposals each image keeps after the RPN (default: the model's, 1000 for torchvision's). Fewer is faster on a CPU, where the box head over them costs most; it can drop low-scoring detections, so it is part of the run's identity.")] = None,
    min_size: Annotated[int | None, typer.Option(metavar="PX", help="Resize so the short side is this (default: the model's).")] = None,
    max_size: Annotated[int | None, typer.Option(metavar="PX", help="...and the long side at most this (default: the model's).")] = None,
    classes: Annotated[str | None, typer.Option(metavar="NAMES", help="Comma-separated category names to keep, e.g. 'person,dog'.")] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Most images per forward pass (only images of one input shape share a pass, so rows never depend on the batch).")] = DEFAULT_BATCH_SIZE,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="auto (cuda when present), cpu, cuda, cuda:N.")] = "auto",
    amp: Annotated[bool, typer.Option("--amp", metavar="", help="Mixed precision (autocast: float16 on CUDA, bfloat16 on CPU). Other numbers than float32; off until measured on your GPU.")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", metavar="", help="NHWC memory format in the backbone (may be faster on GPUs; float noise only).")] = False,
    refine_masks: Annotated[str, typer.Option("--refine-masks", metavar="none|grabcut", help="grabcut: re-cut each mask's edge on the image's pixels with OpenCV's GrabCut, in a crop around its box (needs pip install 'mrcnn-batch\\[refine]'; boxes, scores and keypoints unchanged; part of the run's identity). Measured on the demo's held-out set in the README.")] = DEFAULT_REFINE_MASKS or "none",
    shard_size: Annotated[int, typer.Option(metavar="N", help="Images per shard (the unit of commit and retry).")] = DEFAULT_SHARD_SIZE,
    max_pixels: Annotated[int, typer.Option(metavar="N", help="Images with more pixels get status too_large.")] = DEFAULT_MAX_PIXELS,
    max_bytes: Annotated[int, typer.Option("--max-bytes", min=1, metavar="N", help="Image files larger than this many bytes get status too_large, unread (checked from the file's or tar member's size).")] = DEFAULT_MAX_BYTES,
    no_exif_transpose: Annotated[bool, typer.Option("--no-exif-transpose", metavar="", help="Ignore EXIF orientation.")] = False,
    gpu_decode: Annotated[bool, typer.Option("--gpu-decode", metavar="", help="Decode JPEGs on the CUDA device (nvJPEG); other formats on the CPU. Pixels differ slightly from the CPU decode: part of the run's identity. Needs a CUDA device.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace a run with other settings in OUTPUT (only files the run wrote are removed).")] = False,
    executor: Annotated[str, typer.Option("--executor", metavar="ray|local", help="ray: a pool of Ray actors; local: shards one after another in this process.")] = "ray",
    workers: Annotated[int | None, typer.Option("--workers", metavar="N", help="Ray actors (default: the GPUs of the cluster, or 1 CPU worker without GPUs).")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option("--gpus-per-worker", metavar="X", help="GPUs per actor, may be fractional (default: 1 when the cluster has GPUs, else 0).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option("--cpus-per-worker", metavar="X", help="CPUs per actor (default: 1 with GPUs; without, the CPUs shared among the workers).")] = None,
    address: Address = None,
    max_attempts: Annotated[int, typer.Option("--max-attempts", metavar="N", help="Tries per shard (worker deaths included) before it is reported failed.")] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="", help="List the input and print the plan (images, shards, ids) and what OUTPUT holds; load no model, write nothing.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", metavar="", help="Show a progress bar on stderr.")] = True,
    verbose: Verbose = False,
) -> None:
    """Run a detector over INPUT and write Parquet tables into OUTPUT (resumable)."""
    # what needs no model, first: a mistyped option fails in a second, not after torch loads
    input_options = parse_storage_options(storage_options, "--storage-options")
    out_options = parse_storage_options(output_storage_options, "--output-storage-options") if output_storage_options else None
    if executor not in ("ray", "local"):
        fail(f"unknown executor {executor!r}; expected 'local' or 'ray'", EXIT_USAGE)
    if gpu_decode and device == "cpu":
        fail("--gpu-decode decodes JPEGs on a CUDA device; --device is cpu", EXIT_USAGE)
    # torch-free checks first (encode.refine imports numpy and pycocotools, OpenCV only when used;
    # the model registry's entries register on import, without torch)
    from mrcnn_batch.config import missing_local_path
    from mrcnn_batch.encode.refine import check_method
    from mrcnn_batch.models import registry
    from mrcnn_batch.ray_session import check_job_paths, check_listening, ray_address
    from mrcnn_batch.run.preflight import check_output, check_reachable

    refine = None if refine_masks == "none" else refine_masks
    try:
        spec = registry.get_spec(model)
    except KeyError as e:
        fail(str(e.args[0]), EXIT_USAGE)
    class_names = tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else ()
    if weights is None:  # the model's own categories (a checkpoint's are known once it is read)
        try:
            spec.keep_labels(class_names)
        except ValueError as e:
            fail(str(e), EXIT_USAGE)
    try:
        check_method(refine)
        # under `ray job submit`, a relative path would land in Ray's temporary copy of the job's folder
        check_job_paths({"INPUT": input, "OUTPUT": output, "--weights": weights, "--image-root": image_root})
        if missing_local_path(input):
            raise UsageError(f"input {input!r} does not exist")
        check_reachable(input, input_options, role="input")
        check_output(output, input_options if out_options is None else out_options)
        if executor == "ray" and not dry_run and ray_address(address):
            check_listening(ray_address(address))  # a stopped cluster: said now, not after torch loads
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)

    # torch-free until a run starts (below the dry run)
    from mrcnn_batch.api import make_config, make_executor
    from mrcnn_batch.cli.progress import RunProgress
    from mrcnn_batch.models.weights import WeightsUnavailable
    from mrcnn_batch.plan import InputError
    from mrcnn_batch.run.preflight import check_settings, check_storage

    setup_logging(verbose, quiet_level=logging.ERROR)
    try:
        config = make_config(
            input,
            output,
            model=model,
            weights=weights,
            image_root=image_root,
            storage_options=input_options,
            output_storage_options=out_options,
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
            max_detections=max_detections,
            rpn_proposals=rpn_proposals,
            min_size=min_size,
            max_size=max_size,
            classes=class_names,
            batch_size=batch_size,
            device=device,
            amp=amp,
            channels_last=channels_last,
            refine_masks=refine,
            shard_size=shard_size,
            max_pixels=max_pixels,
            max_bytes=max_bytes,
            exif_transpose=not no_exif_transpose,
            gpu_decode=gpu_decode,
        )
        check_storage(config)  # options, endpoints and the output, before a model loads
        if dry_run:
            print_plan(config)
            return
        check_settings(config, overwrite=overwrite)  # a run with other settings there: refused now
        from mrcnn_batch.run.driver import execute  # torch and torchvision load here

        with RunProgress(console=err, enabled=progress) as bar:
            on_ray = {"on_retry": bar.on_retry, "on_session": say} if executor == "ray" else {}
            run_executor = make_executor(executor, workers=workers, gpus_per_worker=gpus_per_worker,
                                         cpus_per_worker=cpus_per_worker, address=address if executor == "ray" else None,
                                         max_attempts=max_attempts, verbose=verbose, **on_ray)
            if executor != "ray":
                say("Ray: not used (--executor local runs in this process)")
            summary = execute(config, run_executor, overwrite=overwrite, on_plan=bar.on_plan, on_commit=bar.on_commit)
    except MrcnnBatchError as e:  # refusals (3), usage (2), storage (6): each carries its code
        fail(str(e), e.exit_code)
    except (InputError, WeightsUnavailable, KeyError, ValueError, FileNotFoundError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e), EXIT_USAGE)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (`kill`, a scheduler): see ray_session
        from mrcnn_batch.ray_session import stop_signal

        signum = e.signum if isinstance(e, Interrupted) else stop_signal() or signal.SIGINT
        fail(f"interrupted ({signal.Signals(signum).name}): the shards committed so far are kept and the run's lease "
             f"is released; run the same command again to do the rest", 128 + signum)
    print_summary(summary)
    if summary.failed_shards:
        for shard, reason in sorted(summary.failed_shards.items()):
            err.print(Text.assemble((f"shard {shard} failed:", "red"), " ", reason), highlight=False, soft_wrap=True)
        err.print(f"{len(summary.failed_shards)} shard(s) failed; run the same command again to retry them.")
        raise typer.Exit(EXIT_SHARDS_FAILED)


def print_plan(config) -> None:
    """``--dry-run``: the plan ``infer`` would follow, and what the output already holds."""
    import pyarrow.compute as pc

    from mrcnn_batch.models.registry import get_spec
    from mrcnn_batch.plan import build_plan, input_kind
    from mrcnn_batch.run.layout import RunDir

    get_spec(config.predict.model).keep_labels(config.predict.classes)  # an unknown name fails here
    plan = build_plan(config.input, shard_size=config.shard_size)
    shards = pc.max(plan["shard"]).as_py() + 1
    out.print(f"dry run: {plan.num_rows} images in {shards} shards of up to {config.shard_size} "
              f"({input_kind(config.input.url)} input {config.input.url})", highlight=False, soft_wrap=True)
    for s in range(min(shards, 3)):
        rows = plan.filter(pc.equal(plan["shard"], s))
        first = rows.slice(0, 1).to_pylist()[0]
        out.print(f"  shard {s}: {rows.num_rows} images, first {first['uri']} (image_id {first['image_id']})",
                  highlight=False, soft_wrap=True)
    if shards > 3:
        out.print(f"  ... {shards - 3} more shards", highlight=False)
    run = RunDir(config.output, config.output_storage_options)
    try:
        meta = run.run_meta()
    except FileNotFoundError:
        meta = None
    if meta is not None:
        done = len(run.committed_shards())
        out.print(f"output {config.output} holds run {meta.run_id} ({meta.identity.get('model', '?')}): "
                  f"{done} shards committed; the same settings resume it, others are refused", highlight=False, soft_wrap=True)
    else:
        out.print(f"output {config.output}: no run yet; nothing was written", highlight=False, soft_wrap=True)


def print_summary(summary) -> None:
    status = ", ".join(f"{k} {v}" for k, v in summary.images_by_status.items()) or "none"
    state = "complete" if summary.complete else "INCOMPLETE"
    out.print(
        f"run {summary.run_id} in {summary.output}: {state}; {summary.planned_images} images in"
        f" {summary.planned_shards} shards ({len(summary.executed_shards)} run now"
        f"{', resumed' if summary.resumed else ''}); images: {status};"
        f" {summary.instances} instances, {summary.keypoints} keypoint detections;"
        f" {summary.seconds:.1f}s",
        highlight=False,
    )
