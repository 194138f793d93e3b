"""The Python API, for notebooks and scripts: the same operations as the CLI.

    >>> import mrcnn_batch as mb
    >>> summary = mb.infer("s3://bucket/images/", "s3://bucket/runs/r1", model="demo")
    >>> run = mb.open_run("s3://bucket/runs/r1")
    >>> run.dataset("instances").to_table().to_pandas()
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mrcnn_batch.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_IO_THREADS,
    DEFAULT_MASK_THRESHOLD,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    DEFAULT_REFINE_MASKS,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SHARD_SIZE,
    InputSpec,
    PredictConfig,
    ReadConfig,
    RunConfig,
    local_url,
    local_weights,
)
from mrcnn_batch.encode.refine import check_method
from mrcnn_batch.models.registry import ModelSpec
from mrcnn_batch.models.registry import list_models as _list_models
from mrcnn_batch.run.layout import open_run
from mrcnn_batch.run.preflight import check_settings, check_storage

if TYPE_CHECKING:  # the runner (torch, torchvision) is imported when a run starts: make_config is torch-free
    from mrcnn_batch.run.driver import Executor, RunSummary

__all__ = ["infer", "list_models", "make_config", "make_executor", "open_run"]


def list_models() -> list[ModelSpec]:
    return _list_models()


def make_config(
    input: str,
    output: str,
    *,
    model: str = DEFAULT_MODEL,
    weights: str | None = None,
    image_root: str | None = None,
    storage_options: dict[str, Any] | None = None,
    output_storage_options: dict[str, Any] | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    mask_threshold: float = DEFAULT_MASK_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    rpn_proposals: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    classes: tuple[str, ...] | list[str] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    amp: bool = False,
    channels_last: bool = False,
    refine_masks: str | None = DEFAULT_REFINE_MASKS,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    exif_transpose: bool = True,
    io_threads: int = DEFAULT_IO_THREADS,
    gpu_decode: bool = False,
) -> RunConfig:
    from mrcnn_batch.models.registry import get_spec

    spec = get_spec(model)
    if gpu_decode and device == "cpu":
        raise ValueError("--gpu-decode decodes JPEGs on a CUDA device; --device is cpu")
    check_method(refine_masks)  # None, or "grabcut" with OpenCV installed (a UsageError)
    if rpn_proposals is not None and rpn_proposals < 1:
        raise ValueError(f"rpn_proposals must be at least 1, got {rpn_proposals}")
    storage_options = dict(storage_options or {})
    return RunConfig(
        input=InputSpec(url=local_url(input), image_root=local_url(image_root) if image_root else image_root,
                        storage_options=storage_options),
        output=local_url(output),
        predict=PredictConfig(
            model=model,
            weights=local_weights(weights),
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
            max_detections=max_detections,
            rpn_proposals=rpn_proposals,
            min_size=min_size or spec.default_min_size,
            max_size=max_size or spec.default_max_size,
            classes=tuple(classes),
            batch_size=batch_size,
            device=device,
            amp=amp,
            channels_last=channels_last,
            refine_masks=refine_masks,
        ),
        read=ReadConfig(max_pixels=max_pixels, max_bytes=max_bytes, exif_transpose=exif_transpose, io_threads=io_threads,
                        gpu_decode=gpu_decode),
        shard_size=shard_size,
        output_storage_options=dict(output_storage_options if output_storage_options is not None else storage_options),
    )


def infer(
    input: str,
    output: str,
    *,
    overwrite: bool = False,
    executor: str = "local",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None,
    address: str | None = None,
    max_attempts: int = 3,
    on_plan: Callable[[dict, Any, list[int]], None] | None = None,
    on_commit: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> RunSummary:
    """Run a model over ``input`` into the run directory ``output``; resumes by default.

    ``executor="local"`` runs shards in this process; ``"ray"`` runs a pool of Ray actors
    (``workers``, ``gpus_per_worker``, ``cpus_per_worker``; on the Ray at ``address`` or
    ``RAY_ADDRESS``, else an embedded local one; an initialised Ray is reused).
    ``options`` are those of ``make_config``. The storage options, endpoints and the output
    are checked first (:func:`~mrcnn_batch.run.preflight.check_storage`): a ``UsageError``;
    then a run already in ``output`` made with other settings is refused (``RunRefused``,
    :func:`~mrcnn_batch.run.preflight.check_settings`) before the model loads.
    """
    from mrcnn_batch.run.driver import execute

    config = make_config(input, output, **options)
    check_storage(config)
    check_settings(config, overwrite=overwrite)
    return execute(
        config,
        make_executor(executor, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                      address=address, max_attempts=max_attempts),
        overwrite=overwrite,
        on_plan=on_plan,
        on_commit=on_commit,
    )


def make_executor(
    kind: str,
    *,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None,
    address: str | None = None,
    max_attempts: int = 3,
    verbose: bool = False,
    on_retry: Callable[[int, str], None] | None = None,
    on_session: Callable[[str], None] | None = None,
) -> Executor:
    """The executor named ``kind``: ``"local"`` (in-process) or ``"ray"`` (an actor pool).
    ``on_retry(shard, reason)``: each retry of a shard (Ray); ``on_session(words)``: which Ray."""
    if kind == "local":
        from mrcnn_batch.run.local import run_local

        if workers not in (None, 1) or gpus_per_worker or cpus_per_worker or address:
            raise ValueError("workers, gpus_per_worker, cpus_per_worker and address need executor='ray'")
        return functools.partial(run_local, max_attempts=max_attempts)
    if kind == "ray":
        from mrcnn_batch.run.ray_executor import RayExecutor, RayOptions

        return RayExecutor(RayOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                                      cpus_per_worker=cpus_per_worker, max_attempts=max_attempts, verbose=verbose),
                           on_retry=on_retry, on_session=on_session)
    raise ValueError(f"unknown executor {kind!r}; expected 'local' or 'ray'")
