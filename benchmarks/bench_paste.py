"""Mask paste + RLE encode: ours (box-local paste, run lengths from changes) versus torchvision's
``paste_masks_in_image`` + threshold + pycocotools ``encode``, on the same 100 detections.

    python benchmarks/bench_paste.py [--repeats 5] [--out benchmarks/results/paste.json]

Prints both timings side by side and checks that the RLE strings are identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from mrcnn_batch.encode.masks import paste_and_encode


def detections(h: int, w: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    masks = F.interpolate(torch.rand(n, 1, 7, 7, generator=g), size=(28, 28), mode="bilinear")
    # box sizes like a detector's on a busy image: mostly small and medium, a few large
    scale = torch.rand(n, 1, generator=g) ** 2 * 0.6 + 0.02
    wh = scale * torch.tensor([w, h]) * (0.6 + 0.8 * torch.rand(n, 2, generator=g))
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    return masks, torch.cat([xy, xy + wh], 1)


def baseline(masks, boxes, h, w):
    pasted = paste_masks_in_image(masks, boxes, (h, w)) > 0.5
    arr = np.asfortranarray(pasted[:, 0].permute(1, 2, 0).numpy().astype(np.uint8))
    return [r["counts"].decode() for r in mask_utils.encode(arr)]


def ours(masks, boxes, h, w):
    rles, _ = paste_and_encode(masks, boxes, height=h, width=w)
    return [r["counts"] for r in rles]


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--detections", type=int, default=100)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="benchmarks/results/paste.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    print(f"{'size':>10} {'torchvision+pycocotools':>24} {'mrcnn-batch':>12} {'speed-up':>9}  identical")
    for h, w in [(480, 640), (1080, 1920)]:
        masks, boxes = detections(h, w, args.detections, seed=h)
        same = baseline(masks, boxes, h, w) == ours(masks, boxes, h, w)
        tb = timed(lambda: baseline(masks, boxes, h, w), args.repeats)
        to = timed(lambda: ours(masks, boxes, h, w), args.repeats)
        results.append({"height": h, "width": w, "detections": args.detections, "baseline_s": tb, "ours_s": to, "speedup": tb / to, "identical": same})
        print(f"{w:>5}x{h:<4} {tb * 1000:>21.1f} ms {to * 1000:>9.1f} ms {tb / to:>8.1f}x  {same}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
