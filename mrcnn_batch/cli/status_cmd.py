"""``mrcnn-batch status OUTPUT``: shards done / pending / failed and images by status."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.text import Text

from mrcnn_batch.cli import EXIT_USAGE, app
from mrcnn_batch.cli.common import (
    Command,
    StorageOptions,
    fail,
    out,
    parse_storage_options,
)
from mrcnn_batch.errors import MrcnnBatchError


@app.command(cls=Command)
def status(
    output: Annotated[str, typer.Argument(metavar="RUN", show_default=False, help="Run directory (any fsspec URL).")],
    storage_options: StorageOptions = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the status as JSON.")] = False,
) -> None:
    """Show a run's progress: shards done / pending / failed, images by status.

    Exit code 0 when the run is complete, 4 when shards are pending or failed."""
    from mrcnn_batch.cli import EXIT_SHARDS_FAILED
    from mrcnn_batch.run.status import run_status

    try:
        from mrcnn_batch.run.preflight import check_reachable

        options = parse_storage_options(storage_options, "--storage-options")
        check_reachable(output, options, role="run")
        st = run_status(output, storage_options=options)
    except MrcnnBatchError as e:
        fail(str(e), e.exit_code)
    except FileNotFoundError as e:
        fail(str(e), EXIT_USAGE)
    if as_json:
        json.dump(st.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        n = len(st.shards_done) + len(st.shards_pending) + len(st.shards_failed)
        images = ", ".join(f"{k} {v}" for k, v in st.images_by_status.items()) or "none yet"
        state = "[green]complete[/]" if st.complete else "[yellow]incomplete[/]"
        out.print(f"run {st.run_id} ({st.model}) in {st.output}: {state}")
        out.print(f"shards: {len(st.shards_done)}/{n} done, {len(st.shards_pending)} pending, {len(st.shards_failed)} failed")
        out.print(f"images: {st.planned_images} planned; {images}; {st.images_pending} not yet committed")
        out.print(f"rows: {st.instances} instances, {st.keypoints} keypoint detections")
        if st.driver:
            d = st.driver
            age = time.time() - float(d.get("heartbeat_at", 0))
            out.print(f"driver: {d.get('host')} pid {d.get('pid')}, last heartbeat {age:.0f}s ago "
                      f"(a lease older than {2 * float(d.get('ttl_s', 60)):.0f}s is left by a driver that is gone)", highlight=False)
        for shard, reason in st.shards_rejected.items():
            out.print(Text.assemble((f"shard {shard}: its marker is not a commit", "yellow"), f" ({reason}); the next infer runs it again"),
                      highlight=False, soft_wrap=True)
        for shard, reason in st.shards_failed.items():
            out.print(Text.assemble((f"shard {shard} failed:", "red"), " ", reason), highlight=False, soft_wrap=True)
    if not st.complete:
        raise typer.Exit(EXIT_SHARDS_FAILED)
