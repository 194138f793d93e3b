"""decode_image (one copy after decoding) equals the plain PIL pipeline pixel for pixel.

The reference is what the decoder used to do for every image: ``ImageOps.exif_transpose``,
``convert("RGB")``, ``np.array``. Its array is writable, C-contiguous and owns its memory, so
``torch.from_numpy`` takes it without a warning; decode_image's must be the same.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import IMAGES
from PIL import Image, ImageOps

from mrcnn_batch.read.decode import decode_image

PHOTOS = sorted(IMAGES.glob("*.jpg"))
NO_LIMIT = 1 << 40


def reference(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(ImageOps.exif_transpose(im).convert("RGB"))


def assert_decodes_like_reference(data: bytes) -> np.ndarray:
    dec = decode_image(data, max_pixels=NO_LIMIT)
    assert dec.status == "ok", dec.error
    want = reference(data)
    assert dec.array.dtype == np.uint8 and dec.array.shape == want.shape
    assert (dec.width, dec.height) == (want.shape[1], want.shape[0])
    np.testing.assert_array_equal(dec.array, want)
    flags = dec.array.flags
    assert flags.writeable and flags.c_contiguous and flags.owndata
    return dec.array


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _asymmetric_photo(size=(97, 61)) -> Image.Image:
    """Odd sides and a photo's content: any wrong flip or rotation changes the pixels."""
    return Image.open(PHOTOS[0]).convert("RGB").resize(size)


def test_there_are_photos():
    assert len(PHOTOS) >= 3


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_real_photos(path):
    assert_decodes_like_reference(path.read_bytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(_asymmetric_photo(), "JPEG", exif=exif.tobytes(), quality=95)
    arr = assert_decodes_like_reference(data)
    assert arr.shape[:2] == ((97, 61) if orientation >= 5 else (61, 97))  # 5..8 swap the sides


def test_exif_transpose_off_keeps_stored_pixels():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_asymmetric_photo(), "JPEG", exif=exif.tobytes(), quality=95)
    dec = decode_image(data, max_pixels=NO_LIMIT, exif_transpose=False)
    with Image.open(io.BytesIO(data)) as im:
        np.testing.assert_array_equal(dec.array, np.array(im.convert("RGB")))


def test_png_with_alpha():
    rgba = np.array(_asymmetric_photo().convert("RGBA"))
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1], dtype=np.uint8)[None, :]  # alpha varies
    assert_decodes_like_reference(_encode(Image.fromarray(rgba), "PNG"))


# -- --gpu-decode's orientation, which runs on the device's tensors (the decode itself needs CUDA:
# tests/test_cuda.py) -------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(10))
def test_gpu_decode_orients_as_pil_exif_transpose(orientation):
    import torch

    from mrcnn_batch.read.gpu_decode import orient

    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # not square: turns show in the shape
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    want = np.array(ImageOps.exif_transpose(im))
    got = orient(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)


def test_gpu_decode_needs_a_cuda_device(tmp_path):
    import mrcnn_batch as mb

    with pytest.raises(ValueError, match="--gpu-decode"):
        mb.make_config(str(tmp_path), str(tmp_path / "run"), device="cpu", gpu_decode=True)


# -- the array the pixels are packed into comes from the caller (pinned memory on CUDA) -----------
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "RGBA", "I;16"])
def test_pixels_are_packed_into_the_callers_array(mode):
    im = _asymmetric_photo()
    im = im.convert(mode) if mode != "I;16" else Image.fromarray(np.array(im.convert("L")).astype(np.uint16) * 257)
    data = _encode(im, "TIFF")
    made = []

    def alloc(shape):
        made.append(np.full(shape, 7, dtype=np.uint8))  # not zeros: every byte must be written
        return made[-1]

    dec = decode_image(data, max_pixels=NO_LIMIT, alloc=alloc)
    plain = decode_image(data, max_pixels=NO_LIMIT)
    assert dec.status == plain.status == "ok"
    np.testing.assert_array_equal(dec.array, plain.array)
    if mode == "I;16":  # scaled by numpy into an array of its own
        assert made == []
    else:
        assert len(made) == 1 and dec.array is made[0]
