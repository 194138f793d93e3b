"""The report as one self-contained HTML page.

Self-contained (``mrcnn_batch.webpage``: no script, no external resource, images as ``data:``
URIs under a Content-Security-Policy that forbids anything else). Every string that comes from
the inputs -- URIs, category names, error messages, model and run metadata -- goes through
``esc`` before it reaches the markup; numbers are formatted here.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mrcnn_batch.report.facts import RunFacts
from mrcnn_batch.webpage import card, esc, figure, head, table

_CSS = """
.bad{color:#b42318}.warn{background:#fff4e5;border:1px solid #f5b95f;padding:8px 12px;border-radius:6px}
figcaption{max-width:360px;word-break:break-all}
td{max-width:520px;overflow-wrap:anywhere}
"""


@dataclass(frozen=True)
class Figure:
    png: bytes
    caption: str  # plain text (escaped when written)
    width: int | None = None  # display width in CSS pixels (None: the image's own)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _rate(v: float | None) -> str:
    """A rate to two significant digits at least: 0.032, 4.7, 37.5, 1,250 (never a bare 0.0)."""
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.1f}"
    return f"{v:.2g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[bool] | None = None) -> str:
    return table(header, rows, ["n" if n else "" for n in numeric] if numeric else None)


def _figures(figs: Sequence[Figure], *, width: int | None = None) -> str:
    return '<div class="grid">' + "".join(
        figure(f.png, f.caption, width=f.width or width) for f in figs
    ) + "</div>"


def render_page(
    facts: RunFacts,
    *,
    charts: dict[str, bytes],
    overlays: Sequence[Figure],
    gallery: Figure | None,
    title: str | None = None,
) -> str:
    meta = facts.meta
    model = meta.model
    cfg = meta.config
    tp = facts.throughput
    total = sum(facts.status_counts.values())
    ok = facts.status_counts.get("ok", 0)
    created = meta.created_at
    when = datetime.datetime.fromtimestamp(float(created), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if created else "?"
    parts = [
        head(title or "mrcnn-batch report: " + meta.run_id, _CSS),
        f"<h1>{esc(title or 'mrcnn-batch run report')}</h1>",
        f'<div class="sub">run <code>{esc(facts.url)}</code> · id {esc(meta.run_id)} · created {esc(when)}</div>',
        (f'<div class="sub">input <code>{esc((cfg.get("input") or {}).get("url"))}</code> · model <b>{esc(model.get("name"))}</b>'
         f' · weights {esc(meta.weights.get("source"))}</div>'),
    ]
    if not facts.complete:
        parts.append(f'<p class="warn">Incomplete run: {facts.committed_shards} of {facts.planned_shards} shards committed. '
                     "Figures cover the committed shards only.</p>")
    n_inst = sum(facts.instances_per_category.values())
    n_kp = sum(facts.keypoints_per_category.values())
    parts.append('<div class="cards">' + "".join([
        card(f"{total:,}", "images"), card(f"{ok:,}", "ok"), card(f"{total - ok:,}", "failed"),
        card(f"{n_inst:,}", "instances"), card(f"{n_kp:,}", "keypoint detections"),
        card(_fmt(tp.wall_seconds, 1) + " s", "wall time (creation → last commit)"),
        card(_rate(tp.images_per_second), "images / s"),
    ]) + "</div>")

    parts.append("<h2>Images by status</h2>")
    parts.append(_table(["status", "images", "share"],
                        [(s, f"{n:,}", f"{100 * n / total:.1f}%" if total else "–") for s, n in facts.status_counts.items()],
                        numeric=[False, True, True]))
    parts.append(_figures([Figure(charts["status"], "images by status")]))

    parts.append("<h2>Instances per category</h2>")
    cats = sorted(set(facts.instances_per_category) | set(facts.keypoints_per_category))
    if cats:
        rows = []
        for c in cats:
            s = facts.scores.get(c)
            rows.append((c, f"{facts.instances_per_category.get(c, 0):,}", f"{facts.keypoints_per_category.get(c, 0):,}",
                         _fmt(float(s.mean()) if s is not None and len(s) else None),
                         f"{int((s >= 0.5).sum()):,}" if s is not None else "0"))
        parts.append(_table(["category", "instances", "keypoint detections", "mean score", "score ≥ 0.5"], rows,
                            numeric=[False, True, True, True, True]))
        parts.append(_figures([Figure(charts["categories"], "instances per category"),
                               Figure(charts["scores"], "score histogram")]))
    else:
        parts.append("<p>No instances were detected.</p>")

    parts.append("<h2>Throughput</h2>")
    parts.append(_table(
        ["shards", "images", "workers", "wall s", "images / s", "worker s", "images / worker s", "model share"],
        [(f"{tp.shards:,}", f"{tp.images:,}", tp.workers, _fmt(tp.wall_seconds, 1), _rate(tp.images_per_second),
          _fmt(tp.worker_seconds, 1), _rate(tp.images_per_worker_second),
          f"{100 * tp.model_seconds / tp.worker_seconds:.0f}%" if tp.worker_seconds else "–")],
        numeric=[True] * 8,
    ))
    if "shards" in charts:
        parts.append(_figures([Figure(charts["shards"], "throughput per shard")]))

    parts.append(_eval_section(facts))

    if overlays:
        parts.append("<h2>Sample overlays</h2>")
        parts.append(_figures(overlays))
    if gallery is not None:
        parts.append("<h2>Instance gallery</h2>")
        parts.append(_figures([gallery]))

    if facts.num_failures:
        parts.append(f"<h2>Failed images ({facts.num_failures:,})</h2>")
        parts.append(_table(["image id", "uri", "status", "error"],
                            [(f["image_id"], f["uri"], f["status"], f["error"]) for f in facts.failures],
                            numeric=[True, False, False, False]))
        if facts.num_failures > len(facts.failures):
            parts.append(f"<p>… and {facts.num_failures - len(facts.failures):,} more (see the images table).</p>")
    versions = meta.versions
    parts.append('<h2>About this run</h2><p class="sub">' + " · ".join(f"{esc(k)} {esc(v)}" for k, v in versions.items())
                 + f" · schema {esc(meta.schema_version)}</p>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _eval_section(facts: RunFacts) -> str:
    m = facts.metrics
    if not m:
        return "<h2>Evaluation</h2><p>Not evaluated: run <code>mrcnn-batch eval RUN --annotations GT.json</code>.</p>"
    out = ["<h2>Evaluation</h2>"]
    if m.get("partial"):
        out.append(f'<p class="warn">{esc(m.get("notice") or "PARTIAL evaluation")}</p>')
    out.append(f'<p class="sub">ground truth <code>{esc(m.get("ground_truth"))}</code> · {int(m.get("num_images") or 0):,} images</p>')
    types = list((m.get("iou_types") or {}).items())
    names = types[0][1]["stat_names"] if types else []
    all_names = list(dict.fromkeys(n for _, t in types for n in t["stat_names"]))
    rows = [[n] + [_fmt(t["metrics"].get(n)) if n in t["metrics"] and t["metrics"][n] != -1 else "–" for _, t in types]
            for n in (all_names or names)]
    out.append(_table(["metric"] + [k for k, _ in types], rows, numeric=[False] + [True] * len(types)))
    cat_rows: dict[str, list[str]] = {}
    for k, t in types:
        for c in t.get("per_category") or []:
            cat_rows.setdefault(c["category"], [])
    if cat_rows:
        header = ["category"] + [f"{k} AP" for k, _ in types]
        rows = []
        for name in cat_rows:
            row = [name]
            for _, t in types:
                hit = next((c for c in t.get("per_category") or [] if c["category"] == name), None)
                row.append(_fmt(hit.get("AP")) if hit else "–")
            rows.append(row)
        out.append(_table(header, rows, numeric=[False] + [True] * len(types)))
    if facts.pr_curves:
        out.append(_figures([Figure(png, f"precision-recall, {t}") for t, png in facts.pr_curves.items()], width=480))
    return "\n".join(out)
