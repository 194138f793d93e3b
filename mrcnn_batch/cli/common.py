"""What every command shares: the two consoles, the one-line failure, storage options parsed
from JSON, logging, and the options several commands take, declared once (typer ``Annotated``
aliases) so that their names, metavars and help agree everywhere."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

err = Console(stderr=True)
out = Console()

def _plain_help_option(option):
    if option is not None:
        option.metavar = ""  # a flag: no ``<bool>`` beside it
    return option


class Group(TyperGroup):
    """The ``mrcnn-batch`` group: ``--help`` without a type tag."""

    def get_help_option(self, ctx):
        return _plain_help_option(super().get_help_option(ctx))


class Command(TyperCommand):
    """A command whose help names its arguments plainly: ``infer [OPTIONS] INPUT OUTPUT`` (an
    optional one in brackets), without typer's ``{INPUT}`` and ``<str>`` tags."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.display_type_rich = lambda ctx=None: None  # the help text says what it is

    def get_help_option(self, ctx):
        return _plain_help_option(super().get_help_option(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run directory (any fsspec URL).", show_default=False)]
StorageOptions = Annotated[str | None, typer.Option(
    "--storage-options", metavar="JSON",
    help='fsspec storage options (a JSON object) for every URL the command reads, e.g. '
         '\'{"endpoint_url": "http://127.0.0.1:9000"}\'. Never stored in the run.')]
OutputStorageOptions = Annotated[str | None, typer.Option(
    "--output-storage-options", metavar="JSON",
    help="Storage options (JSON) for what the command writes; default: --storage-options.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", metavar="", help="Log progress, and problems as they happen (infer: per image, with Ray's worker logs).")]
Address = Annotated[str | None, typer.Option(
    "--address", metavar="HOST:PORT",
    help="Ray cluster to join (default: RAY_ADDRESS). Without either, infer starts a private local Ray "
         "and eval runs in this process unless --workers is given.")]
KptSigmas = Annotated[str | None, typer.Option(
    "--kpt-sigmas", metavar="SIGMAS",
    help="OKS sigmas, comma-separated, one per keypoint (default: ground truth's oks_sigmas, the model's, or COCO's 17).")]
OverlayScore = Annotated[float, typer.Option(
    "--score-threshold", metavar="SCORE", help="Draw instances and keypoints scoring at least this.")]


def parse_storage_options(text: str | None, what: str = "--storage-options") -> dict:
    """``--storage-options`` as a dict; a clear usage error for anything but a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # malformed, or nested too deeply for the parser
        raise typer.BadParameter(f"{what} must be a JSON object: {e}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def output_options(storage_options: dict, output_storage_options: str | None) -> dict:
    """``--output-storage-options`` when given, else the options of what is read."""
    if output_storage_options:
        return parse_storage_options(output_storage_options, "--output-storage-options")
    return storage_options


def fail(message: str, code: int) -> None:
    """Print ``message`` (never read as markup: paths may hold brackets) unwrapped, and exit."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def say(message: str) -> None:
    """One plain line on stderr (paths and Ray addresses are not markup)."""
    err.print(message, highlight=False, soft_wrap=True)


def setup_logging(verbose: bool, quiet_level: int = logging.WARNING) -> None:
    logging.basicConfig(level=logging.INFO if verbose else quiet_level, format="%(levelname)s %(name)s: %(message)s")

def parse_iou_types(text: str | None) -> tuple[str, ...] | None:
    """``--iou-types``: the types named, in order, each once; None where not given."""
    from mrcnn_batch.evaluate.params import EVAL_IOU_TYPES

    if not text:
        return None
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in types if t not in EVAL_IOU_TYPES]
    if bad or not types:
        raise typer.BadParameter(f"--iou-types: {', '.join(bad) or text!r} not in {', '.join(EVAL_IOU_TYPES)}")
    return tuple(dict.fromkeys(types))


def parse_kpt_sigmas(text: str | None) -> list[float] | None:
    """``--kpt-sigmas``: positive numbers, one per keypoint; None where not given."""
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter("--kpt-sigmas must be comma-separated numbers, one per keypoint") from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter("--kpt-sigmas must be positive numbers, one per keypoint")
    return values
