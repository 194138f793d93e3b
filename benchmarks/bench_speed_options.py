"""The speed switches that are off by default, side by side with the default, in one run:
``--channels-last`` and ``--amp`` (float16 autocast on CUDA, bfloat16 on CPU).

The demo model over held-out synthetic images (``infer`` in-process, end to end, from PNG files
to committed Parquet), then our eval on the same images: images/s and AP for each setting, so a
switch that is faster but changes the numbers shows both. Run it on the GPU you mean to use
before turning a switch on.

    .venv/bin/python benchmarks/bench_speed_options.py --images 60
    .venv/bin/python benchmarks/bench_speed_options.py --images 500 --device cuda --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import mrcnn_batch as mb
from mrcnn_batch.datasets.shapes import HELDOUT_SEED, write_dataset
from mrcnn_batch.evaluate.distributed import evaluate_run
from mrcnn_batch.evaluate.groundtruth import load_ground_truth

SETTINGS = {"default": {}, "channels_last": {"channels_last": True}, "amp": {"amp": True},
            "amp+channels_last": {"amp": True, "channels_last": True}}
IOU_TYPES = ("bbox", "segm", "keypoints")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs per setting")
    ap.add_argument("--json", default="benchmarks/results/speed_options.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mrcnn_speed_"))
    write_dataset(str(work / "data"), seed=HELDOUT_SEED, num_images=args.images)
    ann, images = str(work / "data" / "annotations.json"), str(work / "data" / "images")
    gt = load_ground_truth(ann, iou_types=IOU_TYPES)
    common = dict(image_root=images, model="demo", shard_size=args.images, batch_size=args.batch_size,
                  device=args.device, overwrite=True)
    mb.infer(ann, str(work / "warm-up"), **common)  # model load, allocator, kernels

    rows = []
    for name, switches in SETTINGS.items():
        best = float("inf")
        for r in range(args.repeats):
            out = work / f"{name}-{r}"
            t0 = time.perf_counter()
            summary = mb.infer(ann, str(out), **common, **switches)
            best = min(best, time.perf_counter() - t0)
            assert summary.complete
        res, _ = evaluate_run(str(out), gt, iou_types=IOU_TYPES, workers=0)
        rows.append({"setting": name, "images_per_s": args.images / best,
                     **{f"AP_{t}": float(res[t].stats[0]) for t in IOU_TYPES}})

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    print(f"{args.images} held-out images, demo model, batch {args.batch_size}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    base = rows[0]
    print(f"{'setting':20s} {'images/s':>9s} {'vs default':>10s}   " + "  ".join(f"AP {t:9s}" for t in IOU_TYPES))
    for r in rows:
        print(f"{r['setting']:20s} {r['images_per_s']:9.2f} {r['images_per_s'] / base['images_per_s']:9.2f}x   "
              + "  ".join(f"{r[f'AP_{t}']:.4f} ({r[f'AP_{t}'] - base[f'AP_{t}']:+.4f})" for t in IOU_TYPES))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"images": args.images, "device": str(device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
