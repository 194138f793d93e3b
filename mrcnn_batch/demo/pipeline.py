"""The demo, end to end: a held-out synthetic dataset, ``infer`` with the demo model, ``eval``,
overlays, the HTML report, a COCO results export, and pycocotools' own numbers on that export.

Locally everything lives under ``out``: ``heldout/`` (images and COCO annotations), ``run/``
(the run directory, its ``eval/`` and ``report.html``), ``render/`` (overlays) and ``export/``.
With ``s3=True`` the dataset and the run live in a bucket of an embedded S3 endpoint (moto's
server on 127.0.0.1, reached through s3fs exactly as a real S3 would be); the report, overlays
and export are written under ``out``, and the run is copied to ``out/run`` before the endpoint
stops with the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from mrcnn_batch.datasets.shapes import (
    ANNOTATIONS_FILE,
    HELDOUT_SEED,
    IMAGES_DIR,
    OKS_SIGMAS,
    write_dataset,
)
from mrcnn_batch.errors import UsageError

log = logging.getLogger(__name__)

#: Held-out images of the demo: the size of the set the demo model's reference metrics were
#: measured on (``models/weights/demo.json``); the whole demo takes about a minute on 2 CPU cores.
DEFAULT_IMAGES = 300
DEFAULT_EXECUTOR = "ray"
DEMO_BUCKET = "mrcnn-demo"


class DemoIncomplete(RuntimeError):
    """Shards of the demo's run failed (their reasons in the message)."""


@dataclass(frozen=True)
class DemoConfig:
    out: str  # a local directory
    num_images: int = DEFAULT_IMAGES
    s3: bool = False
    executor: str = DEFAULT_EXECUTOR  # "ray" (the embedded local Ray) or "local" (in-process)
    # "local": always a fresh embedded Ray (never a cluster that happens to run on this machine);
    # None: RAY_ADDRESS, else a running local cluster, else a new one (Ray's own rule).
    ray_address: str | None = "local"
    shard_size: int = 25
    samples: int = 6  # overlays rendered (and shown in the report)
    seed: int = HELDOUT_SEED


@dataclass(frozen=True)
class DemoResult:
    dataset: str  # URL of the held-out dataset
    run: str  # URL of the run directory
    local_run: str  # where the run is on this machine (a copy, with s3)
    eval_dir: str
    report: str
    overlays: tuple[str, ...]
    exports: tuple[str, ...]
    metrics: dict[str, dict[str, float]]  # iou type -> named stats
    pycocotools_max_diff: dict[str, float]  # iou type -> max |ours - pycocotools| over the stats
    images_by_status: dict[str, int]
    instances: int
    seconds: dict[str, float] = field(default_factory=dict)  # per step, and "total"
    s3_endpoint: str | None = None


def run_demo(config: DemoConfig, *, on_step: Callable[[str], None] | None = None) -> DemoResult:
    """Run every step of the demo; ``on_step(name)`` is called as each starts."""
    out = os.path.abspath(config.out)
    os.makedirs(out, exist_ok=True)
    with _storage(config, out) as (base, options, endpoint):
        return _run(config, out, base, options, endpoint, on_step or (lambda _: None))


@contextlib.contextmanager
def _storage(config: DemoConfig, out: str) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """Where the dataset and the run live: ``out`` itself, or a bucket on an embedded S3."""
    if not config.s3:
        yield out, {}, None
        return
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise UsageError("demo --s3 runs an embedded S3 endpoint (moto's server), which is not installed: "
                         "pip install 'mrcnn-batch[s3-demo]'") from None

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the embedded server's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint, "key": "demo", "secret": "demo"}
    try:
        import s3fs

        s3fs.S3FileSystem(**options).mkdir(DEMO_BUCKET)
        yield f"s3://{DEMO_BUCKET}", options, endpoint
    finally:
        server.stop()


def _run(config: DemoConfig, out: str, base: str, options: dict[str, Any], endpoint: str | None,
         step: Callable[[str], None]) -> DemoResult:
    import mrcnn_batch.api as api
    from mrcnn_batch.evaluate.distributed import evaluate_run
    from mrcnn_batch.evaluate.groundtruth import load_ground_truth
    from mrcnn_batch.evaluate.outputs import write_outputs
    from mrcnn_batch.export import export_run
    from mrcnn_batch.render import render_run
    from mrcnn_batch.report import write_report
    from mrcnn_batch.run.layout import EVAL_DIR

    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    dataset = posixpath.join(base, "heldout")
    run_url = posixpath.join(base, "run")
    annotations = posixpath.join(dataset, ANNOTATIONS_FILE)

    t = time.perf_counter()
    step("dataset")
    write_dataset(dataset, seed=config.seed, num_images=config.num_images, storage_options=options)
    seconds["dataset"] = time.perf_counter() - t

    t = time.perf_counter()
    step("infer")
    summary = api.infer(annotations, run_url, model="demo", image_root=posixpath.join(dataset, IMAGES_DIR),
                        storage_options=options, shard_size=config.shard_size, overwrite=True,
                        executor=config.executor,
                        **({"address": config.ray_address} if config.executor == "ray" else {}))
    if not summary.complete:
        raise DemoIncomplete(f"demo run {run_url} is incomplete: shards failed: {summary.failed_shards}")
    seconds["infer"] = time.perf_counter() - t

    t = time.perf_counter()
    step("eval")
    iou_types = ("bbox", "segm", "keypoints")
    gt = load_ground_truth(annotations, iou_types=iou_types, storage_options=options)
    workers = None if config.executor == "ray" else 0
    results, _ = evaluate_run(run_url, gt, iou_types=iou_types, storage_options=options, workers=workers)
    eval_dir = posixpath.join(run_url, EVAL_DIR)
    write_outputs(results, eval_dir, storage_options=options,
                  context={"ground_truth": annotations, "predictions": None, "run": run_url,
                           "run_id": summary.run_id, "seconds": round(time.perf_counter() - t, 3)})
    seconds["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    step("render")
    overlays = render_run(run_url, posixpath.join(out, "render"), limit=config.samples,
                          storage_options=options, output_storage_options={})
    seconds["render"] = time.perf_counter() - t

    t = time.perf_counter()
    step("report")
    report = write_report(run_url, posixpath.join(out, "report.html"), storage_options=options, output_storage_options={})
    seconds["report"] = time.perf_counter() - t

    t = time.perf_counter()
    step("export")
    exports = {
        t: export_run(run_url, posixpath.join(out, "export"), format="coco-results", iou_types=(t,),
                      storage_options=options, output_storage_options={})[0]
        for t in iou_types
    }
    step("pycocotools")
    diffs = pycocotools_check(annotations, exports, results, storage_options=options)
    seconds["export"] = time.perf_counter() - t

    local_run = run_url
    if config.s3:
        import fsspec

        step("copy")
        local_run = posixpath.join(out, "run")
        fs, root = fsspec.core.url_to_fs(run_url, **options)
        if os.path.exists(local_run):
            import shutil

            shutil.rmtree(local_run)
        fs.get(root + "/", local_run, recursive=True)
    seconds["total"] = time.perf_counter() - t_start
    return DemoResult(
        dataset=dataset, run=run_url, local_run=local_run,
        eval_dir=posixpath.join(local_run, EVAL_DIR), report=report.removeprefix("file://"),
        overlays=tuple(p.removeprefix("file://") for p in overlays),
        exports=tuple(p.removeprefix("file://") for p in exports.values()),
        metrics={k: r.metrics() for k, r in results.items()}, pycocotools_max_diff=diffs,
        images_by_status=summary.images_by_status, instances=summary.instances,
        seconds={k: round(v, 2) for k, v in seconds.items()}, s3_endpoint=endpoint,
    )


def pycocotools_check(annotations: str, result_files: dict[str, str], results: dict[str, Any], *,
                      storage_options: dict[str, Any]) -> dict[str, float]:
    """pycocotools' ``COCOeval`` on the exported results files: the largest difference of its
    summary stats from ours, per IoU type (0.0: the same numbers)."""
    import json

    import fsspec

    from mrcnn_batch.evaluate.reference import coco_ground_truth, cocoeval

    with fsspec.open(annotations, "rb", **storage_options) as f:
        gt = coco_ground_truth(json.loads(f.read()))
    diffs = {}
    for t, path in result_files.items():
        with fsspec.open(path, "rb") as f:
            dets = json.loads(f.read())
        if not dets:  # loadRes cannot load an empty list; nothing to compare
            diffs[t] = float("nan")
            continue
        ev = cocoeval(gt, dets, t, sigmas=OKS_SIGMAS if t == "keypoints" else None)
        diffs[t] = float(np.max(np.abs(np.asarray(ev.stats) - np.asarray(results[t].stats))))
    return diffs
