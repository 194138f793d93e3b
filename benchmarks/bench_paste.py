"""Mask paste + RLE encode: ``mrcnn_batch.encode.masks.paste_and_encode`` versus torchvision's
``paste_masks_in_image`` + threshold + pycocotools ``encode`` (the baseline), on the same detections.

    python benchmarks/bench_paste.py [--repeats 5] [--threads N] [--impl path/to/masks.py]
                                     [--out benchmarks/results/paste.json]

For 640x480 and 1920x1080 with 10 and 100 detections it prints, side by side, the median wall
time and the median CPU time (``time.process_time``: all threads of the process) of both, the
speed-ups, and whether the RLE strings are identical; beside them the same function on torch
ops (``compiled=False``: what runs where the compiled kernel could not be built). The machine may be shared and noisy, so
CPU time is the steadier figure. Then the throughput of ``paste_and_encode`` on a batch of
images with one and with two Python threads (torch held to one intra-op thread), which shows
whether the work runs outside the GIL. ``--impl`` loads ``paste_and_encode`` from another file
(an older version, to compare before and after).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

SIZES = [(480, 640), (1080, 1920)]
DETECTIONS = [10, 100]


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


def load_impl(path: str | None):
    if path is None:
        from mrcnn_batch.encode.masks import paste_and_encode

        return paste_and_encode
    spec = importlib.util.spec_from_file_location("paste_impl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.paste_and_encode


def timed(fn, repeats):
    """Median wall and median CPU seconds of ``fn`` over ``repeats`` runs, after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(wall), statistics.median(cpu)


def throughput(paste, images, workers):
    """Images per second of ``paste`` over ``images`` with ``workers`` Python threads."""
    def one(item):
        masks, boxes, h, w = item
        paste(masks, boxes, height=h, width=w)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, images[:workers]))  # warm-up
        t = time.perf_counter()
        list(pool.map(one, images))
        return len(images) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--impl", default=None, help="file to load paste_and_encode from (default: the package)")
    ap.add_argument("--batch", type=int, default=16, help="images for the thread throughput figure")
    ap.add_argument("--out", default="benchmarks/results/paste.json")
    args = ap.parse_args()
    paste = load_impl(args.impl)
    torch.set_num_threads(args.threads)
    results = []
    print(f"torch threads: {args.threads}; median of {args.repeats}; ms")
    from mrcnn_batch.encode.masks import COMPILED, paste_and_encode

    print(f"compiled kernel: {'built' if COMPILED else 'NOT built (ours = torch ops)'}")
    print(f"{'size':>10} {'dets':>4} | {'baseline wall':>13} {'cpu':>7} | {'ours wall':>9} {'cpu':>6} | {'speed-up wall':>13} {'cpu':>6} | identical"
          f" | {'torch ops cpu':>13} {'speed-up':>8}")
    for h, w in SIZES:
        for n in DETECTIONS:
            masks, boxes = detections(h, w, n, seed=h + n)
            ours = lambda: [r["counts"] for r in paste(masks, boxes, height=h, width=w)[0]]  # noqa: E731
            same = baseline(masks, boxes, h, w) == ours()
            bw, bc = timed(lambda: baseline(masks, boxes, h, w), args.repeats)
            ow, oc = timed(ours, args.repeats * 4)
            torch_ops = lambda: [r["counts"] for r in paste_and_encode(masks, boxes, height=h, width=w, compiled=False)[0]]  # noqa: E731
            same = same and torch_ops() == ours()
            _, tc = timed(torch_ops, args.repeats * 4)
            results.append({
                "height": h, "width": w, "detections": n, "identical": same,
                "baseline_wall_s": bw, "baseline_cpu_s": bc, "ours_wall_s": ow, "ours_cpu_s": oc,
                "speedup_wall": bw / ow, "speedup_cpu": bc / oc, "torch_ops_cpu_s": tc, "torch_ops_speedup_cpu": bc / tc,
            })
            print(f"{w:>5}x{h:<4} {n:>4} | {bw * 1e3:>13.1f} {bc * 1e3:>7.1f} | {ow * 1e3:>9.2f} {oc * 1e3:>6.2f} | {bw / ow:>12.1f}x {bc / oc:>5.1f}x | {str(same):>9}"
                  f" | {tc * 1e3:>13.2f} {bc / tc:>7.1f}x")

    torch.set_num_threads(1)
    scaling = []
    for h, w in SIZES:
        images = [(*detections(h, w, 100, seed=s), h, w) for s in range(args.batch)]
        one, two = throughput(paste, images, 1), throughput(paste, images, 2)
        scaling.append({"height": h, "width": w, "detections": 100, "images_per_s_1_thread": one, "images_per_s_2_threads": two})
        print(f"{w:>5}x{h:<4} 100 dets, torch 1 thread: {one:6.1f} images/s with 1 Python thread, {two:6.1f} with 2 ({two / one:.2f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "impl": args.impl or "mrcnn_batch", "compiled": COMPILED, "results": results, "thread_scaling": scaling}, indent=2))


if __name__ == "__main__":
    main()
