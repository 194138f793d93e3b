"""Benchmark: COCO evaluation wall time, CPU time and peak memory, mrcnn-batch vs pycocotools,
faster-coco-eval, hotcoco and ultrafast-pycocotools (the last two: `pip install -e '.[bench]'`;
a tool that is not installed is left out, said on stderr), on a generated COCO-scale set (default 5,000 images of 640x480, ~35k
ground-truth objects over 80 categories with ~1% crowds, 100 detections per image), bbox and segm;
``--iou-types keypoints`` measures a people set of the same images (COCO's 17 keypoints, ~3
people per image, some unlabelled, 20 detections per image).

Each measurement runs in a fresh subprocess (peak RSS = that process's ``ru_maxrss``; for Ray,
the driver's, plus the workers' summed peaks) and counts everything from the files on disk to
the summary: loading ground truth and predictions, matching, accumulating, summarising.
mrcnn-batch is measured from the results JSON (``--predictions``) and from a run directory
(Parquet shards, as ``infer`` writes them), with Ray started beforehand (its start-up is
reported apart) and with ``workers=0`` (in-process). Every tool's ``stats`` are checked equal.
``--iou-types ...,boundary`` adds Boundary IoU on the segm results (faster-coco-eval and
mrcnn-batch only: pycocotools has none); ``cpu_s`` counts every thread's CPU time.

    python benchmarks/bench_eval.py                      # full size; writes benchmarks/results/eval.json
    python benchmarks/bench_eval.py --images 500 --quick # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the run-directory writer of the tests


def generate(out: Path, *, images: int, dets_per_image: int, seed: int = 0) -> None:
    """gt.json, bbox.json, segm.json and a run directory ``run/`` under ``out``."""
    from pycocotools import mask as mask_utils

    from eval_fixtures import write_run

    rng = np.random.default_rng(seed)
    H, W = 480, 640
    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 81)]
    imgs, anns, res = [], [], []
    aid = 1
    for img_id in range(1, images + 1):
        imgs.append({"id": img_id, "height": H, "width": W, "file_name": f"{img_id:012d}.jpg"})
        n = int(rng.poisson(7))
        gts = []
        for _ in range(n):
            s = float(np.exp(rng.uniform(np.log(8), np.log(400))))
            bw, bh = min(W - 1, s * rng.uniform(0.6, 1.6)), min(H - 1, s * rng.uniform(0.6, 1.6))
            x, y = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
            poly = [x, y, x + bw, y + bh * 0.2, x + bw * 0.8, y + bh, x, y + bh * 0.7]
            crowd = int(rng.random() < 0.01)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], H, W))
            a = {"id": aid, "image_id": img_id, "category_id": int(rng.integers(1, 81)), "iscrowd": crowd,
                 "bbox": [round(float(v), 2) for v in (x, y, bw, bh)], "area": float(mask_utils.area(rle)),
                 "segmentation": {"size": [H, W], "counts": rle["counts"].decode()} if crowd else [[round(float(v), 2) for v in poly]]}
            aid += 1
            gts.append(a)
        anns += gts
        for _ in range(dets_per_image):
            if gts and rng.random() < 0.3:
                g = gts[int(rng.integers(len(gts)))]
                x, y, bw, bh = (v + rng.normal(0, 0.1) * sc for v, sc in zip(g["bbox"], g["bbox"][2:] * 2))
                cat = g["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 81))
            else:
                s = float(np.exp(rng.uniform(np.log(8), np.log(300))))
                bw, bh, x, y = s, s * rng.uniform(0.5, 2), rng.uniform(0, W - s), rng.uniform(0, H - s)
                cat = int(rng.integers(1, 81))
            bw, bh = max(2.0, bw), max(2.0, bh)
            x, y = min(max(x, 0), W - 2), min(max(y, 0), H - 2)
            poly = [x, y, x + bw, y + bh * 0.1, x + bw * 0.9, y + bh, x + bw * 0.1, y + bh * 0.8]
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], H, W))
            res.append({"image_id": img_id, "category_id": cat, "score": _f32(round(float(rng.random()), 3)),
                        "bbox": [_f32(round(float(v), 2)) for v in (x, y, bw, bh)],
                        "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}})
    out.mkdir(parents=True, exist_ok=True)
    (out / "gt.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    (out / "bbox.json").write_text(json.dumps([{k: r[k] for k in ("image_id", "category_id", "score", "bbox")} for r in res]))
    (out / "segm.json").write_text(json.dumps([{k: r[k] for k in ("image_id", "category_id", "score", "segmentation")} for r in res]))
    ids = list(range(1, images + 1))
    shards = [ids[i:i + 256] for i in range(0, images, 256)]
    # scores and boxes are float32 values, so the run's tables hold exactly the JSON's numbers
    write_run(out / "run", {"images": imgs, "categories": cats}, res, shards=shards,
              model={"name": "bench", "has_masks": True, "has_keypoints": False})


def generate_keypoints(out: Path, *, images: int, dets_per_image: int = 20, seed: int = 0) -> None:
    """``kp/gt.json`` (people with COCO's 17 keypoints, some unlabelled, ~1% crowds),
    ``kp/keypoints.json`` (``dets_per_image`` people per image, a third near an object) and ``kp/run``."""
    from eval_fixtures import write_run

    rng = np.random.default_rng(seed + 1)
    H, W, K = 480, 640, 17
    cats = [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(K)], "skeleton": []}]
    imgs, anns, res = [], [], []
    aid = 1
    for img_id in range(1, images + 1):
        imgs.append({"id": img_id, "height": H, "width": W, "file_name": f"{img_id:012d}.jpg"})
        gts = []
        for _ in range(int(rng.poisson(3))):
            bw, bh = rng.uniform(20, 200), rng.uniform(40, 400)
            x, y = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
            kx, ky = x + rng.uniform(0, bw, K), y + rng.uniform(0, bh, K)
            v = rng.choice([0, 1, 2], K, p=[0.3, 0.2, 0.5]) * (rng.random() > 0.05)  # some people unlabelled
            kps = np.stack([np.where(v > 0, kx, 0), np.where(v > 0, ky, 0), v], 1).round(1).reshape(-1)
            a = {"id": aid, "image_id": img_id, "category_id": 1, "iscrowd": int(rng.random() < 0.01),
                 "bbox": [round(float(t), 2) for t in (x, y, bw, bh)], "area": round(float(bw * bh * 0.6), 2),
                 "keypoints": [float(t) if i % 3 < 2 else int(t) for i, t in enumerate(kps)], "num_keypoints": int((v > 0).sum())}
            aid += 1
            gts.append(a)
        anns += gts
        for _ in range(dets_per_image):
            if gts and rng.random() < 0.35:
                g = gts[int(rng.integers(len(gts)))]
                x, y, bw, bh = g["bbox"]
                kx = np.array(g["keypoints"][0::3]) + rng.normal(0, 0.05 * bw, K)
                ky = np.array(g["keypoints"][1::3]) + rng.normal(0, 0.05 * bh, K)
                kx = np.where(np.array(g["keypoints"][2::3]) > 0, kx, x + rng.uniform(0, bw, K))
            else:
                bw, bh = rng.uniform(20, 200), rng.uniform(40, 400)
                x, y = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
                kx, ky = x + rng.uniform(0, bw, K), y + rng.uniform(0, bh, K)
            kps = np.stack([kx, ky, np.ones(K)], 1).reshape(-1)
            res.append({"image_id": img_id, "category_id": 1, "score": _f32(round(float(rng.random()), 3)),
                        "keypoints": [_f32(round(float(t), 2)) for t in kps],
                        "bbox": [_f32(round(float(t), 2)) for t in (kx.min(), ky.min(), kx.max() - kx.min(), ky.max() - ky.min())]})
    kp = out / "kp"
    kp.mkdir(parents=True, exist_ok=True)
    (kp / "gt.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    (kp / "keypoints.json").write_text(json.dumps([{k: r[k] for k in ("image_id", "category_id", "score", "keypoints")} for r in res]))
    ids = list(range(1, images + 1))
    write_run(kp / "run", {"images": imgs, "categories": cats}, res, shards=[ids[i:i + 256] for i in range(0, images, 256)],
              kind="keypoints", model={"name": "bench", "has_masks": False, "has_keypoints": True})


# the other evaluators: tool name -> the module it imports
OTHERS = {"pycocotools": "pycocotools", "faster-coco-eval": "faster_coco_eval", "hotcoco": "hotcoco",
          "ultrafast-pycocotools": "ultrafast_pycocotools"}


def _installed(tool: str) -> bool:
    import importlib.util

    return tool not in OTHERS or importlib.util.find_spec(OTHERS[tool]) is not None


def _f32(v: float) -> float:
    return float(np.float32(v))


def measure(tool: str, iou_type: str, data: Path, workers: int) -> dict:
    """One measurement, in this (fresh) process."""
    base = data / "kp" if iou_type == "keypoints" else data  # the people set
    gt_file, dt_file = str(base / "gt.json"), str(base / f"{'segm' if iou_type == 'boundary' else iou_type}.json")
    extra: dict = {}
    if tool in OTHERS:
        if tool == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval as Eval
        elif tool == "faster-coco-eval":
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as Eval
        elif tool == "hotcoco":  # Rust; pycocotools' API
            from hotcoco import COCO
            from hotcoco import COCOeval as Eval
        else:  # ultrafast-pycocotools: Rust, multithreaded; pycocotools' API
            from ultrafast_pycocotools import COCO
            from ultrafast_pycocotools import COCOeval as Eval
        t0, c0 = time.perf_counter(), _cpu_s()
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(gt_file)
            dt = gt.loadRes(dt_file)
            e = Eval(gt, dt, iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        stats = [float(x) for x in e.stats][:12]
    else:
        from mrcnn_batch.evaluate.distributed import ensure_ray, evaluate_detections, evaluate_run

        global _warm
        from mrcnn_batch.evaluate.groundtruth import load_ground_truth
        from mrcnn_batch.evaluate.predictions import load_results_json

        if workers:
            t0 = time.perf_counter()
            ensure_ray(workers)
            import ray

            _warm = ray.remote(num_cpus=1)(_warm_impl)
            ray.get([_warm.remote() for _ in range(2 * workers)])  # workers up, modules imported
            extra["ray_start_s"] = round(time.perf_counter() - t0, 2)
        t0, c0 = time.perf_counter(), _cpu_s()
        gt = load_ground_truth(gt_file, iou_types=(iou_type,))
        if tool == "mrcnn-batch-json":
            dets = load_results_json(dt_file, gt=gt, iou_type=iou_type)
            out = evaluate_detections({iou_type: dets}, gt, workers=workers)
        else:
            out, _ = evaluate_run(str(base / "run"), gt, iou_types=(iou_type,), workers=workers)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        stats = [float(x) for x in out[iou_type].stats]
        if workers:
            import ray

            extra["worker_peak_rss_mib"] = _ray_worker_rss()
    peak = _vm_hwm_mib()
    return {"tool": tool, "iou_type": iou_type, "workers": workers, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mib": round(peak), "stats": stats, **extra}


def _cpu_s() -> float:
    """CPU seconds of this process, all its threads (not Ray's workers)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _vm_hwm_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_impl() -> int:
    import mrcnn_batch.evaluate.distributed  # noqa: F401  (the package imports torch: ~2 s)

    time.sleep(0.2)
    return os.getpid()


def _ray_worker_rss() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    total = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::") and "IDLE" not in cmd or cmd.startswith("ray::IDLE"):
            with contextlib.suppress(Exception):
                total += p.memory_info().rss
    return round(total / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--data", type=Path, default=None, help="where the generated set lives (kept, reused)")
    ap.add_argument("--iou-types", default="bbox,segm")
    ap.add_argument("--tools", default="pycocotools,faster-coco-eval,hotcoco,ultrafast-pycocotools,mrcnn-batch-json,mrcnn-batch-run")
    ap.add_argument("--workers", default="2,0", help="worker counts for mrcnn-batch")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "eval.json")
    ap.add_argument("--measure", nargs=3, metavar=("TOOL", "IOU_TYPE", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="skip pycocotools (slow)")
    args = ap.parse_args()
    data = args.data or Path(f"/tmp/mrcnn_batch_bench_eval_{args.images}_{args.dets}")
    if args.measure:
        tool, t, w = args.measure
        print(json.dumps(measure(tool, t, data, int(w))))
        return
    if not (data / "run" / "_SUCCESS").exists():
        t0 = time.perf_counter()
        generate(data, images=args.images, dets_per_image=args.dets)
        print(f"generated {data} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    if "keypoints" in args.iou_types.split(",") and not (data / "kp" / "run" / "_SUCCESS").exists():
        generate_keypoints(data, images=args.images)
    gt = json.loads((data / "gt.json").read_text())
    info = {"images": len(gt["images"]), "gt_objects": len(gt["annotations"]),
            "crowd": sum(a["iscrowd"] for a in gt["annotations"]), "detections": args.images * args.dets,
            "cpus": os.cpu_count()}
    del gt
    print(json.dumps(info), file=sys.stderr)
    rows = []
    tools = [t for t in args.tools.split(",") if not (args.quick and t == "pycocotools")]
    for t in [t for t in tools if not _installed(t)]:
        print(f"{t} is not installed: left out (pip install -e '.[bench]')", file=sys.stderr)
        tools.remove(t)
    for t in args.iou_types.split(","):
        for tool in tools:
            if t == "boundary" and tool in ("pycocotools", "hotcoco", "ultrafast-pycocotools"):
                continue  # no boundary IoU there
            for w in ([int(x) for x in args.workers.split(",")] if tool.startswith("mrcnn") else [0]):
                cmd = [sys.executable, __file__, "--images", str(args.images), "--dets", str(args.dets),
                       "--data", str(data), "--measure", tool, t, str(w)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                rows.append(r)
                print(f"{t:5s} {tool:21s} workers={w}  wall {r['wall_s']:8.2f}s  CPU {r['cpu_s']:8.2f}s  peak RSS {r['peak_rss_mib']:6d} MiB"
                      + (f"  (Ray start {r['ray_start_s']}s, workers' RSS {r.get('worker_peak_rss_mib')} MiB)" if "ray_start_s" in r else ""),
                      flush=True)
        ref = {r["tool"] + str(r["workers"]): r["stats"] for r in rows if r["iou_type"] == t}
        base = next(iter(ref.values()))
        for k, s in ref.items():
            print(f"{t:5s} {k:20s} max |stats - {next(iter(ref))}| = {np.abs(np.array(s) - base).max():.1e}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": info, "results": rows}, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
