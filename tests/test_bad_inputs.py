"""Every kind of bad input becomes its image's status; the job finishes; good rows are unchanged."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, QUICK
from PIL import Image

import mrcnn_batch as mb

GOOD = ["dog.jpg", "truck.jpg"]


def _photo(size=(96, 64)) -> Image.Image:
    return Image.open(IMAGES / "dog.jpg").convert("RGB").resize(size)


def _giant_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _photo((96, 64)).save(path, format="JPEG", exif=exif.tobytes(), quality=95)


def make_inputs(d: Path) -> dict[str, str]:
    """Files of every kind, and the status each must get."""
    jpeg = (IMAGES / "truck.jpg").read_bytes()
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (d / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "notes.txt").write_text("not an image, just some text\n")
    photo = _photo()
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    gray = photo.convert("L")
    gray.save(d / "gray.png")
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(d / "gray16.png")  # I;16
    gray.save(d / "gray.jpg", quality=95)
    photo.quantize(64).save(d / "palette.png")
    pal = photo.quantize(64)
    pal.info["transparency"] = 0
    pal.save(d / "palette_transparent.png", transparency=0)
    photo.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    photo.convert("1").save(d / "bilevel.png")
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:])
    _exif_rotated(d / "exif6.jpg")
    upright = Image.open(d / "exif6.jpg")
    from PIL import ImageOps

    ImageOps.exif_transpose(upright).convert("RGB").save(d / "exif6_upright.png")
    Image.fromarray(np.asarray(gray).astype(np.float32)).save(d / "float.tif")
    (d / "giant.png").write_bytes(_giant_png())
    with open(d / "huge.jpg", "wb") as f:  # 1.5 GB, sparse: refused from its size, never read
        f.truncate(1_500_000_000)
    for g in GOOD:
        (d / g).write_bytes((IMAGES / g).read_bytes())
    expected = {
        "empty.jpg": "decode_error",
        "truncated.jpg": "decode_error",
        "random.jpg": "decode_error",
        "notes.txt": "decode_error",
        "rgba.png": "ok",
        "gray.png": "ok",
        "gray16.png": "ok",
        "gray.jpg": "ok",
        "palette.png": "ok",
        "palette_transparent.png": "ok",
        "cmyk.jpg": "ok",
        "bilevel.png": "ok",
        "animated.gif": "ok",
        "exif6.jpg": "ok",
        "exif6_upright.png": "ok",
        "float.tif": "unsupported",
        "giant.png": "too_large",
        "huge.jpg": "too_large",
        "missing.jpg": "read_error",
    }
    expected.update({g: "ok" for g in GOOD})
    return expected


def _instances_by_uri(run):
    images = {r["image_id"]: r["uri"].rsplit("/", 1)[-1] for r in run.read_table("images").to_pylist()}
    out = {}
    for r in run.read_table("instances").to_pylist():
        r = dict(r)
        image_id = r.pop("image_id")
        assert image_id in images, f"instance row without an images row: {r}"
        out.setdefault(images[image_id], []).append(r)
    return out


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, mask_weights):
    d = tmp_path_factory.mktemp("bad")
    expected = make_inputs(d)
    manifest = d / "manifest.txt"
    manifest.write_text("".join(f"{d / name}\n" for name in sorted(expected)))
    out = tmp_path_factory.mktemp("runs") / "bad"
    summary = mb.infer(str(manifest), str(out), weights=str(mask_weights), shard_size=4, batch_size=1, **QUICK)
    return mb.open_run(str(out)), summary, expected, d


def test_every_planned_image_has_one_row_with_its_status(bad_run):
    run, summary, expected, _ = bad_run
    assert summary.complete and not summary.failed_shards
    rows = run.read_table("images").to_pylist()
    got = {r["uri"].rsplit("/", 1)[-1]: r for r in rows}
    assert len(rows) == len(got) == len(expected) == run.read_plan().num_rows
    assert {k: v["status"] for k, v in got.items()} == expected
    for name, row in got.items():
        assert (row["error"] is None) == (row["status"] == "ok"), name
    assert "0 bytes" in got["empty.jpg"]["error"]
    assert "truncated" in got["truncated.jpg"]["error"]
    assert "100000x100000" in got["giant.png"]["error"]
    assert "1500000000 bytes" in got["huge.jpg"]["error"] and "--max-bytes" in got["huge.jpg"]["error"]
    assert "FileNotFoundError" in got["missing.jpg"]["error"]
    # EXIF orientation applied: the stored 96x64 JPEG is seen (and recorded) as 64x96.
    assert (got["exif6.jpg"]["width"], got["exif6.jpg"]["height"]) == (64, 96)


def test_converted_modes_predict_like_their_plain_equivalents(bad_run):
    run, *_ = bad_run
    rows = _instances_by_uri(run)
    # 16-bit gray scaled to 8 bits is the 8-bit gray image, pixel for pixel.
    assert (rows.get("gray16.png", [])) == (rows.get("gray.png", []))
    # The EXIF-rotated JPEG predicts exactly as its upright copy.
    assert (rows.get("exif6.jpg", [])) == (rows.get("exif6_upright.png", []))
    assert rows.get("gray.png") and rows.get("exif6.jpg")  # neither comparison is between two empty lists


def test_good_images_rows_equal_a_clean_run(bad_run, tmp_path, mask_weights):
    run, _, _, d = bad_run
    manifest = tmp_path / "good.txt"
    manifest.write_text("".join(f"{d / g}\n" for g in GOOD))
    mb.infer(str(manifest), str(tmp_path / "clean"), weights=str(mask_weights), batch_size=1, **QUICK)
    clean = mb.open_run(str(tmp_path / "clean"))
    ours, theirs = _instances_by_uri(run), _instances_by_uri(clean)
    for g in GOOD:
        assert ours[g] == theirs[g]
    ids = {r["uri"]: r["image_id"] for r in clean.read_table("images").to_pylist()}
    assert all(r["image_id"] == ids[r["uri"]] for r in run.read_table("images").to_pylist() if r["uri"] in ids)
