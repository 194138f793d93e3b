"""``--rpn-proposals`` side by side with the model's default (1000), in one run: ``infer``
in-process on the shipped photos, end to end, CPU seconds and wall time per image.

R50-FPN Mask R-CNN with random weights whose heads are lifted so that every image has the full
``--max-detections`` (the heads' full load; no download), at the model's default size (800 px)
unless ``--min-size`` says otherwise. What it changes in accuracy depends on the trained model:
run ``bench_speed_options.py`` (the demo model, AP beside images/s) or your own eval before
lowering it.

    .venv/bin/python benchmarks/bench_proposals.py --images 5 --proposals 1000,300,100
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_pipeline import PHOTOS, make_weights

import mrcnn_batch as mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--proposals", default="1000,300,100", help="comma-separated; 1000 is torchvision's default")
    ap.add_argument("--max-detections", type=int, default=100)
    ap.add_argument("--min-size", type=int, default=None, help="default: the model's (800)")
    ap.add_argument("--max-size", type=int, default=None)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mrcnn_proposals_"))
    try:
        weights = make_weights(work / "lifted.pth")
        images = work / "images"
        images.mkdir()
        photos = sorted(PHOTOS.glob("*.jpg"))
        for i in range(args.images):
            shutil.copy(photos[i % len(photos)], images / f"img{i:04d}.jpg")
        common = dict(weights=str(weights), max_detections=args.max_detections, min_size=args.min_size,
                      max_size=args.max_size, shard_size=args.images, batch_size=1, overwrite=True)
        mb.infer(str(images), str(work / "warm-up"), **common, rpn_proposals=100)  # imports, allocator
        print(f"{args.images} photos, max {args.max_detections} detections, one process, {os.cpu_count()} CPUs")
        print(f"{'proposals':>10} {'wall s/img':>11} {'CPU s/img':>10} {'instances':>10} {'speed-up':>9}")
        base = None
        for n in map(int, args.proposals.split(",")):
            cpu0, t0 = time.process_time(), time.perf_counter()
            summary = mb.infer(str(images), str(work / f"p{n}"), **common, rpn_proposals=n)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            base = base or cpu
            print(f"{n:>10} {wall / args.images:>11.2f} {cpu / args.images:>10.2f} {summary.instances:>10} {base / cpu:>8.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
