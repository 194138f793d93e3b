"""Decoding JPEGs on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``), the rest on the CPU.

Off by default (``--gpu-decode``): nvJPEG's inverse DCT and chroma upsampling are not
libjpeg-turbo's, so pixels, and then scores, differ slightly from the CPU decode; the option is
part of a run's identity. What it changes is where the decode's work is done, nothing else:

* the header is read on the CPU (PIL, no pixels decoded) for the format, the size, the pixel
  limit (checked before any decoding, as on the CPU) and the EXIF orientation;
* a baseline or progressive JPEG in RGB or grayscale is decoded on the device to a
  3 x H x W uint8 tensor and turned upright there, with the same transposes as
  ``ImageOps.exif_transpose`` (:func:`orient`);
* anything else (PNG, CMYK JPEGs, a JPEG without its end marker, as a cut-off file is, or one
  nvJPEG refuses) goes through ``read.decode`` on the CPU and gets its status from there: a
  corrupt file is a ``decode_error`` row either way.

Each reader thread decodes on its own CUDA stream and waits for it before handing the tensor
on, so the model's stream never waits on a decode; the model records its stream on the tensor
(``Tensor.record_stream``) before using it.
"""

from __future__ import annotations

import io
import warnings

import torch
from PIL import ExifTags, Image

from mrcnn_batch.read.decode import Decoded, decode_image
from mrcnn_batch.read.to_device import reader_stream

_GPU_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes to RGB


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """``pixels`` (C x H x W) turned as ``ImageOps.exif_transpose`` turns an image of that EXIF
    orientation (1..8; others leave it as stored)."""
    h, w = -2, -1
    if orientation == 2:  # mirrored left to right
        return pixels.flip(w)
    if orientation == 3:  # upside down
        return pixels.flip(h, w)
    if orientation == 4:  # mirrored top to bottom
        return pixels.flip(h)
    if orientation == 5:  # PIL's TRANSPOSE: across the main diagonal
        return pixels.transpose(h, w)
    if orientation == 6:  # PIL's ROTATE_270: a quarter turn clockwise
        return pixels.rot90(-1, (h, w))
    if orientation == 7:  # PIL's TRANSVERSE: across the other diagonal
        return pixels.transpose(h, w).flip(h, w)
    if orientation == 8:  # PIL's ROTATE_90: a quarter turn counter-clockwise
        return pixels.rot90(1, (h, w))
    return pixels


def decode_on_device(
    data: bytes, *, device: torch.device, max_pixels: int, exif_transpose: bool = True
) -> Decoded:
    """``data`` decoded to a 3 x H x W uint8 tensor on ``device`` where it is a JPEG nvJPEG
    takes; otherwise ``read.decode.decode_image``'s result (pixels on the CPU, or a status)."""
    header = _jpeg_header(data)
    if header is None:
        return decode_image(data, max_pixels=max_pixels, exif_transpose=exif_transpose)
    width, height, orientation = header
    if width * height > max_pixels:
        return decode_image(data, max_pixels=max_pixels, exif_transpose=exif_transpose)  # too_large
    from torchvision.io import ImageReadMode, decode_jpeg

    stream = reader_stream(device)
    try:
        with torch.cuda.stream(stream):
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            pixels = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
            if exif_transpose:
                pixels = orient(pixels, orientation)
        stream.synchronize()  # this reader thread waits; the model's stream does not
    except (RuntimeError, ValueError):  # a JPEG nvJPEG refuses, or corrupt data: the CPU decides
        return decode_image(data, max_pixels=max_pixels, exif_transpose=exif_transpose)
    return Decoded("ok", None, pixels, width=int(pixels.shape[-1]), height=int(pixels.shape[-2]))


def _jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) of a JPEG nvJPEG decodes, else None (PIL reads only
    the header here)."""
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return None  # not a JPEG, or one cut short (no end marker): the CPU decode says what it is
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            if im.format != "JPEG" or im.mode not in _GPU_MODES:
                return None
            try:
                orientation = int(im.getexif().get(ExifTags.Base.Orientation, 1))
            except Exception:  # noqa: BLE001 - a broken EXIF block leaves the pixels as stored
                orientation = 1
    except Exception:  # noqa: BLE001 - a broken header: the CPU decode says what is wrong
        return None
    w, h = im.size
    return w, h, orientation
