"""Progress of a run on the driver: images done / planned, images/s, ETA, image failures.

Fed by the driver's callbacks (``on_plan`` once, ``on_commit`` per committed shard), so it
counts only committed work: a shard that is retried is counted once, when it commits. The Ray
executor's ``on_retry`` adds each retry (a worker lost, a shard that raised) as a line above the
bar and a count beside it. The caller (the CLI) owns the console it draws on; the library itself
never prints.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from mrcnn_batch.run.layout import RunMeta
from mrcnn_batch.run.status import images_in


class RunProgress:
    """A rich progress bar driven by ``on_plan`` / ``on_commit``; use as a context manager."""

    def __init__(self, *, console: Console, enabled: bool = True):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[problems]}"),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.task = None
        self.images_done = 0
        self.image_failures = 0
        self.retries = 0
        self.shards_done = 0
        self.shards_pending = 0
        self._start = time.monotonic()

    def __enter__(self) -> "RunProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_plan(self, meta: RunMeta, plan: pa.Table, pending: list[int]) -> None:
        todo = images_in(plan, pending)
        self.shards_pending = len(pending)
        self._start = time.monotonic()
        self.task = self.progress.add_task(f"infer ({len(pending)} shards)", total=todo, rate="", problems="")

    def on_commit(self, record: dict[str, Any]) -> None:
        counts = record.get("status_counts", {})
        n = sum(counts.values())
        self.images_done += n
        self.image_failures += n - counts.get("ok", 0)
        self.shards_done += 1
        rate = self.images_done / max(1e-9, time.monotonic() - self._start)
        if self.task is not None:
            self.progress.update(self.task, advance=n, rate=f"{rate:.2f}/s", problems=self._problems(),
                                 description=f"infer ({self.shards_done}/{self.shards_pending} shards)")

    def on_retry(self, shard: int, reason: str) -> None:
        self.retries += 1
        self.progress.console.print(f"[yellow]shard {shard} will run again:[/] {reason}", highlight=False, markup=True)
        if self.task is not None:
            self.progress.update(self.task, problems=self._problems())

    def _problems(self) -> str:
        parts = [f"{self.image_failures} image errors"] if self.image_failures else []
        parts += [f"{self.retries} shard retries"] if self.retries else []
        return f"[yellow]{', '.join(parts)}" if parts else ""
