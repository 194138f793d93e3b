"""The report's charts, as PNG bytes (matplotlib, Agg): images by status, instances per
category, score histogram, time per shard. Labels drawn into images come from the run's data
but are pixels, not markup, so they need no escaping."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from mrcnn_batch.render.overlays import PALETTE

_SIZE = (4.6, 2.6)


def _figure(height: float = _SIZE[1]):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_SIZE[0], height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _rgb(i: int) -> tuple[float, float, float]:
    r, g, b = PALETTE[i % len(PALETTE)]
    return (r / 255, g / 255, b / 255)


def bar_chart(counts: dict[str, int], *, title: str, xlabel: str, colors: Sequence[tuple[float, float, float]] | None = None) -> bytes:
    names = list(counts)
    fig, ax = _figure(min(_SIZE[1] * 3, 1.0 + 0.32 * len(names)))
    values = [counts[n] for n in names]
    y = np.arange(len(names))
    ax.barh(y, values, color=colors or [_rgb(i) for i in range(len(names))])
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.15)
    return _png(fig)


def status_chart(status_counts: dict[str, int]) -> bytes:
    colors = [(0.17, 0.63, 0.17) if s == "ok" else (0.84, 0.15, 0.16) for s in status_counts]
    return bar_chart(status_counts, title="images by status", xlabel="images", colors=colors)


def score_histogram(scores: dict[str, np.ndarray], *, bins: int = 20) -> bytes:
    fig, ax = _figure()
    edges = np.linspace(0.0, 1.0, bins + 1)
    names = list(scores)
    if names:
        ax.hist([scores[n] for n in names], bins=edges, stacked=True, label=names,
                color=[_rgb(i) for i in range(len(names))])
        ax.legend(fontsize=7, ncols=max(1, len(names) // 8))
    ax.set_xlabel("score")
    ax.set_ylabel("instances")
    ax.set_title("instance scores (stacked by category)", fontsize=10)
    return _png(fig)


def shard_time_chart(seconds: Sequence[float], images: Sequence[int]) -> bytes:
    fig, ax = _figure()
    rate = [n / s if s else 0.0 for n, s in zip(images, seconds)]
    ax.bar(np.arange(len(rate)), rate, color=_rgb(0), width=1.0 if len(rate) > 50 else 0.8)
    ax.set_xlabel("shard")
    ax.set_ylabel("images / s (one worker)")
    ax.set_title("throughput per shard", fontsize=10)
    return _png(fig)
