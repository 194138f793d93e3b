"""The in-process executor: one processor, ``SHARDS_IN_FLIGHT`` shards at a time (so that the
model goes on while a shard commits; see ``run.processor``), bounded retries."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import pyarrow as pa

from mrcnn_batch.config import RunConfig
from mrcnn_batch.models.weights import Weights
from mrcnn_batch.plan import shard_ranges
from mrcnn_batch.run.lease import Fence, FencedOut
from mrcnn_batch.run.processor import (
    SHARDS_IN_FLIGHT,
    ImageRef,
    ShardProcessor,
    shard_images,
)

log = logging.getLogger(__name__)


def run_local(
    pending: list[int],
    plan: pa.Table,
    *,
    config: RunConfig,
    run_id: str,
    weights: Weights,
    on_commit: Callable[[dict[str, Any]], None],
    max_attempts: int = 3,
    fence: Fence | None = None,
) -> dict[int, str]:
    processor = ShardProcessor(config, run_id=run_id, weights=weights, fence=fence)
    ranges = shard_ranges(plan)
    failed: dict[int, str] = {}
    queue = deque(pending)
    inflight: dict[Future, int] = {}
    try:
        with ThreadPoolExecutor(SHARDS_IN_FLIGHT, thread_name_prefix="shard") as pool:
            while queue or inflight:
                while queue and len(inflight) < SHARDS_IN_FLIGHT:
                    processor.check_fence()  # before dispatching: a driver that lost its run stops here
                    shard = queue.popleft()
                    images = shard_images(plan.slice(*ranges[shard]))
                    inflight[pool.submit(_attempts, processor, shard, images, max_attempts)] = shard
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=inflight.get):
                    shard = inflight.pop(future)
                    record, reason = future.result()  # FencedOut propagates
                    if record is not None:
                        on_commit(record)  # on this thread, in the order shards finish
                    else:
                        failed[shard] = reason
    finally:
        processor.close()
    return failed


def _attempts(processor: ShardProcessor, shard: int, images: list[ImageRef], max_attempts: int):
    """(record, None) once the shard commits, or (None, the last failure) after max_attempts."""
    reason = ""
    for attempt in range(1, max_attempts + 1):
        try:
            return processor(shard, images), None
        except FencedOut:
            raise
        except Exception as e:  # noqa: BLE001 - a shard's failure is reported, not fatal
            reason = f"{type(e).__name__}: {e}"
            log.warning("shard %d attempt %d/%d failed: %s", shard, attempt, max_attempts, e)
    return None, reason
