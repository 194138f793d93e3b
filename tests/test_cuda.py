"""On a CUDA GPU: the encoder gives the CPU's bits, rows do not depend on the batch, CUDA rows
agree with CPU rows, and ``--gpu-decode`` decodes, orients and falls back as documented.

Every test here needs CUDA and is skipped without it (CI has no GPU; run this file on a GPU
machine: ``PYTHONPATH=. python -m pytest tests/test_cuda.py``). The figures of such a run are
in the README's "Throughput" section.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from conftest import IMAGES, SMALL
from hypothesis import given, settings
from PIL import Image
from pycocotools import mask as mask_utils
from test_encode_masks import detections, inside, near_threshold, reference
from test_encoders import tables_with

import mrcnn_batch as mb
from mrcnn_batch.datasets.shapes import HELDOUT_SEED, write_dataset
from mrcnn_batch.encode.masks import COMPILED, paste_and_encode
from mrcnn_batch.read import decode_image
from mrcnn_batch.read.gpu_decode import decode_on_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
CUDA = torch.device("cuda")


# -- the encoder: the same bits on the GPU as torchvision's CPU paste + pycocotools ------------------
def check_on_cuda(masks, boxes, h, w, thr=0.5):
    keep = inside(boxes, h, w)
    # the torch ops on the GPU (and the compiled kernel, fed from it, where built)
    ours, areas = paste_and_encode(masks.to(CUDA), boxes.to(CUDA), height=h, width=w, threshold=thr, compiled=False)
    on_cpu, cpu_areas = paste_and_encode(masks, boxes, height=h, width=w, threshold=thr)
    assert ours == on_cpu
    np.testing.assert_array_equal(areas, cpu_areas)
    if COMPILED:
        assert paste_and_encode(masks.to(CUDA), boxes.to(CUDA), height=h, width=w, threshold=thr)[0] == on_cpu
    _, ref = reference(masks[keep], boxes[keep], h, w, thr)
    for o, r in zip([x for x, k in zip(ours, keep.tolist()) if k], ref):
        assert o["counts"] == r["counts"].decode()


@settings(max_examples=100, deadline=None)
@given(detections())
def test_cuda_encoder_matches_torchvision_cpu_paste(det):
    masks, boxes, h, w = det
    check_on_cuda(masks, boxes, h, w)


@settings(max_examples=60, deadline=None)
@given(near_threshold())
def test_cuda_encoder_on_and_next_to_the_threshold(det):
    masks, boxes, h, w, thr = det
    check_on_cuda(masks, boxes, h, w, thr)


@pytest.mark.parametrize("h,w", [(480, 640), (1080, 1920)])
def test_cuda_encoder_at_real_sizes(h, w):
    g = torch.Generator().manual_seed(h)
    n = 100
    masks = torch.nn.functional.interpolate(torch.rand(n, 1, 7, 7, generator=g), size=(28, 28), mode="bilinear")
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 40.0, h - 40.0])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 1
    check_on_cuda(masks, torch.cat([xy, xy + wh], 1), h, w)


# -- runs on the GPU --------------------------------------------------------------------------------
def instances(run_url: str) -> dict[int, list[dict]]:
    rows = mb.open_run(run_url).read_table("instances").to_pylist()
    out: dict[int, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["image_id"], r["instance_id"])):
        out.setdefault(r["image_id"], []).append(r)
    return out


def mask_iou(a: dict, b: dict) -> float:
    if a == b:
        return 1.0  # pycocotools gives two empty masks an IoU of 0
    ra = {"size": a["size"], "counts": a["counts"].encode()}
    rb = {"size": b["size"], "counts": b["counts"].encode()}
    return float(mask_utils.iou([ra], [rb], [0])[0][0])


def assert_close_rows(a: dict[int, list[dict]], b: dict[int, list[dict]], *, score: float, box: float, iou: float):
    """The same detections in the same order, scores and boxes within the given bounds, masks
    overlapping by at least ``iou``."""
    assert a.keys() == b.keys()
    for image_id, ra in a.items():
        rb = b[image_id]
        assert [r["category_id"] for r in ra] == [r["category_id"] for r in rb], image_id
        for x, y in zip(ra, rb):
            assert abs(x["score"] - y["score"]) <= score, (image_id, x["instance_id"])
            np.testing.assert_allclose(x["bbox"], y["bbox"], atol=box)
            if x["mask"] is not None:
                assert mask_iou(x["mask"], y["mask"]) >= iou, (image_id, x["instance_id"])


def run(images, out, **options):
    return mb.infer(str(images), str(out), executor="local", **options)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Held-out images of the demo dataset (a trained model: detections that are not near-ties)."""
    d = tmp_path_factory.mktemp("shapes")
    write_dataset(str(d), seed=HELDOUT_SEED, num_images=12)
    return d / "images"


def test_cuda_rows_do_not_depend_on_the_batch(tmp_path, shapes):
    # cuDNN picks its kernels by batch size, so rows are equal to within float32 rounding, not
    # bit for bit as on the CPU (see the README's Throughput section for the measured differences)
    for bs in (1, 2, 8):
        run(shapes, tmp_path / f"bs{bs}", model="demo", device="cuda", batch_size=bs, shard_size=5)
    alone = instances(str(tmp_path / "bs1"))
    assert sum(map(len, alone.values())) > 0
    for bs in (2, 8):
        assert_close_rows(instances(str(tmp_path / f"bs{bs}")), alone, score=1e-3, box=0.05, iou=0.99)


def test_cuda_rows_agree_with_cpu_rows(tmp_path, shapes):
    run(shapes, tmp_path / "cuda", model="demo", device="cuda", batch_size=4)
    run(shapes, tmp_path / "cpu", model="demo", device="cpu", batch_size=1)
    assert_close_rows(instances(str(tmp_path / "cuda")), instances(str(tmp_path / "cpu")), score=2e-3, box=0.1, iou=0.98)


# -- --gpu-decode -----------------------------------------------------------------------------------
def jpeg_with_orientation(array: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_gpu_decode_turns_images_as_the_cpu_does(orientation):
    # a smooth picture (nvJPEG upsamples chroma otherwise than libjpeg-turbo: sharp colour edges
    # differ by tens of levels), not symmetric under any of the eight turns
    y, x = np.mgrid[0:96, 0:160].astype(np.float64)
    base = np.stack([x * 1.5, y * 2.5, 255 - (x + y) * 0.9], axis=2).clip(0, 255).astype(np.uint8)
    data = jpeg_with_orientation(base, orientation)
    cpu = decode_image(data, max_pixels=10**9)
    gpu = decode_on_device(data, device=CUDA, max_pixels=10**9)
    assert gpu.status == "ok" and isinstance(gpu.array, torch.Tensor) and gpu.array.is_cuda
    assert (gpu.width, gpu.height) == (cpu.width, cpu.height)
    got = gpu.array.permute(1, 2, 0).cpu().numpy().astype(int)
    diff = np.abs(got - cpu.array.astype(int)).mean()
    assert diff < 2.0
    for other in range(1, 9):  # every other turn of the same shape is much further away
        turned = decode_image(jpeg_with_orientation(base, other), max_pixels=10**9).array.astype(int)
        if other != orientation and turned.shape == got.shape:
            assert np.abs(got - turned).mean() > 10 * diff + 5


def test_gpu_decode_falls_back_and_keeps_statuses(tmp_path, mask_weights):
    for p in sorted(IMAGES.glob("*.jpg"))[:2]:
        shutil.copy(p, tmp_path / p.name)
    Image.open(IMAGES / "dog.jpg").save(tmp_path / "dog.png")
    Image.open(IMAGES / "dog.jpg").convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "broken.jpg").write_bytes((IMAGES / "dog.jpg").read_bytes()[:2000])
    images = tmp_path / "in"
    images.mkdir()
    for f in list(tmp_path.iterdir()):
        if f.is_file():
            f.rename(images / f.name)
    run(images, tmp_path / "gpu", weights=str(mask_weights), device="cuda", gpu_decode=True, **SMALL)
    run(images, tmp_path / "cpu", weights=str(mask_weights), device="cuda", **SMALL)
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in mb.open_run(str(tmp_path / "gpu")).read_table("images").to_pylist()}
    cpu_rows = {r["uri"].rsplit("/", 1)[1]: r for r in mb.open_run(str(tmp_path / "cpu")).read_table("images").to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == {k: r["status"] for k, r in cpu_rows.items()}
    assert rows["broken.jpg"]["status"] == "decode_error"
    assert rows["dog.png"]["status"] == rows["cmyk.jpg"]["status"] == "ok"
    for k in rows:
        assert (rows[k]["width"], rows[k]["height"]) == (cpu_rows[k]["width"], cpu_rows[k]["height"])


def test_readers_copying_to_the_device_change_no_row(tmp_path, mask_weights, monkeypatch):
    """The readers' copy to the device (pinned memory, their own streams: read.to_device) gives
    the bytes the model's own copy gave, so every table is identical, statuses included."""
    import mrcnn_batch.run.processor as processor_module

    images = tmp_path / "in"
    images.mkdir()
    for p in sorted(IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(p, images / p.name)
    Image.open(IMAGES / "dog.jpg").convert("L").save(images / "gray.png")
    (images / "broken.jpg").write_bytes((IMAGES / "dog.jpg").read_bytes()[:2000])
    tables = {}
    for upload in (True, False):
        monkeypatch.setattr(processor_module, "UPLOAD_IN_READERS", upload)
        out = tmp_path / f"upload-{upload}"
        run(images, out, weights=str(mask_weights), device="cuda", batch_size=2, **SMALL)
        tables[upload] = {name: mb.open_run(str(out)).read_table(name).to_pylist() for name in ("images", "instances")}
    assert tables[True] == tables[False]
    assert sum(r["status"] == "ok" for r in tables[True]["images"]) == 4
    assert len(tables[True]["instances"]) > 0


def test_encoder_threads_write_what_processes_write_on_cuda(tmp_path):
    # threads do their device work on their own streams; processes are sent numpy arrays
    images = tmp_path / "in"
    images.mkdir()
    for p in sorted(IMAGES.glob("*.jpg")):
        shutil.copy(p, images / p.name)
    options = {"model": "demo", "score_threshold": 0.0, "device": "cuda"}
    threads = tables_with("threads", images, tmp_path / "threads", **options)
    processes = tables_with("processes", images, tmp_path / "processes", **options)
    assert len(threads["instances"]) > 0 and len(threads["keypoints"]) > 0
    # the same bits, keypoint scores too: with cuDNN free to choose its kernels they moved by up
    # to 4.8e-7 from run to run on an H200, whichever encoder (the Predictor asks for its
    # deterministic ones)
    assert processes == threads
