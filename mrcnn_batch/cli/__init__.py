"""The ``mrcnn-batch`` command line. Only this package prints; the library logs and raises.

Exit codes (stable, for scripts):
  0  success
  1  unexpected internal error
  2  bad usage or input (unknown model, missing input, malformed options, missing weights)
  3  refused: the output holds a run with other settings (pass --overwrite)
  4  the job finished but some shards failed (named on stderr); rerun to retry them
  5  evaluation refused: the run is incomplete (pass --allow-partial)
  6  storage error: a file of the run could not be read or written (the message names it and
     quotes the system's error, e.g. a full disk); fix the cause and run the same command again
  130, 143  infer interrupted by SIGINT (Ctrl-C) or SIGTERM: committed shards are kept; run the
     same command again to do the rest
"""

from __future__ import annotations

import typer

from mrcnn_batch.cli.common import Group

app = typer.Typer(
    name="mrcnn-batch",
    cls=Group,
    help="Batch Mask R-CNN / Keypoint R-CNN over image collections, to Parquet, with COCO eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_SHARDS_FAILED = 4
EXIT_INCOMPLETE = 5
EXIT_STORAGE = 6

# One module per command group, each registering its commands on ``app`` (in help order);
# what they share (consoles, failure lines, options declared once) is in ``cli.common``.
# isort: off
from mrcnn_batch.cli import infer_cmd  # noqa: F401
from mrcnn_batch.cli import eval_cmd  # noqa: F401
from mrcnn_batch.cli import compare_cmd  # noqa: F401
from mrcnn_batch.cli import status_cmd  # noqa: F401
from mrcnn_batch.cli import models_cmd  # noqa: F401
from mrcnn_batch.cli import demo_cmd  # noqa: F401
from mrcnn_batch.cli import view_cmd  # noqa: F401
from mrcnn_batch.cli import export_cmd  # noqa: F401
from mrcnn_batch.cli import inspect_cmd  # noqa: F401
# isort: on


def main() -> None:
    app()
