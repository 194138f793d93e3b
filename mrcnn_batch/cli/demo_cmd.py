"""``mrcnn-batch demo``: the whole pipeline on a generated held-out set, in about a minute."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from mrcnn_batch.cli import EXIT_SHARDS_FAILED, app
from mrcnn_batch.cli.common import Command, Verbose, err, fail, out, setup_logging


@app.command(cls=Command)
def demo(
    out_dir: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Local directory for the dataset, run, report, overlays and export.")] = "mrcnn-demo",
    s3: Annotated[bool, typer.Option("--s3", metavar="", help="Keep the dataset and the run in an embedded S3 endpoint (moto's server) instead of local files.")] = False,
    images: Annotated[int | None, typer.Option("--images", "-n", min=1, metavar="N", help="Held-out images to generate (default: 300, about a minute on 2 CPU cores).")] = None,
    executor: Annotated[str | None, typer.Option("--executor", metavar="ray|local", help="ray (default: actors on a private local Ray) or local (in-process).")] = None,
    verbose: Verbose = False,
) -> None:
    """Generate a held-out dataset, infer with the demo model, evaluate, render and report."""
    from mrcnn_batch.demo.pipeline import (
        DEFAULT_EXECUTOR,
        DEFAULT_IMAGES,
        DemoConfig,
        DemoIncomplete,
        run_demo,
    )

    setup_logging(verbose)
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
