"""``mrcnn-batch compare``: does run B beat run A? Both runs' COCO numbers, B - A, and a paired
bootstrap confidence interval of each delta over images.

A command of its own rather than an ``eval --compare`` mode: it takes two inputs where ``eval``
takes one, and its options (replicates, confidence, seed, ``--json``) mean nothing to ``eval``,
whose options (plots, ``--predictions``, the default ``RUN/eval`` output) mean nothing here; so
each help page lists only what applies.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from typing import Annotated

import typer

from mrcnn_batch.cli import EXIT_INCOMPLETE, EXIT_USAGE, app
from mrcnn_batch.cli.common import (
    Address,
    Command,
    KptSigmas,
    StorageOptions,
    Verbose,
    err,
    fail,
    out,
    parse_iou_types,
    parse_kpt_sigmas,
    parse_storage_options,
    say,
    setup_logging,
)
from mrcnn_batch.errors import MrcnnBatchError

_RESULTS_SUFFIXES = (".json", ".json.gz")


@app.command("compare", cls=Command)
def compare_command(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", show_default=False, help="The baseline: a run directory (any fsspec URL), or a COCO results JSON (.json, .json.gz).")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", show_default=False, help="What is compared with it (deltas are B - A): a run directory or a results JSON.")],
    annotations: Annotated[str, typer.Option("--annotations", "-a", metavar="URL", show_default=False, help="COCO ground-truth JSON (any fsspec URL, .gz ok).")] = ...,
    iou_types: Annotated[str | None, typer.Option("--iou-types", metavar="TYPES", help="Comma-separated: bbox,segm,keypoints,boundary. Default: what both inputs provide.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", metavar="N", help="Bootstrap replicates: resamples of the images, each scored for A and B (1,000 take about 50 s per IoU type for two runs of 5,000 images).")] = 1000,
    confidence: Annotated[float, typer.Option("--confidence", metavar="LEVEL", help="Confidence level of the percentile intervals, between 0 and 1.")] = 0.95,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the resampling: the same seed gives the same intervals.")] = 0,
    out_dir: Annotated[str | None, typer.Option("--out", "-o", metavar="DIR", help="Also write compare.json and compare.parquet there (any fsspec URL).")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the comparison as JSON (compare.json's content) instead of tables.")] = False,
    no_categories: Annotated[bool, typer.Option("--no-categories", metavar="", help="Leave the per-category AP table out of the printed tables (kept in --json and --out).")] = False,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", metavar="", help="Compare incomplete runs on the images both processed (marked PARTIAL).")] = False,
    kpt_sigmas: KptSigmas = None,
    drop_unknown_categories: Annotated[bool, typer.Option("--drop-unknown-categories", metavar="", help="Ignore detections of categories absent from the ground truth instead of failing.")] = False,
    match_by: Annotated[str, typer.Option("--match-by", metavar="image_id|file_name", help="Pair the runs' images with the ground truth's by image_id or by file_name (runs planned from a folder or manifest).")] = "image_id",
    workers: Annotated[int | None, typer.Option("--workers", metavar="N", help="Match the runs in N Ray tasks on a private local Ray (default: in this process, no Ray; with --address: the cluster's CPUs).")] = None,
    address: Address = None,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Compare two runs (or results files) on COCO metrics: B - A, with bootstrap confidence intervals."""
    setup_logging(verbose)
    if bootstrap < 1:
        fail(f"--bootstrap must be at least 1 replicate, not {bootstrap}", EXIT_USAGE)
    if not 0 < confidence < 1:
        fail(f"--confidence must be between 0 and 1 (e.g. 0.95), not {confidence}", EXIT_USAGE)
    if seed < 0:
        fail(f"--seed must be a whole number >= 0, not {seed}", EXIT_USAGE)
    types, sigmas = parse_iou_types(iou_types), parse_kpt_sigmas(kpt_sigmas)
    from mrcnn_batch.evaluate.compare import BootstrapConfig
    from mrcnn_batch.evaluate.distributed import MATCH_BY
    from mrcnn_batch.evaluate.errors import EvalInputError, IncompleteRunError

    if match_by not in MATCH_BY:
        fail(f"--match-by must be one of {', '.join(MATCH_BY)}, not {match_by!r}", EXIT_USAGE)
    cfg = BootstrapConfig(replicates=bootstrap, confidence=confidence, seed=seed)
    options = parse_storage_options(storage_options, "--storage-options")
    from mrcnn_batch.config import local_url
    from mrcnn_batch.ray_session import check_job_paths

    try:
        check_job_paths({"RUN_A": run_a, "RUN_B": run_b, "--annotations": annotations, "--out": out_dir})
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    run_a, run_b, annotations, out_dir = (local_url(u) if u else u for u in (run_a, run_b, annotations, out_dir))
    try:
        from mrcnn_batch.run.preflight import check_reachable

        for role, url in (("ground truth", annotations), ("RUN_A", run_a), ("RUN_B", run_b)):
            check_reachable(url, options, role=role)
        from mrcnn_batch.evaluate.distributed import ensure_ray
        from mrcnn_batch.ray_session import ray_address

        if any(not _is_results(u) for u in (run_a, run_b)):
            if workers == 0 or (workers is None and ray_address(address) is None):
                say("Ray: not used: matching in this process (--workers N or --address runs it on Ray)")
                workers = 0
            else:
                say(ensure_ray(workers, address=address))
        cmp, context = _compare(
            run_a, run_b, annotations=annotations, iou_types=types, cfg=cfg, options=options,
            allow_partial=allow_partial, kpt_sigmas=sigmas, workers=workers, match_by=match_by,
            unknown="drop" if drop_unknown_categories else "error",
        )
        if out_dir is not None:
            from mrcnn_batch.evaluate.compare import write_comparison

            write_comparison(cmp, out_dir, context=context, storage_options=options)
    except IncompleteRunError as e:
        fail(str(e), EXIT_INCOMPLETE)
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except (EvalInputError, FileNotFoundError) as e:
        fail(str(e), EXIT_USAGE)
    _print(cmp, context, as_json=as_json, categories=not no_categories)
    if out_dir is not None:
        err.print(f"comparison written to {out_dir}", highlight=False)


def _is_results(url: str) -> bool:
    return url.lower().endswith(_RESULTS_SUFFIXES)


def _compare(run_a, run_b, *, annotations, iou_types, cfg, options, allow_partial, kpt_sigmas, workers, match_by, unknown):
    """Match both inputs once, then compare them (``Comparison``, the JSON document's context)."""
    from mrcnn_batch.evaluate import COCOEvaluator
    from mrcnn_batch.evaluate.compare import compare_evaluators
    from mrcnn_batch.evaluate.distributed import match_run
    from mrcnn_batch.evaluate.errors import EvalInputError
    from mrcnn_batch.evaluate.groundtruth import load_ground_truth
    from mrcnn_batch.evaluate.jsonio import read_json, results_iou_types
    from mrcnn_batch.evaluate.predictions import detections_from_results
    from mrcnn_batch.export.coco import run_iou_types
    from mrcnn_batch.run.layout import open_run

    docs = {u: read_json(u, storage_options=options, what="predictions") for u in (run_a, run_b) if _is_results(u)}
    if iou_types is None:
        provided = [results_iou_types(docs[u]) if u in docs else run_iou_types(open_run(u, storage_options=options))
                    for u in (run_a, run_b)]
        iou_types = tuple(t for t in provided[0] if t in provided[1])
        if not iou_types:
            raise EvalInputError(f"RUN_A provides {', '.join(provided[0])} and RUN_B {', '.join(provided[1])}: "
                                 "nothing in common to compare")
    gt = load_ground_truth(annotations, iou_types=iou_types, storage_options=options)
    t0 = time.perf_counter()
    evs, context = [], {"ground_truth": annotations, "run_a": run_a, "run_b": run_b}
    for side, url in (("a", run_a), ("b", run_b)):
        if url in docs:
            ev = COCOEvaluator(gt, iou_types=iou_types, kpt_sigmas=kpt_sigmas, unknown_categories=unknown)
            dets = {t: detections_from_results(docs[url], gt=gt, iou_type=t, source=url, unknown_categories=unknown)
                    for t in iou_types}
            ev.process(dets, image_ids=gt.image_ids)
        else:
            ev, _ = match_run(url, gt, iou_types=iou_types, storage_options=options, allow_partial=allow_partial,
                              kpt_sigmas=kpt_sigmas, unknown_categories=unknown, workers=workers, match_by=match_by)
            context[f"run_id_{side}"] = open_run(url, storage_options=options).run_meta().run_id
        evs.append(ev)
    matched = time.perf_counter() - t0
    cmp = compare_evaluators(*evs, bootstrap=cfg)
    return replace(cmp, seconds={"match": round(matched, 3), **cmp.seconds}), context


def _print(cmp, context, *, as_json: bool, categories: bool) -> None:
    from mrcnn_batch.evaluate.compare import comparison_document, comparison_lines

    if as_json:
        json.dump(comparison_document(cmp, context=context), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        return
    cfg = cmp.bootstrap
    out.print(f"A: {context['run_a']}\nB: {context['run_b']}", highlight=False, markup=False, soft_wrap=True)
    partial = f"  PARTIAL: {cmp.num_images:,} of {cmp.num_gt_images:,} ground-truth images" if cmp.partial else ""
    out.print(f"{cmp.num_images:,} images, {cfg.replicates:,} paired bootstrap replicates over images (seed {cfg.seed}), "
              f"{cfg.confidence * 100:g}% percentile intervals of B - A{partial}", highlight=False, markup=False,
              soft_wrap=True)
    for t, c in cmp.iou_types.items():
        out.print(f"\n{t}", highlight=False, markup=False)
        for line in comparison_lines(c, cfg, categories=categories):
            out.print(line, highlight=False, markup=False, soft_wrap=True)
    seconds = cmp.seconds
    say(f"matched in {seconds.get('match', 0):.1f} s, bootstrap in {seconds.get('bootstrap', 0):.1f} s")
