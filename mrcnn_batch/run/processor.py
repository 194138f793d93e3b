"""The shard processor: a callable class that turns one shard of the plan into committed files.

Load the model in ``__init__``, handle a shard in ``__call__`` (the Ray Data pattern): the same
object runs in-process, in a Ray actor, or on a batch in a test. Inside a shard three stages
overlap: a reader pool fetches and decodes the next images while the model runs, and encoder
threads (as many as the worker's CPUs) paste masks, encode RLE and build rows behind it.

On CUDA the encoders are processes, so that they never hold the model thread's GIL (see
``run.encoding``), and the readers copy the pixels to the device on their own streams, from
pinned memory (see ``read.to_device``), so the model's thread never waits for a host copy. With
``--gpu-decode`` the readers decode JPEGs on the device (see ``read.gpu_decode``).

Batches never change results (see ``predict.batching``): decoded images wait in a window of
``WINDOW_BATCHES`` batches for batch-mates of the same input shape; a batch runs when it is full
(``batch_size``) or when the window must move on. Each image's rows are encoded apart and the
shard's tables are concatenated in plan order, so the files are the same at any batch size or
number of encoder threads (up to the float noise ``predict.batching`` describes). Every planned
image leaves exactly one ``images`` row, whatever happened to it. The commit marker is written
last (see ``run.layout``).

No idle model at shard boundaries: executors give a processor ``SHARDS_IN_FLIGHT`` shards at
once (a thread each; a Ray actor runs that many calls concurrently). The model runs one batch
at a time under a lock, so while one shard's last rows are encoded and its files written and
committed, the next shard's images are already read, decoded and predicted. Each file of a
commit is retried with backoff (the same bytes to the same name), so a failed PUT never
repeats a shard's inference; errors no retry can help (disk full, read-only, denied) are not.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mrcnn_batch.config import RunConfig
from mrcnn_batch.encode.refine import check_method
from mrcnn_batch.encode.rows import Columns
from mrcnn_batch.errors import StorageError, UsageError
from mrcnn_batch.models.loaded import LoadedModel, build_model
from mrcnn_batch.models.weights import Weights
from mrcnn_batch.predict.batching import Bucketer
from mrcnn_batch.predict.predictor import ImageDetections, Predictor, Speed, pick_device
from mrcnn_batch.read import Decoded, TooLarge, decode_image, fetch_all
from mrcnn_batch.read.gpu_decode import decode_on_device
from mrcnn_batch.read.to_device import pinned_alloc, upload
from mrcnn_batch.run.encoding import TABLES, Encoder, ImageFacts, PredictError
from mrcnn_batch.run.layout import CommitRecord, RunDir, commit_path, table_path
from mrcnn_batch.run.lease import Fence
from mrcnn_batch.write.tables import build_table, table_bytes

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2  # read chunks (batch_size images each) fetched and decoded ahead
WINDOW_BATCHES = 4  # decoded images wait for batch-mates among this many batches' worth
ENCODE_JOBS_PER_THREAD = 2  # batches waiting for an encoder; then the model waits
SHARDS_IN_FLIGHT = 2  # shards an executor gives one processor at a time (see the module doc)
WRITE_ATTEMPTS = 3  # tries of each file of a commit (the same bytes to the same name: idempotent)
WRITE_BACKOFF_S = 0.25  # before the second try; doubled before each next one
NOT_TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}  # no retry helps
UPLOAD_IN_READERS = True  # on CUDA (see the module doc); False: the model's thread copies (benchmarks)


@dataclass(frozen=True)
class ImageRef:
    image_id: int
    uri: str


@dataclass(frozen=True)
class _Item:
    """One image of the shard on its way through: its plan position, reference and pixels."""

    position: int
    ref: ImageRef
    decoded: Decoded


def encoder_threads() -> int:
    """As many encoder threads as the CPUs this worker may use: its CPU affinity, capped by
    torch's thread count (a Ray actor sets it to its share of the node), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, torch.get_num_threads()))


class ShardProcessor:
    """Processes shards of one run with one loaded model."""

    def __init__(self, config: RunConfig, *, run_id: str, weights: Weights, model: LoadedModel | None = None,
                 fence: Fence | None = None, encoder: str = "auto"):
        """``encoder``: "threads", "processes", or "auto" (processes where the model runs on CUDA)."""
        p = config.predict
        self.fence = fence  # checked before a shard's files and before its marker (see run.lease)
        self.config = config
        self.run_id = run_id
        self.device = pick_device(p.device)
        model = model or build_model(
            p.model,
            weights,
            min_size=p.min_size,
            max_size=p.max_size,
            score_threshold=p.score_threshold,
            max_detections=p.max_detections,
            rpn_proposals=p.rpn_proposals,
        )
        speed = Speed(amp=p.amp, channels_last=p.channels_last)
        self.predictor = Predictor(model, device=self.device, classes=p.classes, speed=speed)
        self.categories = model.spec.categories
        self.run = RunDir(config.output, config.output_storage_options)
        if config.read.gpu_decode and self.device.type != "cuda":
            raise UsageError(f"--gpu-decode decodes JPEGs on a CUDA device; this worker's device is {self.device}")
        check_method(p.refine_masks)  # OpenCV on this worker, before its first shard
        # (not with --refine-masks: the refinement reads the pixels on the host)
        self._upload = UPLOAD_IN_READERS and self.device.type == "cuda" and p.refine_masks is None
        self._readers = ThreadPoolExecutor(PREFETCH_BATCHES * SHARDS_IN_FLIGHT, thread_name_prefix="read")
        self._model_lock = threading.Lock()  # one batch on the model at a time, whichever shard
        workers = encoder_threads()
        processes = encoder == "processes" or (encoder == "auto" and self.device.type == "cuda")
        self._encoder = Encoder(workers, processes=processes, device=self.device)
        self._max_encode_jobs = ENCODE_JOBS_PER_THREAD * workers

    # -- one shard -------------------------------------------------------------------------
    def __call__(self, shard: int, images: list[ImageRef]) -> dict[str, Any]:
        start = time.perf_counter()
        bs = max(1, self.config.predict.batch_size)
        chunks = [images[i : i + bs] for i in range(0, len(images), bs)]
        reads: deque[Future] = deque(self._readers.submit(self._load, c) for c in chunks[:PREFETCH_BATCHES])
        bucketer = Bucketer(batch_size=bs, window=WINDOW_BATCHES * bs)
        encoding: deque[Future] = deque()
        rows: dict[int, dict[str, Columns]] = {}  # plan position -> that image's rows
        model_seconds = 0.0

        def run(batch: list[_Item]) -> None:
            nonlocal model_seconds
            t0 = time.perf_counter()
            if batch[0].decoded.status == "ok":
                with self._model_lock:
                    detections = self._predict(batch)
            else:
                detections = [None]
            model_seconds += time.perf_counter() - t0
            while len(encoding) >= self._max_encode_jobs:  # a bounded queue: the model waits
                rows.update(encoding.popleft().result())
            facts = [self._facts(shard, item, det) for item, det in zip(batch, detections)]
            refine = {}
            if self.config.predict.refine_masks is not None:  # the pixels go along, for images with masks
                refine = {"refine_masks": self.config.predict.refine_masks,
                          "pixels": [_host_pixels(item.decoded) if _has_masks(det) else None
                                     for item, det in zip(batch, detections)]}
            encoding.append(self._encoder.submit(shard, facts, detections, categories=self.categories,
                                                 mask_threshold=self.config.predict.mask_threshold, **refine))

        position = 0
        for i in range(len(chunks)):
            loaded = reads.popleft().result()
            if i + PREFETCH_BATCHES < len(chunks):
                reads.append(self._readers.submit(self._load, chunks[i + PREFETCH_BATCHES]))
            for ref, dec in loaded:
                item = _Item(position, ref, dec)
                position += 1
                if dec.status != "ok":
                    run([item])  # nothing to predict: straight to its images row
                    continue
                for batch in bucketer.add(self.predictor.batch_key(dec.height, dec.width), item):
                    run(batch)
        for batch in bucketer.drain():
            run(batch)
        while encoding:
            rows.update(encoding.popleft().result())
        cols = {name: Columns() for name in TABLES}
        for p in sorted(rows):  # plan order, whatever the batches were
            for name in TABLES:
                cols[name].extend(**rows[p][name].data)
        return self._commit(shard, cols, start=start, model_seconds=model_seconds)

    def _load(self, batch: list[ImageRef]) -> list[tuple[ImageRef, Decoded]]:
        read = self.config.read
        data = fetch_all(
            [ref.uri for ref in batch],
            storage_options=self.config.input.storage_options,
            threads=read.io_threads,
            max_bytes=read.max_bytes,
        )
        out = []
        for ref, blob in zip(batch, data):
            if isinstance(blob, TooLarge):
                out.append((ref, Decoded("too_large", str(blob))))
            elif isinstance(blob, BaseException):
                out.append((ref, Decoded("read_error", _describe(blob))))
            else:
                out.append((ref, self._decode(blob)))
        return out

    def _decode(self, blob: bytes) -> Decoded:
        """An image's pixels where the model will read them (or its status)."""
        read = self.config.read
        if read.gpu_decode:
            decoded = decode_on_device(blob, device=self.device, max_pixels=read.max_pixels,
                                       exif_transpose=read.exif_transpose)
        else:
            decoded = decode_image(blob, max_pixels=read.max_pixels, exif_transpose=read.exif_transpose,
                                   alloc=pinned_alloc if self._upload else None)
        return upload(decoded, self.device) if self._upload else decoded  # (--gpu-decode's fallbacks too)

    def _predict(self, batch: list[_Item]) -> list[Any]:
        """The detections of each image of one batch (or the error an image raised)."""
        try:
            return list(self.predictor([item.decoded.array for item in batch]))
        except Exception:  # noqa: BLE001 - retry one by one to isolate the failing image
            if len(batch) == 1:
                return [PredictError(_describe_current())]
        out: list[Any] = []
        for item in batch:
            try:
                out.append(self.predictor([item.decoded.array])[0])
            except Exception as e:  # noqa: BLE001
                out.append(PredictError(_describe(e)))
        return out

    @staticmethod
    def _facts(shard: int, item: _Item, det: Any) -> ImageFacts:
        """The image's row facts, its final status included (the model's error where it raised)."""
        ref, dec = item.ref, item.decoded
        status, error = ("predict_error", det.message) if isinstance(det, PredictError) else (dec.status, dec.error)
        if status != "ok":
            log.warning("image %d (%s, shard %d): %s: %s", ref.image_id, ref.uri, shard, status, error)
        return ImageFacts(item.position, ref.image_id, ref.uri, status, error, dec.width, dec.height)

    def _commit(self, shard: int, cols: dict[str, Columns], *, start: float, model_seconds: float) -> dict[str, Any]:
        self.check_fence()
        rows, sizes = {}, {}
        for name, c in cols.items():
            table = build_table(name, c.data, categories=self.categories, run_id=self.run_id)
            sizes[name] = self._write(table_path(name, shard), table_bytes(table))
            rows[name] = table.num_rows
        statuses = Counter(cols["images"].data.get("status", []))
        record = CommitRecord(
            shard=shard,
            run_id=self.run_id,
            rows=rows,
            bytes=sizes,
            status_counts=dict(sorted(statuses.items())),
            worker=f"{socket.gethostname()}:{os.getpid()}",
            committed_at=time.time(),
            seconds=round(time.perf_counter() - start, 3),
            model_seconds=round(model_seconds, 3),
        )
        self.check_fence()
        self._write(commit_path(shard), record.to_json())  # last: the shard now exists
        return record.as_dict()

    def _write(self, rel: str, data: bytes) -> int:
        """``run.write_bytes``, tried again with backoff where the error may pass."""
        for attempt in range(1, WRITE_ATTEMPTS):
            try:
                return self.run.write_bytes(rel, data)
            except StorageError as e:
                if getattr(e.__cause__, "errno", None) in NOT_TRANSIENT:
                    raise
                delay = WRITE_BACKOFF_S * 2 ** (attempt - 1)
                log.warning("%s (try %d of %d; again in %.1fs)", e, attempt, WRITE_ATTEMPTS, delay)
                time.sleep(delay)
        return self.run.write_bytes(rel, data)  # the last try: its error is the shard's

    def check_fence(self) -> None:
        """Raise ``FencedOut`` where this run's driver lost its lease (no fence: always holds)."""
        if self.fence is not None:
            self.fence.check(self.run)

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._encoder.close()


def _has_masks(det: Any) -> bool:
    return isinstance(det, ImageDetections) and det.masks is not None and len(det.masks) > 0


def _host_pixels(decoded: Decoded) -> np.ndarray:
    """The decoded image as H x W x 3 uint8 on the host (``--gpu-decode`` leaves 3 x H x W on the device)."""
    if isinstance(decoded.array, torch.Tensor):
        return decoded.array.permute(1, 2, 0).contiguous().cpu().numpy()
    return decoded.array


def _describe(e: BaseException) -> str:
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}"


def _describe_current() -> str:
    import sys

    return _describe(sys.exc_info()[1])


def shard_images(plan_shard) -> list[ImageRef]:
    ids = plan_shard.column("image_id").to_numpy()
    uris = plan_shard.column("uri").to_pylist()
    return [ImageRef(int(i), u) for i, u in zip(np.asarray(ids), uris)]
