"""The in-process executor: shards one after another with one processor, bounded retries."""

from __future__ import annotations

import logging
from typing import Any, Callable

import pyarrow as pa

from mrcnn_batch.config import RunConfig
from mrcnn_batch.models.weights import Weights
from mrcnn_batch.plan import shard_ranges
from mrcnn_batch.run.lease import Fence, FencedOut
from mrcnn_batch.run.processor import ShardProcessor, shard_images

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
    try:
        for shard in pending:
            processor.check_fence()  # before dispatching: a driver that lost its run stops here
            images = shard_images(plan.slice(*ranges[shard]))
            for attempt in range(1, max_attempts + 1):
                try:
                    on_commit(processor(shard, images))
                    failed.pop(shard, None)
                    break
                except FencedOut:
                    raise
                except Exception as e:  # noqa: BLE001 - a shard's failure is reported, not fatal
                    failed[shard] = f"{type(e).__name__}: {e}"
                    log.warning("shard %d attempt %d/%d failed: %s", shard, attempt, max_attempts, e)
    finally:
        processor.close()
    return failed
