"""``mrcnn-batch infer`` and ``mrcnn-batch models``."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mrcnn_batch.cli import EXIT_SHARDS_FAILED, EXIT_USAGE, app
from mrcnn_batch.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SHARD_SIZE,
)
from mrcnn_batch.errors import MrcnnBatchError

err = Console(stderr=True)
out = Console()


def parse_storage_options(text: Optional[str], what: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # malformed, or nested too deeply for the parser
        raise typer.BadParameter(f"{what} must be a JSON object: {e}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def fail(message: str, code: int) -> None:
    """Print ``message`` (never read as markup: paths may hold brackets) unwrapped, and exit."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def infer(
    input: str = typer.Argument(..., help="Images: a prefix or glob, a manifest (.txt/.csv/.parquet), a COCO annotations .json, or tar shard(s). Any fsspec URL."),
    output: str = typer.Argument(..., help="Run directory (any fsspec URL). Resumed if it holds this run."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Registry name (see `mrcnn-batch models`)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="State dict or checkpoint at any fsspec URL. Default: the model's registry weights."),
    image_root: Optional[str] = typer.Option(None, "--image-root", help="With a COCO .json input: where its file_names live (default: the JSON's folder)."),
    storage_options: Optional[str] = typer.Option(None, "--storage-options", help='fsspec storage options (JSON) for input and weights, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'. Never stored in the run.'),
    output_storage_options: Optional[str] = typer.Option(None, "--output-storage-options", help="Storage options (JSON) for the output; default: those of the input."),
    score_threshold: float = typer.Option(DEFAULT_SCORE_THRESHOLD, help="Keep detections scoring at least this."),
    mask_threshold: float = typer.Option(DEFAULT_MASK_THRESHOLD, help="Mask probability threshold."),
    max_detections: int = typer.Option(DEFAULT_MAX_DETECTIONS, help="Detections kept per image."),
    min_size: Optional[int] = typer.Option(None, help="Resize so the short side is this (default: the model's)."),
    max_size: Optional[int] = typer.Option(None, help="...and the long side at most this (default: the model's)."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated category names to keep, e.g. 'person,dog'."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto (cuda when present), cpu, cuda, cuda:N."),
    amp: bool = typer.Option(False, "--amp", metavar="", help="Mixed precision (autocast: float16 on CUDA, bfloat16 on CPU). Other numbers than float32; off until measured on your GPU."),
    channels_last: bool = typer.Option(False, "--channels-last", metavar="", help="NHWC memory format in the backbone (may be faster on GPUs; float noise only)."),
    shard_size: int = typer.Option(DEFAULT_SHARD_SIZE, help="Images per shard (the unit of commit and retry)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Images with more pixels get status too_large."),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-bytes", min=1, help="Image files larger than this many bytes get status too_large, unread (checked from the file's or tar member's size)."),
    no_exif_transpose: bool = typer.Option(False, "--no-exif-transpose", metavar="", help="Ignore EXIF orientation."),
    gpu_decode: bool = typer.Option(False, "--gpu-decode", metavar="", help="Decode JPEGs on the CUDA device (nvJPEG); other formats on the CPU. Pixels differ slightly from the CPU decode: part of the run's identity. Needs a CUDA device."),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace a run with other settings in OUTPUT."),
    executor: str = typer.Option("ray", "--executor", help="ray: a pool of Ray actors; local: shards one after another in this process."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors (default: the GPUs of the cluster, or 1 CPU worker without GPUs)."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="GPUs per actor, may be fractional (default: 1 when the cluster has GPUs, else 0)."),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", help="CPUs per actor (default: 1 with GPUs; without, the CPUs shared among the workers)."),
    address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Ray cluster to join (default: RAY_ADDRESS, else a private local Ray for this command)."),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Tries per shard (worker deaths included) before it is reported failed."),
    dry_run: bool = typer.Option(False, "--dry-run", metavar="", help="List the input and print the plan (images, shards, ids) and what OUTPUT holds; load no model, write nothing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", metavar="", help="Show a progress bar on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Log per-image problems as they happen, and show Ray's worker logs."),
) -> None:
    """Run a detector over INPUT and write Parquet tables into OUTPUT (resumable)."""
    # what needs no model, first: a mistyped option fails in a second, not after torch loads
    input_options = parse_storage_options(storage_options, "--storage-options")
    out_options = parse_storage_options(output_storage_options, "--output-storage-options") if output_storage_options else None
    if executor not in ("ray", "local"):
        fail(f"unknown executor {executor!r}; expected 'local' or 'ray'", EXIT_USAGE)
    if gpu_decode and device == "cpu":
        fail("--gpu-decode decodes JPEGs on a CUDA device; --device is cpu", EXIT_USAGE)
    from mrcnn_batch.config import local_url
    from mrcnn_batch.run.preflight import check_output, check_reachable

    if "://" not in input.replace("file://", "") and "::" not in input and not any(c in input for c in "*?[") \
            and not os.path.exists(local_url(input)):
        fail(f"input {input!r} does not exist", EXIT_USAGE)
    try:
        check_reachable(input, input_options, role="input")
        check_output(output, input_options if out_options is None else out_options)
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)

    from mrcnn_batch.api import make_config, make_executor
    from mrcnn_batch.cli.progress import RunProgress
    from mrcnn_batch.models.weights import WeightsUnavailable
    from mrcnn_batch.plan import InputError
    from mrcnn_batch.run.driver import execute
    from mrcnn_batch.run.preflight import check_storage
    from mrcnn_batch.run.ray_executor import WorkerStartError

    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
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
            min_size=min_size,
            max_size=max_size,
            classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else (),
            batch_size=batch_size,
            device=device,
            amp=amp,
            channels_last=channels_last,
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
        run_executor = make_executor(executor, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                     address=address if executor == "ray" else None, max_attempts=max_attempts, verbose=verbose)
        with RunProgress(console=err, enabled=progress) as bar:
            if hasattr(run_executor, "on_retry"):
                run_executor.on_retry = bar.on_retry
                run_executor.on_session = lambda said: err.print(said, highlight=False, soft_wrap=True)
            else:
                err.print("Ray: not used (--executor local runs in this process)", highlight=False)
            summary = execute(config, run_executor, overwrite=overwrite, on_plan=bar.on_plan, on_commit=bar.on_commit)
    except MrcnnBatchError as e:  # refusals (3), usage (2), storage (6): each carries its code
        fail(str(e), e.exit_code)
    except (InputError, WeightsUnavailable, WorkerStartError, KeyError, ValueError, FileNotFoundError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e), EXIT_USAGE)
    print_summary(summary)
    if summary.failed_shards:
        for shard, reason in sorted(summary.failed_shards.items()):
            err.print(Text.assemble((f"shard {shard} failed:", "red"), " ", reason), highlight=False, soft_wrap=True)
        err.print(f"{len(summary.failed_shards)} shard(s) failed; run the same command again to retry them.")
        raise typer.Exit(EXIT_SHARDS_FAILED)


def reference_metrics_text(metrics: dict) -> str:
    """The published (torchvision: COCO val2017) or measured (demo: its held-out set) APs of a
    registry entry, one line per source: ``COCO-val2017: box 37.9, mask 34.6``."""
    names = {"box_map": "box", "mask_map": "mask", "kp_map": "keypoints"}
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):  # a composite's parts
            lines += [f"{key}: {line}" for line in reference_metrics_text(value).splitlines()]
        elif isinstance(value, dict):
            lines.append(f"{key}: " + ", ".join(f"{names.get(k, k)} {v}" for k, v in value.items()))
    flat = {k: v for k, v in metrics.items() if k.endswith("_AP")}
    if flat:
        n = metrics.get("num_images")
        lines.append((f"held-out set of {n} images: " if n else "") +
                     ", ".join(f"{k.removesuffix('_AP')} {100 * v:.1f}" for k, v in flat.items()))
    return "\n".join(lines) or "-"


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


@app.command()
def models(as_json: bool = typer.Option(False, "--json", metavar="", help="Print the registry as JSON.")) -> None:
    """List the registered models and their metadata."""
    from mrcnn_batch.models.registry import list_models

    specs = list_models()
    if as_json:
        json.dump([s.metadata() | {"description": s.description, "default_weights": s.default_weights} for s in specs], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if out.width < 110:  # a narrow terminal: one block per model rather than a squeezed table
        for s in specs:
            outputs, cats, kps = _model_facts(s)
            out.print(f"[bold]{s.name}[/]: {outputs}; {cats} categories; {kps or 'no'} keypoints", highlight=False)
            for line in reference_metrics_text(s.reference_metrics).splitlines():
                out.print(f"  reference AP, {line}", highlight=False, soft_wrap=True)
            out.print(f"  default weights: {s.default_weights or 'those of its components'}", highlight=False, soft_wrap=True)
        return
    table = Table(show_lines=True, expand=False)
    table.add_column("name", no_wrap=True)
    table.add_column("outputs", no_wrap=True)
    table.add_column("categories", justify="right", min_width=10, no_wrap=True)
    table.add_column("keypoints", justify="right", min_width=9, no_wrap=True)
    table.add_column("reference metrics (AP)", min_width=30)
    for s in specs:
        outputs, cats, kps = _model_facts(s)
        table.add_row(s.name, outputs, str(cats), str(kps or "-"), reference_metrics_text(s.reference_metrics))
    out.print(table)
    for s in specs:
        out.print(f"{s.name}: default weights {s.default_weights or 'those of its components'}", highlight=False, soft_wrap=True)


def _model_facts(spec) -> tuple[str, int, int]:
    """A registry entry's outputs ("boxes+masks"), number of categories and of keypoints."""
    outputs = "+".join(x for x, on in (("boxes", True), ("masks", spec.has_masks), ("keypoints", spec.has_keypoints)) if on)
    return outputs, len(spec.category_ids()), len(spec.keypoint_names)
