"""``--refine-masks grabcut`` against the default, side by side in one run: does re-cutting the
mask edges with GrabCut make them closer to the truth, and what does it cost?

The demo model over the demo's held-out synthetic images (exact masks: a fair test of edges),
``infer`` in-process twice (without and with refinement), then:

* the project's own ``eval``: segm AP, AP50, AP75 (and bbox AP, which must not move);
* the mean boundary F-score (DAVIS' F measure): per matched instance, the boundary pixels of the
  predicted and the true mask, precision and recall of each within ``--tolerance`` px (and, a
  stricter figure, 1 px) of the other's, F = 2PR / (P + R); instances matched to the ground truth greedily in score order at
  mask IoU >= 0.5 within a category, on the unrefined masks, so both settings are scored on the
  same pairs (the image's edge is no object's edge: a mask cut by it has no boundary there);
* the mean mask IoU of those pairs;
* CPU ms of refinement per instance: the refinement run again on the unrefined run's rows
  (``encode.refine.refine_rles``, one thread, ``time.process_time``), with its outcomes, and a
  check that it gives the refined run's masks.

    .venv/bin/python benchmarks/bench_refine.py --images 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

import mrcnn_batch as mb
from mrcnn_batch.datasets.shapes import HELDOUT_SEED, write_dataset
from mrcnn_batch.encode.refine import RefineStats, refine_rles
from mrcnn_batch.evaluate.distributed import evaluate_run
from mrcnn_batch.evaluate.groundtruth import load_ground_truth

IOU_TYPES = ("bbox", "segm")
MATCH_IOU = 0.5


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 4-neighbour outside it (the image's edge continues the mask)."""
    m = mask.astype(np.uint8)
    inner = cv2.erode(m, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8), borderType=cv2.BORDER_REPLICATE)
    return (m > 0) & (inner == 0)


def boundary_f(pred: np.ndarray, truth: np.ndarray, *, tolerance: int) -> float:
    """DAVIS' F measure of two masks' boundaries, with a disc of ``tolerance`` px."""
    bp, bt = boundary(pred), boundary(truth)
    if not bp.any() and not bt.any():
        return 1.0
    if not bp.any() or not bt.any():
        return 0.0
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    near_t = cv2.dilate(bt.astype(np.uint8), disc) > 0
    near_p = cv2.dilate(bp.astype(np.uint8), disc) > 0
    precision = np.count_nonzero(bp & near_t) / np.count_nonzero(bp)
    recall = np.count_nonzero(bt & near_p) / np.count_nonzero(bt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def decode(rle: dict) -> np.ndarray:
    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts})


def match(preds: list[dict], truths: list[dict]) -> list[tuple[int, int]]:
    """(prediction index, truth index) pairs: greedy in score order, same category, IoU >= 0.5."""
    pairs, taken = [], set()
    for i in sorted(range(len(preds)), key=lambda i: -preds[i]["score"]):
        best, best_iou = None, MATCH_IOU
        for j, t in enumerate(truths):
            if j in taken or t["category_id"] != preds[i]["category_id"]:
                continue
            iou = mask_utils.iou([preds[i]["rle"]], [t["rle"]], [0])[0, 0]
            if iou >= best_iou:
                best, best_iou = j, iou
        if best is not None:
            taken.add(best)
            pairs.append((i, best))
    return pairs


def instances_by_image(run: str) -> dict[int, list[dict]]:
    rows = mb.open_run(run).read_table("instances").to_pylist()
    out = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["image_id"], r["instance_id"])):
        rle = {"size": list(r["mask"]["size"]), "counts": r["mask"]["counts"].encode("ascii")}
        out[r["image_id"]].append({**r, "rle": rle})
    return out


def edge_scores(plain: dict, refined: dict, coco: dict, *, tolerance: int) -> dict[str, float]:
    """Mean boundary F at ``tolerance`` and at 1 px, and mean mask IoU, of each setting."""
    truths = defaultdict(list)
    for a in coco["annotations"]:
        truths[a["image_id"]].append({"category_id": a["category_id"], "rle": a["segmentation"]})
    scores = defaultdict(list)
    for image_id, preds in plain.items():
        gts = truths.get(image_id, [])
        for i, j in match(preds, gts):
            truth = decode(gts[j]["rle"])
            for name, rows in (("default", preds), ("grabcut", refined[image_id])):
                pred = decode(rows[i]["rle"])
                scores[f"boundary_F_{name}"].append(boundary_f(pred, truth, tolerance=tolerance))
                scores[f"boundary_F_1px_{name}"].append(boundary_f(pred, truth, tolerance=1))
                scores[f"mask_IoU_{name}"].append(np.count_nonzero(pred & truth) / max(1, np.count_nonzero(pred | truth)))
    return {"pairs": len(scores["boundary_F_default"]), **{k: float(np.mean(v)) for k, v in scores.items()}}


def time_refinement(plain: dict, refined: dict, coco: dict, images: Path) -> dict:
    """CPU time of the refinement alone, run again on the unrefined rows (one thread)."""
    files = {im["id"]: images / im["file_name"] for im in coco["images"]}
    stats, seconds, n, same = RefineStats(), 0.0, 0, 0
    for image_id, rows in plain.items():
        pixels = np.asarray(Image.open(files[image_id]).convert("RGB"))
        rles = [{"size": r["rle"]["size"], "counts": r["mask"]["counts"]} for r in rows]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)], np.float32)
        areas = np.array([r["area"] for r in rows], np.int64)
        t = time.process_time()
        out, _, s = refine_rles(pixels, rles, areas, boxes)
        seconds += time.process_time() - t
        stats.include(s)
        n += len(rows)
        same += sum(o["counts"] == r["mask"]["counts"] for o, r in zip(out, refined[image_id]))
    return {"instances": n, "ms_per_instance": 1000 * seconds / max(1, n), "outcomes": vars(stats),
            "same_as_refined_run": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--tolerance", type=int, default=2, help="boundary F tolerance, px")
    ap.add_argument("--json", default="benchmarks/results/refine.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mrcnn_refine_"))
    coco = write_dataset(str(work / "data"), seed=HELDOUT_SEED, num_images=args.images)
    ann, images = str(work / "data" / "annotations.json"), work / "data" / "images"
    gt = load_ground_truth(ann, iou_types=IOU_TYPES)
    common = {"image_root": str(images), "model": "demo", "shard_size": max(1, args.images // 4), "device": "cpu",
              "overwrite": True}
    mb.infer(ann, str(work / "warm-up"), **{**common, "shard_size": 4}, refine_masks="grabcut")  # loads

    runs, rows = {}, []
    for name, switches in (("default", {}), ("grabcut", {"refine_masks": "grabcut"})):
        out = str(work / name)
        wall, cpu = time.perf_counter(), time.process_time()
        summary = mb.infer(ann, out, **common, **switches)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert summary.complete
        res, _ = evaluate_run(out, gt, iou_types=IOU_TYPES, workers=0)
        runs[name] = instances_by_image(out)
        rows.append({"setting": name, "infer_wall_s": wall, "infer_cpu_s": cpu, "instances": summary.instances,
                     **{f"segm_{k}": float(res["segm"].stats[i]) for i, k in enumerate(("AP", "AP50", "AP75"))},
                     "bbox_AP": float(res["bbox"].stats[0])})
    edges = edge_scores(runs["default"], runs["grabcut"], coco, tolerance=args.tolerance)
    timing = time_refinement(runs["default"], runs["grabcut"], coco, images)
    for r in rows:
        for k in ("boundary_F", "boundary_F_1px", "mask_IoU"):
            r[k] = edges[f"{k}_{r['setting']}"]

    print(f"{args.images} held-out images, demo model, CPU; boundary F at {args.tolerance} px over "
          f"{edges['pairs']} matched instances (the same pairs for both)")
    cols = ("segm_AP", "segm_AP50", "segm_AP75", "boundary_F", "boundary_F_1px", "mask_IoU", "bbox_AP",
            "infer_wall_s", "infer_cpu_s")
    print(f"{'setting':10s}" + "".join(f"{c:>15s}" for c in cols))
    for r in rows:
        print(f"{r['setting']:10s}" + "".join(f"{r[c]:15.1f}" if c.endswith("_s") else f"{r[c]:15.4f}" for c in cols))
    base, new = rows
    print("change    " + "".join(f"{new[c] / base[c]:14.2f}x" if c.endswith("_s") else f"{new[c] - base[c]:+15.4f}"
                                 for c in cols))
    print(f"refinement: {timing['ms_per_instance']:.2f} CPU ms per instance (one thread) over {timing['instances']} "
          f"instances; outcomes {timing['outcomes']}; the same masks as the refined run: "
          f"{timing['same_as_refined_run']} of {timing['instances']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"images": args.images, "tolerance_px": args.tolerance, "rows": rows,
                                           "edges": edges, "refinement": timing}, indent=2))


if __name__ == "__main__":
    main()
