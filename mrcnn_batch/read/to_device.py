"""Decoded pixels onto the model's CUDA device from the reader threads, not the model's thread.

The model's thread launches the forward's kernels; a copy of an image from pageable host memory
blocks the thread that asks for it (the CUDA driver stages it through a pinned buffer), and at
1920x1080 a batch of 8 is 50 MB. So where the model runs on CUDA a reader decodes into pinned
host memory (:func:`pinned_alloc`, handed to ``read.decode.decode_image``) and copies the pixels
to the device on its own stream (:func:`upload`), waiting for that stream itself: the model
gets a device tensor and never waits for a host copy. (Not with ``--refine-masks``, whose
refinement reads the pixels on the host: there the model's thread copies, as before.)

Nothing else changes: the same bytes arrive on the device as the model's own copy would bring,
as the same 3 x H x W uint8 view of an H x W x 3 array (``Predictor`` converts it to float on
the device either way), so rows are those of the copy on the model's thread.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import torch

from mrcnn_batch.read.decode import Decoded

_local = threading.local()


def pinned_alloc(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array in page-locked host memory (torch's caching host allocator:
    the pages are reused once the array is freed and its copy has finished)."""
    return torch.empty(shape, dtype=torch.uint8, pin_memory=True).numpy()


def upload(decoded: Decoded, device: torch.device) -> Decoded:
    """``decoded`` with its pixels as a 3 x H x W uint8 tensor on ``device`` (a view of the
    H x W x 3 copy); statuses other than "ok", and pixels already on a device, are returned as
    they are."""
    if decoded.status != "ok" or not isinstance(decoded.array, np.ndarray):
        return decoded
    stream = reader_stream(device)
    with torch.cuda.stream(stream):
        pixels = torch.from_numpy(decoded.array).to(device, non_blocking=True).permute(2, 0, 1)
    stream.synchronize()  # this reader waits for its copy; the host array may go now
    return dataclasses.replace(decoded, array=pixels)


def reader_stream(device: torch.device) -> torch.cuda.Stream:
    """This thread's own CUDA stream on ``device``."""
    streams = getattr(_local, "streams", None)
    if streams is None:
        streams = _local.streams = {}
    key = torch.device(device).index or 0
    if key not in streams:
        streams[key] = torch.cuda.Stream(device=device)
    return streams[key]
