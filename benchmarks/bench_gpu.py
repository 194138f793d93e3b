"""One worker on a CUDA GPU: the model alone against the whole shard pipeline, and CUDA rows
against CPU rows.

Needs only torch, torchvision, numpy, pillow, pyarrow, fsspec and pycocotools (no Ray, no
s3fs): run it from a checkout with ``PYTHONPATH=.`` on the GPU machine.

* **throughput**: R50-FPN Mask R-CNN with random weights whose heads are lifted so that every
  image has ``max_detections`` (100) confident instances (the encoder's full load; no
  download), over JPEGs made from tests/data/images at 640x480 and 1920x1080. ``forward``: the
  ``Predictor`` on images decoded beforehand (host arrays, as the pipeline hands them over),
  in the same batches; ``pipeline``: ``ShardProcessor`` (what a Ray actor runs) from JPEG
  files to committed Parquet shards. Images/s of both, their ratio (the share of the GPU's
  rate the pipeline keeps), the pipeline's process CPU seconds per image and peak GPU memory,
  for batch 1/4/8, float32 and ``--amp``/``--channels-last``; then ``--gpu-decode``.
* **encoder**: ``encode.masks.paste_and_encode`` of 100 masks per image: its torch ops on the GPU
  and on the CPU (masks copied over first), and the compiled kernel where it was built (see
  ``run_gpu_checks.sh``), one thread and one per CPU; the RLEs of all must be equal.
* **determinism**: cuDNN's deterministic kernels (on by the ``Predictor`` on CUDA) against its
  free choice, alternated: the model's rate (``forward``, as above) of the lifted R50 Mask R-CNN
  and an R50 Keypoint R-CNN whose person class is lifted the same way, float32 and
  ``--amp``/``--channels-last``, and whether two passes over the same batches give the same bits
  (every output tensor; the largest difference where not).
* **agreement**: the rows of a CUDA run against a CPU run of the same images (the packaged
  ``demo`` model on held-out synthetic images, and the lifted R50 on the real photos), CUDA
  batch 8 against batch 1 on a shard of mixed shapes, ``--amp`` and ``--gpu-decode`` against
  float32: detections matched one to one (same category, box IoU >= 0.9, in score order);
  the share matched, the largest score and box differences, mask IoU, identical RLEs.

    PYTHONPATH=. python benchmarks/bench_gpu.py --images 64 --out /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import mrcnn_batch as mb
import mrcnn_batch.run.processor as processor_module
from mrcnn_batch.datasets.shapes import write_dataset
from mrcnn_batch.encode.masks import COMPILED, paste_and_encode
from mrcnn_batch.models.loaded import build_model
from mrcnn_batch.plan import shard_ids, shard_rows
from mrcnn_batch.read import decode_image
from mrcnn_batch.read.gpu_decode import decode_on_device
from mrcnn_batch.run.driver import prepare
from mrcnn_batch.run.processor import ShardProcessor, shard_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_sized_images, make_weights

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "data" / "images"
SETTINGS = {"float32": {}, "tf32": {}, "cudnn_benchmark": {}, "amp": {"amp": True}, "channels_last": {"channels_last": True},
            "amp+channels_last": {"amp": True, "channels_last": True}}  # tf32: cuDNN's TF32 back on;
# cudnn_benchmark: cuDNN times its kernels per input shape and keeps the fastest (float32)


DEVICE = "cuda"  # --device cpu: a smoke test of this script on a machine without one
SAMPLE = False  # --sample: where the pipeline's threads spend their time
SIZES: dict[str, int] = {}  # --small: min_size / max_size for that smoke test


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def processor_for(images: Path, run: Path, encoder: str = "auto", **options: Any) -> tuple[ShardProcessor, pa.Table]:
    config = mb.make_config(str(images), str(run), **SIZES, **options)
    _, meta, plan, weights, _ = prepare(config)
    p = config.predict
    model = build_model(p.model, weights, min_size=p.min_size, max_size=p.max_size,
                        score_threshold=p.score_threshold, max_detections=p.max_detections)
    return ShardProcessor(config, run_id=meta.run_id, weights=weights, model=model, encoder=encoder), plan


def host_arrays(plan: pa.Table) -> list[np.ndarray]:
    return [decode_image(Path(u.removeprefix("file://")).read_bytes(), max_pixels=10**9).array
            for u in plan.column("uri").to_pylist()]


def forward_rate(processor: ShardProcessor, arrays: list[np.ndarray], bs: int) -> float:
    """Images/s of the model alone (the host-to-device copy included), best of two passes."""
    best = 0.0
    for _ in range(2):
        sync()
        start = time.perf_counter()
        for i in range(0, len(arrays), bs):
            processor.predictor(arrays[i : i + bs])
        sync()
        best = max(best, len(arrays) / (time.perf_counter() - start))
    return best


def pipeline_rate(processor: ShardProcessor, plan: pa.Table, in_flight: int = 1) -> tuple[float, float]:
    """Images/s of the shard pipeline, files to committed shards, and its process CPU s / image
    (encoder processes not counted). ``in_flight`` shards at a time, as the executors give them
    (``SHARDS_IN_FLIGHT``): one shard's tail and commit overlap the next one's model work."""
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(in_flight, thread_name_prefix="shard") as pool:
        list(pool.map(lambda s: processor(s, shard_images(shard_rows(plan, s))), shard_ids(plan)))
    sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return plan.num_rows / wall, cpu / plan.num_rows


def throughput(tmp: Path, images: Path, weights: Path, *, label: str, setting: str, bs: int,
               shard_size: int, gpu_decode: bool = False, encoder_threads: int = 0,
               encoder: str = "auto", in_flight: int = 1, prefetch: int = 0, upload: str = "readers") -> dict[str, Any]:
    run = Path(tempfile.mkdtemp(prefix=f"run-{label}-{setting}-{bs}-{int(gpu_decode)}-{upload}-", dir=tmp)) / "run"
    default_threads, default_prefetch = processor_module.encoder_threads, processor_module.PREFETCH_BATCHES
    if encoder_threads:
        processor_module.encoder_threads = lambda: encoder_threads
    processor_module.PREFETCH_BATCHES = prefetch or default_prefetch
    processor_module.UPLOAD_IN_READERS = upload == "readers"
    try:
        processor, plan = processor_for(images, run, weights=str(weights), batch_size=bs, shard_size=shard_size,
                                        device=DEVICE, gpu_decode=gpu_decode, encoder=encoder, **SETTINGS[setting])
    finally:
        processor_module.encoder_threads = default_threads
        processor_module.UPLOAD_IN_READERS = True
    tf32(setting == "tf32")
    torch.backends.cudnn.benchmark = setting == "cudnn_benchmark"
    try:
        arrays = host_arrays(plan)
        processor.predictor(arrays[:bs])  # warm-up: kernels, allocator
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fwd = forward_rate(processor, arrays, bs)
        pipeline_rate(processor, plan.slice(0, min(plan.num_rows, shard_size)))  # warm-up
        rss0 = rss_mib("VmRSS")
        with Sampler() if SAMPLE else nullcontext() as sampler:
            pipe, cpu = pipeline_rate(processor, plan, in_flight)
        rss1 = rss_mib("VmRSS")
        children = [rss_mib("VmHWM", pid) for pid in getattr(processor._encoder._pool, "_processes", None) or {}]
    finally:
        processor.close()
        processor_module.PREFETCH_BATCHES = default_prefetch
    threads = processor._encoder.workers
    kind = "processes" if processor._encoder.processes else "threads"
    row = {"images": label, "setting": setting, "batch": bs, "gpu_decode": gpu_decode, "encoder": kind,
           "encoder_workers": threads,
           "forward_images_per_s": round(fwd, 1), "pipeline_images_per_s": round(pipe, 1),
           "pipeline_over_forward": round(pipe / fwd, 3), "pipeline_cpu_ms_per_image": round(1000 * cpu, 1),
           "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if DEVICE == "cuda" else None,
           "in_flight": in_flight, "upload": upload, "prefetch_batches": prefetch or default_prefetch, "rss_after_minus_before_mib": round(rss1 - rss0),
           "encoder_process_peak_rss_mib": [round(c) for c in children]}
    if sampler is not None:
        row["where_threads_are"] = sampler.report()
    print(f"  {label:10s} {setting:18s} bs {bs}  gpu_decode {int(gpu_decode)}  {threads:2d} {kind:9s}  in flight {in_flight}  upload {upload:7s}  prefetch {prefetch or default_prefetch}  "
          f"forward {fwd:7.1f}/s  pipeline {pipe:7.1f}/s  ratio {pipe / fwd:5.2f}  CPU {1000 * cpu:6.1f} ms/img  "
          f"GPU peak {row['peak_gpu_mib']} MiB  RSS +{rss1 - rss0:.0f} MiB  encoder processes peak "
          f"{max(children, default=0):.0f} MiB each (max), {sum(children):.0f} MiB in all", flush=True)
    return row


class Sampler:
    """Where the worker's threads spend their time: every 5 ms, each thread's innermost frame and
    its innermost frame in mrcnn_batch, counted by thread kind (shard, read, encode, ...)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.counts: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                kind = names.get(ident, "?").split("_")[0].rstrip("-0123456789")
                top = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
                own, f = "-", frame
                while f is not None:
                    if "mrcnn_batch" in f.f_code.co_filename:
                        own = f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}:{f.f_lineno}"
                        break
                    f = f.f_back
                self.counts[(kind, top, own)] += 1

    def report(self, n: int = 14) -> dict[str, list]:
        by_kind: dict[str, Counter] = {}
        for (kind, top, own), c in self.counts.items():
            by_kind.setdefault(kind, Counter())[(top, own)] += c
        out = {}
        for kind, counts in sorted(by_kind.items()):
            total = sum(counts.values())
            out[kind] = [[round(c / total, 3), top, own] for (top, own), c in counts.most_common(n)]
            print(f"    {kind} ({total} samples)")
            for share, top, own in out[kind]:
                print(f"      {100 * share:5.1f}%  {top:40s} {own}")
        return out


def rss_mib(field: str, pid: int | str = "self") -> float:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``) from /proc, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tf32(on: bool) -> None:
    """cuDNN's and cuBLAS's TF32 (the Predictor turns both off on CUDA: float32 means float32)."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on


# -- the encoder on each device -------------------------------------------------------------------
def keypoint_weights(path: Path) -> Path:
    """R50 Keypoint R-CNN with random weights, its person class lifted like ``make_weights``'s."""
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    torch.manual_seed(0)
    net = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.bias[1] += 4.0
    torch.save(net.state_dict(), path)
    return path


def outputs_differ(a: list, b: list) -> dict[str, float]:
    """The largest absolute difference of each output (an ``ImageDetections`` field) that is not
    the same bits in two passes (inf: another number of detections)."""
    worst: dict[str, float] = {}
    for x, y in zip(a, b, strict=True):
        for k, u in vars(x).items():
            v = getattr(y, k)
            if not isinstance(u, torch.Tensor):
                continue
            if u.shape != v.shape:
                worst[k] = float("inf")
            elif not torch.equal(u, v):
                worst[k] = max(worst.get(k, 0.0), float((u.double() - v.double()).abs().max()))
    return worst


def determinism(images: Path, tmp: Path, weights: dict[str, Path], bs: int = 8) -> list[dict[str, Any]]:
    """cuDNN's deterministic kernels against its free choice, alternated, per model and setting:
    the model's rate and whether two passes over the same batches give the same bits."""
    rows = []
    for model, path in weights.items():
        for setting in ("float32", "amp+channels_last"):
            processor, plan = processor_for(images, tmp / f"determinism-{model}-{setting}", model=model,
                                            weights=str(path), batch_size=bs, device=DEVICE, **SETTINGS[setting])
            try:
                arrays = host_arrays(plan)
                batches = [arrays[i : i + bs] for i in range(0, len(arrays), bs)]
                for deterministic in (False, True, False, True):
                    torch.backends.cudnn.deterministic = deterministic
                    processor.predictor(batches[0])  # warm-up: kernels chosen under this switch
                    rate = forward_rate(processor, arrays, bs)
                    passes = [[d for b in batches for d in processor.predictor(b)] for _ in range(2)]
                    differ = outputs_differ(*passes)
                    detections = sum(len(d.scores) for d in passes[0])
                    rows.append({"model": model, "setting": setting, "deterministic": deterministic, "batch": bs,
                                 "forward_images_per_s": round(rate, 1), "detections": detections,
                                 "two_passes_identical": not differ, "max_diff": differ})
                    print(f"  {model:26s} {setting:18s} deterministic {int(deterministic)}  forward {rate:7.1f}/s  "
                          f"{detections} detections  two passes {'identical' if not differ else differ}", flush=True)
            finally:
                processor.close()
                torch.backends.cudnn.deterministic = True
    return rows


def encoder_rates(images: Path, weights: Path, tmp: Path, n_images: int) -> dict[str, Any]:
    processor, plan = processor_for(images, tmp / f"run-encoder-{images.name}", weights=str(weights), batch_size=1, device=DEVICE)
    arrays = host_arrays(plan)[:n_images]
    dets = [processor.predictor([a])[0] for a in arrays]
    processor.close()
    h, w = arrays[0].shape[:2]
    cpu_masks = [(d.masks.cpu(), d.boxes.cpu()) for d in dets]
    cuda_masks = [(d.masks, d.boxes) for d in dets]

    def encode(pair, compiled=False):
        masks, boxes = pair
        return paste_and_encode(masks, boxes, height=h, width=w, compiled=compiled)[0]

    def on_stream(pair):
        if DEVICE != "cuda":
            return encode(pair)
        with torch.cuda.stream(torch.cuda.Stream()):
            return encode(pair)

    out: dict[str, Any] = {"images": f"{w}x{h}", "masks_per_image": int(dets[0].masks.shape[0])}
    rles = {}
    # the torch ops on each device, and the compiled kernel (masks copied to the host) where built
    variants = [("cuda", on_stream, cuda_masks), ("cpu", encode, cpu_masks)]
    if COMPILED:
        variants.append(("kernel", lambda pair: encode(pair, compiled=True), cuda_masks))
    for name, fn, pairs in variants:
        for threads in (1, os.cpu_count() or 1):
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fn, pairs[:threads]))  # warm-up
                sync()
                start, cpu = time.perf_counter(), time.process_time()
                rles[name] = list(pool.map(fn, pairs))
                sync()
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            out[f"{name}_{threads}_threads"] = {"wall_ms_per_image": round(1000 * wall / len(pairs), 2),
                                                "cpu_ms_per_image": round(1000 * cpu / len(pairs), 2)}
            print(f"  encoder on {name:4s}, {threads:2d} threads: {1000 * wall / len(pairs):7.2f} ms wall, "
                  f"{1000 * cpu / len(pairs):7.2f} ms CPU per image", flush=True)
    out["rles_equal_cuda_cpu"] = rles["cuda"] == rles["cpu"]
    print(f"  RLEs of the GPU encoder equal the CPU encoder's: {out['rles_equal_cuda_cpu']}", flush=True)
    if COMPILED:
        out["rles_equal_kernel_cpu"] = rles["kernel"] == rles["cpu"]
        print(f"  RLEs of the compiled kernel equal the CPU encoder's: {out['rles_equal_kernel_cpu']}", flush=True)
    return out


# -- agreement of two runs --------------------------------------------------------------------------
def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2) - np.maximum(a[:, None, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2) - np.maximum(a[:, None, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0)


def compare_runs(a_url: str, b_url: str) -> dict[str, Any]:
    """Detections of run ``a`` matched to run ``b``'s, image by image (see the module doc)."""
    ta = mb.open_run(a_url).read_table("instances").to_pylist()
    tb = mb.open_run(b_url).read_table("instances").to_pylist()
    by_a: dict[int, list] = {}
    by_b: dict[int, list] = {}
    for r in ta:
        by_a.setdefault(r["image_id"], []).append(r)
    for r in tb:
        by_b.setdefault(r["image_id"], []).append(r)
    total = matched = same_rle = 0
    score_diff = box_diff = 0.0
    ious: list[float] = []
    for image_id in sorted(set(by_a) | set(by_b)):
        ra = sorted(by_a.get(image_id, []), key=lambda r: r["instance_id"])
        rb = sorted(by_b.get(image_id, []), key=lambda r: r["instance_id"])
        total += max(len(ra), len(rb))
        if not ra or not rb:
            continue
        iou = _box_iou(np.array([r["bbox"] for r in ra]), np.array([r["bbox"] for r in rb]))
        taken = np.zeros(len(rb), dtype=bool)
        for i, r in enumerate(ra):
            row = np.where(taken | (np.array([x["category_id"] for x in rb]) != r["category_id"]), -1, iou[i])
            j = int(row.argmax())
            if row[j] < 0.9:
                continue
            taken[j] = True
            matched += 1
            s = rb[j]
            score_diff = max(score_diff, abs(r["score"] - s["score"]))
            box_diff = max(box_diff, float(np.abs(np.subtract(r["bbox"], s["bbox"])).max()))
            if r["mask"] is not None and s["mask"] is not None:
                same_rle += r["mask"]["counts"] == s["mask"]["counts"]
                ma = {"size": r["mask"]["size"], "counts": r["mask"]["counts"].encode()}
                mb_ = {"size": s["mask"]["size"], "counts": s["mask"]["counts"].encode()}
                same = r["mask"]["counts"] == s["mask"]["counts"]  # (two empty masks have IoU 0)
                ious.append(1.0 if same else float(mask_utils.iou([ma], [mb_], [0])[0][0]))
    return {"detections": total, "matched_share": round(matched / max(total, 1), 4),
            "max_score_diff": float(f"{score_diff:.3g}"), "max_box_diff_px": float(f"{box_diff:.3g}"),
            "mask_iou_mean": round(float(np.mean(ious)), 5) if ious else None,
            "mask_iou_min": round(float(np.min(ious)), 5) if ious else None,
            "identical_rle_share": round(same_rle / len(ious), 4) if ious else None}


def run_all(processor: ShardProcessor, plan: pa.Table) -> None:
    try:
        for s in shard_ids(plan):
            processor(s, shard_images(shard_rows(plan, s)))
    finally:
        processor.close()


def agreement(tmp: Path, case: str, name: str, images: Path, a: dict, b: dict) -> dict[str, Any]:
    urls = []
    for tag, options in (("a", a), ("b", b)):
        run = tmp / f"agree-{case}-{tag}"
        options = dict(options)
        on = options.pop("tf32", False)
        processor, plan = processor_for(images, run, **options)
        tf32(on)
        run_all(processor, plan)
        urls.append(str(run))
    result = compare_runs(*urls)
    print(f"  {name:34s} {json.dumps(result)}", flush=True)
    return result


def decode_difference(images: Path) -> dict[str, Any]:
    """Pixels of nvJPEG against PIL (libjpeg-turbo) on the same JPEGs."""
    diffs, means = [], []
    for f in sorted(images.glob("*.jpg"))[:8]:
        data = f.read_bytes()
        cpu = decode_image(data, max_pixels=10**9).array.astype(np.int16)
        gpu = decode_on_device(data, device=torch.device("cuda"), max_pixels=10**9).array
        gpu = gpu.permute(1, 2, 0).cpu().numpy().astype(np.int16)
        d = np.abs(cpu - gpu)
        diffs.append(int(d.max()))
        means.append(float(d.mean()))
    return {"max_abs_diff": max(diffs), "mean_abs_diff": round(float(np.mean(means)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="JPEGs per size")
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,4,8")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--settings-1080", default="float32,amp+channels_last", help="settings tried at 1920x1080 (batch 8)")
    ap.add_argument("--parts", default="throughput,decode,encoder,agreement")
    ap.add_argument("--encoder-threads", default="0", help="encoder workers to try (0: the worker's default)")
    ap.add_argument("--encoders", default="auto", help="encoder kinds to try: auto (processes on CUDA), threads, processes")
    ap.add_argument("--in-flight", default="1", help="shards given to the processor at a time (the executors give 2)")
    ap.add_argument("--uploads", default="readers", help="who copies pixels to the device: readers (the default on CUDA), model (its thread, as before)")
    ap.add_argument("--prefetch", default="0", help="read chunks decoded ahead per shard (0: PREFETCH_BATCHES)")
    ap.add_argument("--decode-settings", default="float32,amp+channels_last", help="settings tried with --gpu-decode")
    ap.add_argument("--out", default="benchmarks/results/bench_gpu.json")
    ap.add_argument("--device", default="cuda", help="cpu: only to try this script where there is no GPU")
    ap.add_argument("--small", action="store_true", help="resize to 128..192 px (to try the script on a CPU)")
    ap.add_argument("--sample", action="store_true", help="sample the pipeline's thread stacks (where time goes)")
    args = ap.parse_args()
    global DEVICE, SAMPLE
    SAMPLE = args.sample
    DEVICE = args.device
    if args.small:
        SIZES.update(min_size=128, max_size=192)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu needs a CUDA device (torch.cuda.is_available() is False)")
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor() or "cpu", "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__, "cpus": os.cpu_count(),
        "python": platform.python_version(), "throughput": [], "agreement": {}}
    print(f"{results['device']}, torch {results['torch']}, torchvision {results['torchvision']}, "
          f"{results['cpus']} CPUs", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(results, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = make_weights(tmp / "lifted.pth")
        sets = {}
        for w, h in ((640, 480), (1920, 1080)):
            folder = tmp / f"jpeg-{w}x{h}"
            folder.mkdir()
            make_sized_images(folder, args.images, w, h)
            sets[f"{w}x{h}"] = folder
        common = {"shard_size": args.shard_size}
        if "throughput" in parts:
            print("throughput (images/s; ratio = pipeline / forward)", flush=True)
            for encoder, in_flight, prefetch in [(e, f, p) for e in args.encoders.split(",") for f in map(int, args.in_flight.split(","))
                                                 for p in map(int, args.prefetch.split(","))]:
                for threads in map(int, args.encoder_threads.split(",")):
                    enc = {"encoder_threads": threads, "encoder": encoder, "in_flight": in_flight, "prefetch": prefetch}
                    for setting in args.settings.split(","):
                        for bs in map(int, args.batch_sizes.split(",")):
                            for upload in args.uploads.split(","):  # side by side, one after the other
                                results["throughput"].append(throughput(tmp, sets["640x480"], weights, label="640x480",
                                                                        setting=setting, bs=bs, upload=upload, **enc, **common))
                                save()
                    for setting in args.settings_1080.split(","):
                        for upload in args.uploads.split(","):
                            results["throughput"].append(throughput(tmp, sets["1920x1080"], weights, label="1920x1080",
                                                                    setting=setting, bs=8, upload=upload, **enc, **common))
                            save()
        if "decode" in parts:
            print("--gpu-decode", flush=True)
            for label, folder in sets.items():
                for setting in args.decode_settings.split(","):
                    for upload in args.uploads.split(","):
                        results["throughput"].append(throughput(tmp, folder, weights, label=label, setting=setting, bs=8,
                                                                gpu_decode=True, in_flight=int(args.in_flight.split(",")[-1]),
                                                                upload=upload, **common))
                        save()
            results["decode_pixels"] = {label: decode_difference(folder) for label, folder in sets.items()}
            print(f"  nvJPEG against PIL: {results['decode_pixels']}", flush=True)
            save()
        if "determinism" in parts:
            print("cuDNN's deterministic kernels (images/s of the model alone; two passes compared)", flush=True)
            models = {"maskrcnn_resnet50_fpn": weights,
                      "keypointrcnn_resnet50_fpn": keypoint_weights(tmp / "lifted-keypoint.pth")}
            results["determinism"] = determinism(sets["640x480"], tmp, models)
            save()
        if "encoder" in parts:
            print("encoder, 100 masks per image", flush=True)
            results["encoder"] = {label: encoder_rates(folder, weights, tmp, 16) for label, folder in sets.items()}
            save()
        if "agreement" in parts:
            print("agreement of rows (a against b)", flush=True)
            demo = tmp / "demo"
            write_dataset(str(demo), seed=1234, num_images=16)
            mixed = tmp / "mixed"
            mixed.mkdir()
            for f in sorted(PHOTOS.glob("*.jpg")):
                im = Image.open(f).convert("RGB")
                im.save(mixed / f.name)
                im.transpose(Image.Transpose.ROTATE_90).save(mixed / f"rot-{f.name}")
                im.resize((512, 512)).save(mixed / f"square-{f.name}")
            lifted = {"weights": str(weights)}
            cases = {
                "demo: cuda bs8 vs cpu bs1": (demo / "images", {"model": "demo", "device": "cuda", "batch_size": 8},
                                              {"model": "demo", "device": "cpu", "batch_size": 1}),
                "demo: cuda bs8 vs cuda bs1": (demo / "images", {"model": "demo", "device": "cuda", "batch_size": 8},
                                               {"model": "demo", "device": "cuda", "batch_size": 1}),
                "demo: cuda tf32 vs cuda float32": (demo / "images", {"model": "demo", "device": "cuda", "tf32": True},
                                                    {"model": "demo", "device": "cuda"}),
                "R50 photos: cuda bs1 vs cpu bs1": (mixed, {**lifted, "device": "cuda", "batch_size": 1},
                                                    {**lifted, "device": "cpu", "batch_size": 1}),
                "R50 photos: cuda tf32 vs cuda float32": (mixed, {**lifted, "device": "cuda", "batch_size": 1, "tf32": True},
                                                          {**lifted, "device": "cuda", "batch_size": 1}),
                "R50 photos: cuda bs8 vs cuda bs1": (mixed, {**lifted, "device": "cuda", "batch_size": 8},
                                                     {**lifted, "device": "cuda", "batch_size": 1}),
                "R50 photos: amp vs float32 (cuda)": (mixed, {**lifted, "device": "cuda", "batch_size": 8, "amp": True},
                                                      {**lifted, "device": "cuda", "batch_size": 8}),
                "R50 photos: gpu-decode vs cpu decode": (mixed, {**lifted, "device": "cuda", "batch_size": 8,
                                                                 "gpu_decode": True},
                                                         {**lifted, "device": "cuda", "batch_size": 8}),
            }
            for i, (name, (images, a, b)) in enumerate(cases.items()):
                a = {k: DEVICE if v == "cuda" else v for k, v in a.items()}
                b = {k: DEVICE if v == "cuda" else v for k, v in b.items()}
                if DEVICE != "cuda" and (a.get("gpu_decode") or b.get("gpu_decode")):
                    continue
                results["agreement"][name] = agreement(tmp, f"case{i}", name, images, a, b)
                save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
