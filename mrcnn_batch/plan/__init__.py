"""Plan: list the input into a deterministic shard plan with stable image ids."""

from mrcnn_batch.plan.plan import build_plan, shard_ids, shard_ranges, shard_rows
from mrcnn_batch.plan.sources import InputError, input_kind

__all__ = ["InputError", "build_plan", "input_kind", "shard_ids", "shard_ranges", "shard_rows"]
