"""The shard processor: a callable class that turns one shard of the plan into committed files.

Load the model in ``__init__``, handle a shard in ``__call__`` (the Ray Data pattern): the same
object runs in-process, in a Ray actor, or on a batch in a test. Inside a shard three stages
overlap: a reader pool fetches and decodes the next batches while the model runs on the current
one, and an encoder thread pastes masks, encodes RLE and builds rows behind it. Every planned
image leaves exactly one ``images`` row, whatever happened to it. The commit marker is written
last (see ``run.layout``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrcnn_batch.config import RunConfig
from mrcnn_batch.encode.rows import Columns, encode_detections
from mrcnn_batch.models.loaded import LoadedModel, build_model
from mrcnn_batch.models.weights import Weights
from mrcnn_batch.predict.predictor import Predictor, Speed, pick_device
from mrcnn_batch.read import Decoded, decode_image, fetch_all
from mrcnn_batch.run.layout import CommitRecord, RunDir, commit_path, table_path
from mrcnn_batch.run.lease import Fence
from mrcnn_batch.write.tables import build_table, table_bytes

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class ImageRef:
    image_id: int
    uri: str


class ShardProcessor:
    """Processes shards of one run with one loaded model."""

    def __init__(self, config: RunConfig, *, run_id: str, weights: Weights, model: LoadedModel | None = None,
                 fence: Fence | None = None):
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
        )
        speed = Speed(amp=p.amp, channels_last=p.channels_last)
        self.predictor = Predictor(model, device=self.device, classes=p.classes, speed=speed)
        self.categories = model.spec.categories
        self.run = RunDir(config.output, config.output_storage_options)
        self._readers = ThreadPoolExecutor(PREFETCH_BATCHES, thread_name_prefix="read")
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="encode")

    # -- one shard -------------------------------------------------------------------------
    def __call__(self, shard: int, images: list[ImageRef]) -> dict[str, Any]:
        start = time.perf_counter()
        bs = max(1, self.config.predict.batch_size)
        batches = [images[i : i + bs] for i in range(0, len(images), bs)]
        cols = {"images": Columns(), "instances": Columns(), "keypoints": Columns()}
        pending_reads: list[Future] = [self._readers.submit(self._load, b) for b in batches[:PREFETCH_BATCHES]]
        encoded: list[Future] = []
        model_seconds = 0.0
        for i, batch in enumerate(batches):
            loaded = pending_reads[i].result()
            if i + PREFETCH_BATCHES < len(batches):
                pending_reads.append(self._readers.submit(self._load, batches[i + PREFETCH_BATCHES]))
            t0 = time.perf_counter()
            detections = self._predict(loaded)
            model_seconds += time.perf_counter() - t0
            encoded.append(self._encoder.submit(self._encode, shard, loaded, detections, cols))
        for f in encoded:
            f.result()
        return self._commit(shard, cols, start=start, model_seconds=model_seconds)

    def _load(self, batch: list[ImageRef]) -> list[tuple[ImageRef, Decoded]]:
        read = self.config.read
        data = fetch_all(
            [ref.uri for ref in batch],
            storage_options=self.config.input.storage_options,
            threads=read.io_threads,
        )
        out = []
        for ref, blob in zip(batch, data):
            if isinstance(blob, BaseException):
                out.append((ref, Decoded("read_error", _describe(blob))))
            else:
                out.append(
                    (ref, decode_image(blob, max_pixels=read.max_pixels, exif_transpose=read.exif_transpose))
                )
        return out

    def _predict(self, loaded: list[tuple[ImageRef, Decoded]]) -> list[Any]:
        """Detections per image (None where it was not predicted, or the error it raised)."""
        ok = [i for i, (_, d) in enumerate(loaded) if d.status == "ok"]
        out: list[Any] = [None] * len(loaded)
        if not ok:
            return out
        try:
            for i, det in zip(ok, self.predictor([loaded[i][1].array for i in ok])):
                out[i] = det
        except Exception:  # noqa: BLE001 - retry one by one to isolate the failing image
            if len(ok) == 1:
                out[ok[0]] = _PredictError(_describe_current())
                return out
            for i in ok:
                try:
                    out[i] = self.predictor([loaded[i][1].array])[0]
                except Exception as e:  # noqa: BLE001
                    out[i] = _PredictError(_describe(e))
        return out

    def _encode(self, shard: int, loaded, detections, cols: dict[str, Columns]) -> None:
        p = self.config.predict
        for (ref, dec), det in zip(loaded, detections):
            status, error, n_inst, n_kp = dec.status, dec.error, 0, 0
            if isinstance(det, _PredictError):
                status, error = "predict_error", det.message
            elif det is not None:
                n_inst, n_kp = encode_detections(
                    det,
                    image_id=ref.image_id,
                    height=dec.height,
                    width=dec.width,
                    categories=self.categories,
                    mask_threshold=p.mask_threshold,
                    instances=cols["instances"],
                    keypoints=cols["keypoints"],
                )
            if status != "ok":
                log.warning("image %d (%s, shard %d): %s: %s", ref.image_id, ref.uri, shard, status, error)
            cols["images"].extend(
                image_id=[ref.image_id],
                uri=[ref.uri],
                shard=[shard],
                status=[status],
                error=[error],
                width=[dec.width],
                height=[dec.height],
                num_instances=[n_inst],
                num_keypoints=[n_kp],
            )

    def _commit(self, shard: int, cols: dict[str, Columns], *, start: float, model_seconds: float) -> dict[str, Any]:
        self.check_fence()
        rows, sizes = {}, {}
        for name, c in cols.items():
            table = build_table(name, c.data, categories=self.categories, run_id=self.run_id)
            sizes[name] = self.run.write_bytes(table_path(name, shard), table_bytes(table))
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
        self.run.write_bytes(commit_path(shard), record.to_json())  # last: the shard now exists
        return record.as_dict()

    def check_fence(self) -> None:
        """Raise ``FencedOut`` where this run's driver lost its lease (no fence: always holds)."""
        if self.fence is not None:
            self.fence.check(self.run)

    def close(self) -> None:
        self._readers.shutdown(wait=True)
        self._encoder.shutdown(wait=True)


@dataclass(frozen=True)
class _PredictError:
    message: str


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
