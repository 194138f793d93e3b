"""``mrcnn-batch models``: the registry, with each entry's outputs and reference metrics."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from mrcnn_batch.cli import app
from mrcnn_batch.cli.common import Command, out


def reference_metrics_text(metrics: dict) -> str:
    """The published (torchvision: COCO val2017) or measured (demo: its held-out set) APs of a
    registry entry, one line per source: ``COCO-val2017: box 37.9, mask 34.6``."""
    names = {"box_map": "box", "mask_map": "mask", "kp_map": "keypoints"}
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):  # a composite's parts
            lines += [f"{key}: {line}" for line in reference_metrics_text(value).splitlines()]
        elif isinstance(value, dict):
            lines.append(f"{key}: " + ", ".join(f"{names.get(k, k)} {v}" for k, v in value.items()))
    flat = {k: v for k, v in metrics.items() if k.endswith("_AP")}
    if flat:
        n = metrics.get("num_images")
        lines.append((f"held-out set of {n} images: " if n else "") +
                     ", ".join(f"{k.removesuffix('_AP')} {100 * v:.1f}" for k, v in flat.items()))
    return "\n".join(lines) or "-"




@app.command(cls=Command)
def models(as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the registry as JSON.")] = False) -> None:
    """List the registered models and their metadata."""
    from mrcnn_batch.models.registry import list_models

    specs = list_models()
    if as_json:
        json.dump([s.metadata() | {"description": s.description, "default_weights": s.default_weights} for s in specs], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if out.width < 110:  # a narrow terminal: one block per model rather than a squeezed table
        for s in specs:
            outputs, cats, kps = _model_facts(s)
            out.print(f"[bold]{s.name}[/]: {outputs}; {cats} categories; {kps or 'no'} keypoints", highlight=False)
            for line in reference_metrics_text(s.reference_metrics).splitlines():
                out.print(f"  reference AP, {line}", highlight=False, soft_wrap=True)
            out.print(f"  default weights: {s.default_weights or 'those of its components'}", highlight=False, soft_wrap=True)
        return
    table = Table(show_lines=True, expand=False)
    table.add_column("name", no_wrap=True)
    table.add_column("outputs", no_wrap=True)
    table.add_column("categories", justify="right", min_width=10, no_wrap=True)
    table.add_column("keypoints", justify="right", min_width=9, no_wrap=True)
    table.add_column("reference metrics (AP)", min_width=30)
    for s in specs:
        outputs, cats, kps = _model_facts(s)
        table.add_row(s.name, outputs, str(cats), str(kps or "-"), reference_metrics_text(s.reference_metrics))
    out.print(table)
    for s in specs:
        out.print(f"{s.name}: default weights {s.default_weights or 'those of its components'}", highlight=False, soft_wrap=True)


def _model_facts(spec) -> tuple[str, int, int]:
    """A registry entry's outputs ("boxes+masks"), number of categories and of keypoints."""
    outputs = "+".join(x for x, on in (("boxes", True), ("masks", spec.has_masks), ("keypoints", spec.has_keypoints)) if on)
    return outputs, len(spec.category_ids()), len(spec.keypoint_names)
