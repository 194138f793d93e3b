"""Benchmark: `compare`'s paired bootstrap, on a generated COCO-scale set (default 5,000 images
of 640x480, ~35k ground-truth objects over 80 categories, 100 detections per image for each of
two detectors, B's boxes a little tighter than A's), bbox.

Matching is done once per detector (timed apart); the bootstrap re-accumulates the matches for
every replicate, so its cost depends on the detections, true positives and categories, not on
the IoU type (segm and keypoints cost the same per replicate as bbox once matched).

Baseline (``--baseline N`` replicates): the same replicates the plain way, the matches of every
drawn image repeated once per draw (copies under new, adjacent ids) and accumulated by
``evaluate/accumulate.py`` (pycocotools' accumulation); their ``stats`` are checked equal, bit
for bit, to the bootstrap's.

    python benchmarks/bench_compare.py                       # 5,000 images, 1,000 replicates
    python benchmarks/bench_compare.py --images 500 --replicates 100
    python benchmarks/bench_compare.py --write /tmp/cmp   # and the files for `mrcnn-batch compare`
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def generate(*, images: int, dets_per_image: int, seed: int = 0):
    """Ground truth (a COCO dict) and two detectors' Detections (bbox) on it."""
    from mrcnn_batch.evaluate.predictions import Detections

    rng = np.random.default_rng(seed)
    H, W = 480, 640
    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 81)]
    imgs, anns = [], []
    for img_id in range(1, images + 1):
        imgs.append({"id": img_id, "height": H, "width": W, "file_name": f"{img_id:012d}.jpg"})
        for _ in range(int(rng.poisson(7))):
            s = float(np.exp(rng.uniform(np.log(8), np.log(400))))
            bw, bh = min(W - 1, s * rng.uniform(0.6, 1.6)), min(H - 1, s * rng.uniform(0.6, 1.6))
            x, y = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(rng.integers(1, 81)),
                         "iscrowd": int(rng.random() < 0.01), "bbox": [x, y, bw, bh], "area": bw * bh * 0.8})
    gt_boxes = np.array([a["bbox"] for a in anns])
    gt_img = np.array([a["image_id"] for a in anns])
    gt_cat = np.array([a["category_id"] for a in anns])
    first = np.searchsorted(gt_img, np.arange(1, images + 1))
    count = np.searchsorted(gt_img, np.arange(1, images + 1), side="right") - first

    def detector(noise: float, seed: int) -> Detections:
        r = np.random.default_rng(seed)
        n = images * dets_per_image
        img = np.repeat(np.arange(1, images + 1), dets_per_image)
        near = (r.random(n) < 0.3) & (count[img - 1] > 0)
        src = first[img - 1] + (r.random(n) * np.maximum(count[img - 1], 1)).astype(int)
        src = np.minimum(src, len(anns) - 1)
        s = np.exp(r.uniform(np.log(8), np.log(300), n))
        box = np.stack([r.uniform(0, W - s), r.uniform(0, H - s), s, s * r.uniform(0.5, 2, n)], 1)
        cat = r.integers(1, 81, n)
        g = gt_boxes[src]
        jitter = g + r.normal(0, noise, (n, 4)) * g[:, [2, 3, 2, 3]]
        box = np.where(near[:, None], jitter, box)
        cat = np.where(near & (r.random(n) < 0.8), gt_cat[src], cat)
        box[:, 2:] = np.maximum(box[:, 2:], 2.0)
        score = np.round(np.where(near, r.uniform(0.3, 1.0, n), r.uniform(0.0, 0.7, n)), 3)
        box = box.astype(np.float32).astype(np.float64)
        return Detections("bbox", img.astype(np.int64), cat.astype(np.int64), score, box[:, 2] * box[:, 3], bbox=box)

    return {"images": imgs, "annotations": anns, "categories": cats}, detector(0.10, seed + 1), detector(0.08, seed + 2)


def _baseline(ev, gt, n: int) -> dict:
    """``n`` replicates accumulated the plain way, timed, and checked against the bootstrap's."""
    from mrcnn_batch.evaluate.accumulate import accumulate
    from mrcnn_batch.evaluate.bootstrap import WeightedAccumulator, resample_counts
    from mrcnn_batch.evaluate.match import MatchResult, ground_truth_counts
    from mrcnn_batch.evaluate.summary import stats

    m, p, cats, ids = ev.matches("bbox"), ev.setup.params["bbox"], ev.setup.category_ids["bbox"], gt.image_ids
    counts = ground_truth_counts(gt, params=p, category_ids=cats, image_ids=ids)
    engine = WeightedAccumulator(m, counts, params=p, category_ids=cats, image_ids=ids, summary_only=True)
    weights = next(resample_counts(len(ids), replicates=n, seed=0, chunk=n))  # compare's first n draws
    plain_s, fast_s, equal = 0.0, 0.0, True
    for w in weights:
        t0 = time.perf_counter()
        w_det = w[np.searchsorted(ids, m.image_id)]
        rows = np.repeat(np.arange(len(m)), w_det)
        copy = np.arange(len(rows)) - np.repeat(np.cumsum(w_det) - w_det, w_det)
        dup = MatchResult(iou_type="bbox", image_ids=np.repeat(ids, w) * 64 + np.concatenate([np.arange(k) for k in w]),
                          category_index=m.category_index[rows], image_id=m.image_id[rows] * 64 + copy,
                          rank=m.rank[rows], score=m.score[rows], codes=m.codes[rows],
                          npig=(w[:, None, None] * counts).sum(axis=0))
        plain = stats(accumulate(dup, params=p, category_ids=cats))
        t1 = time.perf_counter()
        fast = engine.replicate_stats(w[None]).stats[0]
        plain_s, fast_s = plain_s + t1 - t0, fast_s + time.perf_counter() - t1
        equal &= bool(np.array_equal(plain, fast))
    return {"baseline_replicates": n, "baseline_per_replicate_ms_one_run": round(1000 * plain_s / n, 1),
            "bootstrap_per_replicate_ms_one_run": round(1000 * fast_s / n, 1), "baseline_stats_equal": equal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "compare.json")
    ap.add_argument("--baseline", type=int, default=3, metavar="N", help="replicates of the plain way (0: none)")
    ap.add_argument("--write", type=Path, default=None, metavar="DIR",
                    help="also write gt.json, a.json and b.json (bbox results) there, for `mrcnn-batch compare`")
    args = ap.parse_args()

    from mrcnn_batch.evaluate import COCOEvaluator
    from mrcnn_batch.evaluate.compare import BootstrapConfig, compare_evaluators
    from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict

    doc, det_a, det_b = generate(images=args.images, dets_per_image=args.dets)
    gt = ground_truth_from_dict(doc, iou_types=("bbox",))
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        (args.write / "gt.json").write_text(json.dumps(doc))
        for name, d in (("a", det_a), ("b", det_b)):
            rows = [{"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
                    for i, c, b, s in zip(d.image_id, d.category_id, d.bbox, d.score)]
            (args.write / f"{name}.json").write_text(json.dumps(rows))
    t0 = time.perf_counter()
    evs = []
    for dets in (det_a, det_b):
        ev = COCOEvaluator(gt, iou_types=("bbox",))
        ev.process(dets, image_ids=gt.image_ids)
        evs.append(ev)
    match_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cmp = compare_evaluators(*evs, bootstrap=BootstrapConfig(replicates=args.replicates))
    total_s = time.perf_counter() - t0
    ap_row = cmp.iou_types["bbox"].metrics[0]
    baseline = _baseline(evs[0], gt, args.baseline) if args.baseline else {}
    result = {
        "images": args.images, "gt_objects": len(doc["annotations"]), "detections_per_run": len(det_a),
        "replicates": args.replicates, "match_both_s": round(match_s, 2), "compare_s": round(total_s, 2),
        "per_replicate_ms_a_and_b": round(1000 * total_s / args.replicates, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **baseline,
        "AP": {"a": ap_row.a, "b": ap_row.b, "delta": ap_row.delta, "interval": [ap_row.low, ap_row.high]},
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
