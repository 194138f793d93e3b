"""``mrcnn-batch eval``: COCO metrics of a run (or of a results JSON), exactly pycocotools'."""

from __future__ import annotations

import time
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


def _boundary_ratio(value: float | None) -> float | None:
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"--boundary-dilation-ratio must be a positive number, not {value}")
    return value




@app.command("eval", cls=Command)
def eval_command(
    run: Annotated[str | None, typer.Argument(metavar="RUN", show_default=False, help="Run directory (any fsspec URL). Omit with --predictions.")] = None,
    annotations: Annotated[str, typer.Option("--annotations", "-a", metavar="URL", show_default=False, help="COCO ground-truth JSON (any fsspec URL, .gz ok).")] = ...,
    iou_types: Annotated[str | None, typer.Option("--iou-types", metavar="TYPES", help="Comma-separated: bbox,segm,keypoints,boundary (boundary: segm scored by Boundary IoU). Default: what the model (or the results file) provides.")] = None,
    predictions: Annotated[str | None, typer.Option("--predictions", "-p", metavar="URL", help="A COCO results JSON to evaluate instead of a run (needs --out).")] = None,
    out_dir: Annotated[str | None, typer.Option("--out", "-o", metavar="DIR", help="Where to write metrics and plots (default: RUN/eval).")] = None,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", metavar="", help="Evaluate an incomplete run on its processed images only (marked PARTIAL everywhere).")] = False,
    boundary_dilation_ratio: Annotated[float | None, typer.Option("--boundary-dilation-ratio", metavar="RATIO", help="Boundary IoU's boundary width as a fraction of the image diagonal (default 0.02).")] = None,
    kpt_sigmas: KptSigmas = None,
    drop_unknown_categories: Annotated[bool, typer.Option("--drop-unknown-categories", metavar="", help="Ignore detections of categories absent from the ground truth instead of failing.")] = False,
    match_by: Annotated[str, typer.Option("--match-by", metavar="image_id|file_name", help="Pair the run's images with the ground truth's by image_id (a run planned from the COCO JSON) or by file_name (a run planned from a folder or manifest).")] = "image_id",
    workers: Annotated[int | None, typer.Option("--workers", metavar="N", help="Ray tasks in parallel on a private local Ray (default: in this process, no Ray; with --address: the cluster's CPUs).")] = None,
    address: Address = None,
    storage_options: StorageOptions = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", metavar="", help="Skip the precision-recall PNGs.")] = False,
    tide: Annotated[bool, typer.Option("--tide", metavar="", help="Add TIDE's error analysis of bbox and segm (equal to tidecv): the dAP of each error type and the most frequent confusions, printed after the summary and written into metrics.json.")] = False,
    lvis: Annotated[bool, typer.Option("--lvis", metavar="", help="LVIS's federated evaluation of bbox and segm (equal to the lvis package) instead of COCO's: the ground truth's neg_category_ids, not_exhaustive_category_ids and frequency decide; AP, APr/APc/APf, AR@300.")] = False,
    verbose: Verbose = False,
) -> None:
    """Evaluate a run's detections (or a results JSON) against COCO ground truth."""
    from mrcnn_batch.evaluate.errors import EvalInputError, IncompleteRunError

    setup_logging(verbose)
    if (run is None) == (predictions is None):
        fail("give either a RUN directory or --predictions FILE (not both)", EXIT_USAGE)
    from mrcnn_batch.evaluate.distributed import MATCH_BY

    if match_by not in MATCH_BY:
        fail(f"--match-by must be one of {', '.join(MATCH_BY)}, not {match_by!r}", EXIT_USAGE)
    if predictions is not None and match_by != "image_id":
        fail("--match-by applies to a run; a results file names the ground truth's image ids", EXIT_USAGE)
    if predictions is not None and out_dir is None:
        fail("--predictions needs --out DIR for the metrics", EXIT_USAGE)
    if lvis and tide:
        fail("--tide analyses a COCO evaluation; --lvis replaces it: give one of them", EXIT_USAGE)
    options = parse_storage_options(storage_options, "--storage-options")
    from mrcnn_batch.config import local_url
    from mrcnn_batch.ray_session import check_job_paths

    try:
        check_job_paths({"RUN": run, "--annotations": annotations, "--predictions": predictions, "--out": out_dir})
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)

    # absolute before any Ray task (working in another folder) reads them
    run, annotations, predictions, out_dir = (local_url(u) if u else u for u in (run, annotations, predictions, out_dir))
    try:
        from mrcnn_batch.run.preflight import check_reachable

        for role, url in (("ground truth", annotations), ("predictions", predictions), ("run", run)):
            if url is not None:  # storage options and endpoints, before minutes of retries
                check_reachable(url, options, role=role)
        from mrcnn_batch.evaluate.distributed import ensure_ray
        from mrcnn_batch.ray_session import ray_address

        if lvis:
            results, target = _evaluate_lvis(
                run=run, annotations=annotations, iou_types=parse_iou_types(iou_types), predictions=predictions,
                out_dir=out_dir, allow_partial=allow_partial, unknown="drop" if drop_unknown_categories else "error",
                options=options, match_by=match_by,
            )
            _print_lvis(results, target)
            return
        if workers == 0 or (workers is None and ray_address(address) is None):
            say("Ray: not used: matching in this process (--workers N or --address runs it on Ray)")
            workers = 0
        else:
            say(ensure_ray(workers, address=address))
        results, context, target, analysis = _evaluate(
            run=run, annotations=annotations, iou_types=parse_iou_types(iou_types), predictions=predictions,
            out_dir=out_dir, allow_partial=allow_partial, kpt_sigmas=parse_kpt_sigmas(kpt_sigmas),
            unknown="drop" if drop_unknown_categories else "error", workers=workers, options=options,
            plots=not no_plots, match_by=match_by, boundary_ratio=_boundary_ratio(boundary_dilation_ratio),
            tide=tide,
        )
    except IncompleteRunError as e:
        fail(str(e), EXIT_INCOMPLETE)
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except (EvalInputError, FileNotFoundError) as e:
        fail(str(e), EXIT_USAGE)
    for t, r in results.items():
        out.print(f"[bold]{t}[/]" + (f"  [bold yellow]PARTIAL: {r.num_images} of {r.num_gt_images} images[/]" if r.partial else ""))
        for line in r.lines:
            out.print(line, highlight=False, markup=False)
        if t in analysis:
            from mrcnn_batch.evaluate.tide import tide_lines

            for line in ["", *tide_lines(analysis[t])]:
                out.print(line, highlight=False, markup=False, soft_wrap=True)
    if context.get("notice"):
        err.print(f"[bold yellow]warning:[/] {context['notice']}", highlight=False)
    err.print(f"metrics written to {target}", highlight=False)


def _evaluate(*, run, annotations, iou_types, predictions, out_dir, allow_partial, kpt_sigmas, unknown, workers, options, plots,
              match_by="image_id", boundary_ratio=None, tide=False):
    import posixpath

    from mrcnn_batch.evaluate.distributed import evaluate_detections, evaluate_run
    from mrcnn_batch.evaluate.errors import EvalInputError
    from mrcnn_batch.evaluate.groundtruth import load_ground_truth
    from mrcnn_batch.evaluate.jsonio import read_results, results_iou_types
    from mrcnn_batch.evaluate.outputs import metrics_document, write_outputs
    from mrcnn_batch.evaluate.params import BOUNDARY_DILATION_RATIO
    from mrcnn_batch.evaluate.predictions import detections_from_results
    from mrcnn_batch.evaluate.tide import tide_errors, tide_run
    from mrcnn_batch.run.layout import EVAL_DIR, open_run

    t0 = time.perf_counter()
    if predictions is not None:
        doc = read_results(predictions, storage_options=options)
        if iou_types is None:
            iou_types = results_iou_types(doc)
        tide_types = _tide_types(iou_types) if tide else ()
        gt = load_ground_truth(annotations, iou_types=iou_types, storage_options=options)
        params = _params(iou_types, boundary_ratio)
        dets = {t: detections_from_results(doc, gt=gt, iou_type=t, source=predictions, unknown_categories=unknown) for t in iou_types}
        del doc
        results = evaluate_detections(dets, gt, kpt_sigmas=kpt_sigmas, unknown_categories=unknown, workers=workers,
                                      params=params)
        context = {"ground_truth": annotations, "predictions": predictions, "run": None}
        target = out_dir
        analysis = {t: tide_errors(gt, dets[t]) for t in tide_types}
    else:
        rd = open_run(run, storage_options=options)
        if iou_types is None:
            from mrcnn_batch.export.coco import run_iou_types

            iou_types = run_iou_types(rd)
        tide_types = _tide_types(iou_types) if tide else ()
        gt = load_ground_truth(annotations, iou_types=iou_types, storage_options=options)
        params = _params(iou_types, boundary_ratio)
        results, scope = evaluate_run(
            run, gt, iou_types=iou_types, storage_options=options, allow_partial=allow_partial,
            kpt_sigmas=kpt_sigmas, unknown_categories=unknown, workers=workers, match_by=match_by, params=params,
        )
        context = {"ground_truth": annotations, "predictions": None, "run": run, "match_by": match_by,
                   "run_id": rd.run_meta().run_id, "missing_images": scope.missing_images,
                   "failed_images": scope.failed_images, "uncommitted_shards": scope.uncommitted_shards}
        target = out_dir or posixpath.join(run.rstrip("/"), EVAL_DIR)
        analysis = tide_run(run, gt, iou_types=tide_types, storage_options=options, allow_partial=allow_partial,
                            unknown_categories=unknown, match_by=match_by) if tide_types else {}
    if not results:
        raise EvalInputError("nothing was evaluated")
    if "boundary" in results:
        context["boundary_dilation_ratio"] = boundary_ratio or BOUNDARY_DILATION_RATIO
    context["seconds"] = round(time.perf_counter() - t0, 3)
    write_outputs(results, target, context=context, storage_options=options, plots=plots, tide=analysis)
    return results, metrics_document(results, context=context, tide=analysis), target, analysis


def _evaluate_lvis(*, run, annotations, iou_types, predictions, out_dir, allow_partial, unknown, options, match_by):
    """LVIS's federated evaluation (evaluate/lvis.py), in this process; outputs written."""
    import posixpath

    from mrcnn_batch.evaluate.jsonio import read_results, results_iou_types
    from mrcnn_batch.evaluate.lvis import (
        LVIS_IOU_TYPES,
        load_lvis_ground_truth,
        lvis_evaluate,
        lvis_run,
    )
    from mrcnn_batch.evaluate.outputs import write_lvis_outputs
    from mrcnn_batch.evaluate.predictions import detections_from_results
    from mrcnn_batch.run.layout import EVAL_DIR, open_run

    t0 = time.perf_counter()
    doc = read_results(predictions, storage_options=options) if predictions is not None else None
    if iou_types is None:
        if doc is not None:
            found = results_iou_types(doc)
        else:
            from mrcnn_batch.export.coco import run_iou_types

            found = run_iou_types(open_run(run, storage_options=options))
        iou_types = tuple(t for t in found if t in LVIS_IOU_TYPES)
    if not iou_types or any(t not in LVIS_IOU_TYPES for t in iou_types):
        from mrcnn_batch.evaluate.errors import EvalInputError

        raise EvalInputError(f"--lvis evaluates {' and '.join(LVIS_IOU_TYPES)}; asked for: {', '.join(iou_types) or 'nothing'}")
    lgt = load_lvis_ground_truth(annotations, iou_types=iou_types, storage_options=options)
    if doc is not None:
        results = {t: lvis_evaluate(lgt, detections_from_results(doc, gt=lgt.gt, iou_type=t, source=predictions,
                                                                 unknown_categories=unknown)) for t in iou_types}
        context = {"ground_truth": annotations, "predictions": predictions, "run": None}
        target = out_dir
    else:
        results = lvis_run(run, lgt, iou_types=iou_types, storage_options=options, allow_partial=allow_partial,
                           unknown_categories=unknown, match_by=match_by)
        context = {"ground_truth": annotations, "predictions": None, "run": run, "match_by": match_by,
                   "run_id": open_run(run, storage_options=options).run_meta().run_id}
        target = out_dir or posixpath.join(run.rstrip("/"), EVAL_DIR)
    context["evaluation"] = "lvis"
    context["seconds"] = round(time.perf_counter() - t0, 3)
    write_lvis_outputs(results, target, context=context, storage_options=options)
    return results, target


def _print_lvis(results, target):
    from mrcnn_batch.evaluate.lvis import REFERENCE

    for t, r in results.items():
        part = f"  [bold yellow]PARTIAL: {r.num_images} of {r.num_gt_images} images[/]" if r.partial else ""
        out.print(f"[bold]{t}[/] (LVIS federated, {REFERENCE}'s numbers)" + part)
        for line in r.lines:
            out.print(line, highlight=False, markup=False, soft_wrap=True)
    err.print(f"metrics written to {target}", highlight=False)


def _tide_types(iou_types):
    """The evaluated types TIDE analyses (bbox, segm); refused when there is none."""
    from mrcnn_batch.evaluate.errors import EvalInputError
    from mrcnn_batch.evaluate.tide import TIDE_IOU_TYPES

    types = tuple(t for t in iou_types if t in TIDE_IOU_TYPES)
    if not types:
        raise EvalInputError(f"--tide analyses {' and '.join(TIDE_IOU_TYPES)}; the evaluated types are {', '.join(iou_types)}")
    return types


def _params(iou_types, boundary_ratio):
    """Non-default evaluation parameters: the boundary width, when given."""
    from mrcnn_batch.evaluate.params import EvalParams

    if boundary_ratio is None or "boundary" not in iou_types:
        return None
    return {"boundary": EvalParams(iou_type="boundary", boundary_dilation_ratio=boundary_ratio)}

