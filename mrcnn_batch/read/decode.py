"""Decoding image bytes to an RGB uint8 array, or to the reason it could not be done.

Handled: grayscale, 1-bit, palette (with or without transparency), RGBA/LA (alpha dropped, as
torchvision's ``ImageReadMode.RGB`` does), CMYK and YCbCr (PIL's conversion), 16- and 32-bit
integer images (scaled to 8 bits by their bit depth), multi-frame files (first frame). EXIF
orientation is applied by default, so the recorded width and height are those the model saw.
The pixel limit guards against decompression bombs and is checked from the header, before any
pixel is decoded. This module owns that limit: PIL's own global check is switched off here.

Copies: the decoded pixels are copied once more, into the returned array, when they are already
RGB and upright (a plain photo). A transpose happens only when the orientation tag asks for one
(2..8; 1, absent or unreadable leave the pixels as stored), a mode conversion only when the image
is not RGB. The array is packed from PIL's internal RGBX rows by PIL's raw encoder straight into
a preallocated array, chunk by chunk: ``np.asarray(image)`` would pack into chunks, join them into
one read-only ``bytes`` (a second copy), and make the writable copy torch needs a third.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = None  # the limit is ReadConfig.max_pixels, checked below

_PACK_CHUNK = 1 << 17  # bytes per raw-encoder call: a cache-sized piece, copied while still hot


@dataclass(frozen=True)
class Decoded:
    """An image ready for the model (``status == "ok"``), or why it is not."""

    status: str
    error: str | None = None
    array: np.ndarray | None = None  # H x W x 3, uint8
    width: int | None = None
    height: int | None = None


def decode_image(data: bytes, *, max_pixels: int, exif_transpose: bool = True,
                 alloc: Callable[[tuple[int, int, int]], np.ndarray] | None = None) -> Decoded:
    """``data`` decoded, or why it cannot be. ``alloc(shape)`` makes the uint8 array the pixels
    are packed into (``read.to_device.pinned_alloc``: page-locked memory); default :func:`host_array`."""
    if len(data) == 0:
        return Decoded("decode_error", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return Decoded(
            "decode_error", f"not a recognised image format (starts with {data[:8]!r})"
        )
    except Exception as e:  # noqa: BLE001 - a broken header is this image's problem only
        return Decoded("decode_error", f"cannot read image header: {e}")
    w, h = im.size
    if w * h > max_pixels:
        return Decoded(
            "too_large",
            f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (--max-pixels)",
            width=w,
            height=h,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.seek(0)
            im.load()
            if exif_transpose:
                im = _exif_transpose(im)
            array = _to_rgb(im, alloc or host_array)
    except _Unsupported as e:
        return Decoded("unsupported", str(e), width=w, height=h)
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data
        return Decoded("decode_error", f"cannot decode {im.format or 'image'} data: {e}")
    return Decoded("ok", None, array, width=array.shape[1], height=array.shape[0])


def host_array(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array in ordinary host memory."""
    return np.empty(shape, dtype=np.uint8)


class _Unsupported(Exception):
    pass


def _exif_transpose(im: Image.Image) -> Image.Image:
    """``im`` turned upright, or ``im`` itself (no copy) when its orientation is 1 or unknown."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation not in range(2, 9):  # the values ImageOps.exif_transpose acts on
            return im
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block leaves the pixels as stored
        return im


def _to_rgb(im: Image.Image, alloc: Callable) -> np.ndarray:
    """A fresh, writable, C-contiguous H x W x 3 uint8 array of ``im``'s pixels as RGB (from
    ``alloc`` where PIL packs them; 16- and 32-bit images are scaled by numpy)."""
    mode = im.mode
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit signed)
        raw = np.asarray(im)
        bits = 16 if mode.startswith("I;16") or raw.max(initial=0) <= 0xFFFF else 32
        gray = (np.clip(raw, 0, None).astype(np.uint64) >> (bits - 8)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise _Unsupported("floating-point images (PIL mode 'F') have no defined RGB scale")
    if mode in ("P", "PA") and "transparency" in im.info or mode in ("PA", "RGBa", "La"):
        im = im.convert("RGBA")  # resolves the transparency / premultiplication, as before
    if im.mode != "RGB":  # RGBA and LA drop alpha; L, 1, P, CMYK, YCbCr, LAB, HSV convert
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise _Unsupported(f"PIL mode {mode!r} cannot be converted to RGB: {e}") from None
    return _pack_rgb(im, alloc)


def _pack_rgb(im: Image.Image, alloc: Callable) -> np.ndarray:
    """The pixels of an RGB image, packed by PIL's raw encoder into one new array (one copy)."""
    w, h = im.size
    out = alloc((h, w, 3))
    if out.size == 0:
        return out
    dest = memoryview(out).cast("B")
    encoder = Image._getencoder("RGB", "raw", "RGB")  # what Image.tobytes() uses
    encoder.setimage(im.im, (0, 0, w, h))
    pos, status = 0, 0
    while status == 0:
        _, status, chunk = encoder.encode(max(_PACK_CHUNK, 4 * w))  # at least one row per call
        dest[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    if status < 0 or pos != out.nbytes:
        raise RuntimeError(f"PIL's raw encoder stopped after {pos} of {out.nbytes} bytes (code {status})")
    return out
