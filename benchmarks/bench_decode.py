"""Image decoding: ``mrcnn_batch.read.decode_image`` versus the previous pipeline (the baseline).

    python benchmarks/bench_decode.py [--repeats 30] [--interleave] [--out benchmarks/results/decode.json]

The baseline is the decoder as it was before it avoided copies, written out here: open, load,
``ImageOps.exif_transpose`` (a full copy even without an orientation tag), ``np.asarray`` of the
image (PIL packs it into chunks and joins them into one read-only ``bytes``), converted to RGB
first when it is not, and ``np.array`` of that (the writable copy torch needs).

Inputs: the photos in tests/data/images, a 1920x1080 JPEG made from one of them, and the same
JPEG with EXIF orientation 6 (both pipelines must rotate it). For each it prints the median wall
time, the median CPU time (``time.process_time``) and the median number of minor page faults per
image of both, and checks that the two arrays are equal. CPU time is the steadier figure on a
shared machine.

The figures depend on the heap the calls find. By default each pipeline runs ``repeats`` times
in a row, in three alternating rounds (so that load on a shared machine falls on both alike):
the steady state of a loop that only decodes. The baseline then takes fresh pages from the
kernel on every call (its several large temporaries trip glibc's mmap threshold), the new one
reuses freed memory. ``--interleave`` alternates the two call by call instead: each then leaves
the heap in a state that makes the other fault, which is closer to a pipeline doing other large
allocations between decodes, and narrows the gap.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mrcnn_batch.read.decode import decode_image

IMAGES = Path(__file__).resolve().parents[1] / "tests" / "data" / "images"
NO_LIMIT = 1 << 40


def baseline(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.seek(0)
    im.load()
    im = ImageOps.exif_transpose(im)
    arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=np.uint8, order="C")
    return arr


def new(data: bytes) -> np.ndarray:
    return decode_image(data, max_pixels=NO_LIMIT).array


def inputs() -> dict[str, bytes]:
    out = {p.name: p.read_bytes() for p in sorted(IMAGES.glob("*.jpg"))}
    src = Image.open(IMAGES / "17790319373_bd19b24cfc_k.jpg").convert("RGB").resize((1920, 1080))
    buf = io.BytesIO()
    src.save(buf, format="JPEG", quality=90)
    out["generated 1920x1080"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    src.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    out["generated 1920x1080, EXIF 6"] = buf.getvalue()
    return out


def timed(fn, data: bytes) -> tuple[float, float, int]:
    """Wall ms, CPU ms and minor page faults of one call."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    w0, c0 = time.perf_counter(), time.process_time()
    fn(data)
    wall, cpu = (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3
    return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def measure(data: bytes, repeats: int, interleave: bool) -> dict[str, tuple[float, float, float]]:
    times: dict[str, list[tuple[float, float, int]]] = {"baseline": [], "new": []}
    fns = {"baseline": baseline, "new": new}
    if interleave:
        for _ in range(repeats):
            for k, fn in fns.items():
                times[k].append(timed(fn, data))
    else:
        rounds = 3
        for _ in range(rounds):
            for k, fn in fns.items():
                times[k] += [timed(fn, data) for _ in range(-(-repeats // rounds))]
    return {k: tuple(statistics.median(t[i] for t in v) for i in range(3)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--interleave", action="store_true", help="alternate the two call by call")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = ap.parse_args()

    rows = []
    print(f"median per image over {args.repeats} calls, {'interleaved' if args.interleave else 'in blocks'}")
    head = (f"{'image':28} {'size':>9}  {'baseline wall / CPU ms, faults':>30}  "
            f"{'new wall / CPU ms, faults':>26}  {'CPU x':>5}  equal")
    print(head)
    print("-" * len(head))
    for name, data in inputs().items():
        ref, got = baseline(data), new(data)
        equal = ref.shape == got.shape and bool((ref == got).all())
        med = measure(data, args.repeats, args.interleave)
        (bw, bc, bf), (nw, nc, nf) = med["baseline"], med["new"]
        rows.append({
            "image": name, "width": got.shape[1], "height": got.shape[0], "equal": equal,
            "baseline_wall_ms": bw, "baseline_cpu_ms": bc, "baseline_minor_faults": bf,
            "new_wall_ms": nw, "new_cpu_ms": nc, "new_minor_faults": nf,
        })
        size = f"{got.shape[1]}x{got.shape[0]}"
        print(f"{name:28} {size:>9}  {bw:9.2f} / {bc:6.2f}, {bf:7.0f}  {nw:7.2f} / {nc:6.2f}, {nf:5.0f}  "
              f"{bc / nc:5.2f}  {equal}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"repeats": args.repeats, "interleave": args.interleave, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
