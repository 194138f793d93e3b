"""The encode stage behind the model: each batch's detections turned into its images' rows, in
threads or in processes.

Where the model runs on the CPU, encoder threads share the process with it (the model itself
uses the cores). Where it runs on CUDA the model's thread is mostly Python launching kernels,
and every encoder thread holding the GIL takes from it: measured on an H200 the pipeline kept
0.5-0.6 of the model's rate whatever the number of encoder threads (1, 4 or 16). There the
encoder runs in spawned processes: a batch's detections are copied to the host (one sync on
the model's stream), sent as numpy arrays, and encoded by ``encode.masks`` on the CPU, where it
gives the same bits as on the device (see that module). Rows never depend on which was used.

In threads on CUDA, each thread does its device work on its own stream, which waits for the
model's batch (an event) rather than the model waiting for it.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mrcnn_batch.encode.masks import COMPILED
from mrcnn_batch.encode.rows import Columns, encode_detections
from mrcnn_batch.predict.predictor import ImageDetections
from mrcnn_batch.schemas import TABLES  # the tables a shard writes, by name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFacts:
    """What an image's ``images`` row needs (its pixels stay behind), its final status included."""

    position: int  # in the shard's plan order
    image_id: int
    uri: str
    status: str
    error: str | None
    width: int | None
    height: int | None


@dataclass(frozen=True)
class PredictError:
    """The model raised on this image (alone): the message goes into its row."""

    message: str


def encode_batch(
    shard: int, images: list[ImageFacts], detections: list[Any], *, categories: tuple[str, ...],
    mask_threshold: float, refine_masks: str | None = None, pixels: list[np.ndarray | None] | None = None,
) -> dict[int, dict[str, Columns]]:
    """Each image's rows, apart (plan position -> table -> columns); ``detections[i]`` is a
    ``ImageDetections`` (tensors or, from another process, numpy arrays), or a ``PredictError`` or
    None (nothing to encode; the facts carry the status). With ``refine_masks``, ``pixels[i]``
    is image i's H x W x 3 uint8 array where it has masks to refine (else None)."""
    out = {}
    for i, (facts, det) in enumerate(zip(images, detections)):
        cols = {name: Columns() for name in TABLES}
        n_inst, n_kp = 0, 0
        if isinstance(det, ImageDetections):
            refine = {} if refine_masks is None else {"refine_masks": refine_masks, "image": pixels[i]}
            n_inst, n_kp = encode_detections(
                _as_tensors(det), image_id=facts.image_id, height=facts.height, width=facts.width,
                categories=categories, mask_threshold=mask_threshold,
                instances=cols["instances"], keypoints=cols["keypoints"], **refine,
            )
        cols["images"].extend(
            image_id=[facts.image_id], uri=[facts.uri], shard=[shard], status=[facts.status], error=[facts.error],
            width=[facts.width], height=[facts.height], num_instances=[n_inst], num_keypoints=[n_kp],
        )
        out[facts.position] = cols
    return out


class Encoder:
    """Runs ``encode_batch`` for each batch the model finishes: ``workers`` threads, or as many
    spawned processes (``processes=True``)."""

    def __init__(self, workers: int, *, processes: bool, device: torch.device):
        self.workers = workers
        self.processes = processes
        self.device = device
        self._streams = threading.local()  # each encoder thread's CUDA stream
        self._pool: Executor
        if not COMPILED:
            log.warning("the compiled mask encoder (mrcnn_batch/encode/_paste.c) was not built where the "
                        "package was installed (no C compiler?): masks are encoded by torch ops, the same "
                        "rows at about a third of the speed")
        if processes:
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_one_thread)
        else:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="encode")

    def submit(self, shard: int, images: list[ImageFacts], detections: list[Any], **options: Any) -> Future:
        """Queue a batch just predicted (called on the model's thread, after the batch)."""
        if self.processes:
            return self._pool.submit(encode_batch, shard, images, _to_numpy(detections), **options)
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        return self._pool.submit(self._on_stream, ready, shard, images, detections, options)

    def _on_stream(self, ready, shard, images, detections, options):
        with self._stream_after(ready):
            # the last device work is a copy to the host that this thread waits for: the batch's
            # tensors are no longer read on this stream when they are freed
            return encode_batch(shard, images, detections, **options)

    def _stream_after(self, ready: torch.cuda.Event | None):
        if ready is None:
            return nullcontext()
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(device=self.device)
        stream.wait_event(ready)
        return torch.cuda.stream(stream)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _one_thread() -> None:
    torch.set_num_threads(1)  # one process per core: no oversubscription


def _to_numpy(detections: list[Any]) -> list[Any]:
    """Detections as host numpy arrays (pickled as plain bytes), copied from the device with one
    wait for the model's stream."""
    tensors = [(i, f.name, getattr(d, f.name)) for i, d in enumerate(detections) if isinstance(d, ImageDetections)
               for f in dataclasses.fields(d) if isinstance(getattr(d, f.name), torch.Tensor)]
    host = [(i, name, t.to("cpu", non_blocking=True)) for i, name, t in tensors]
    if any(t.is_cuda for _, _, t in tensors):
        torch.cuda.current_stream(tensors[0][2].device).synchronize()
    out = [dataclasses.replace(d) if isinstance(d, ImageDetections) else d for d in detections]
    for i, name, t in host:
        setattr(out[i], name, t.numpy())
    return out


def _as_tensors(det: ImageDetections) -> ImageDetections:
    """``det`` with torch tensors where another process sent numpy arrays."""
    if not isinstance(det.boxes, np.ndarray):
        return det
    values = {f.name: getattr(det, f.name) for f in dataclasses.fields(det)}
    return ImageDetections(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) and k != "kp_instance" else v
                         for k, v in values.items()})
