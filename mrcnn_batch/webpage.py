"""The pieces of a self-contained HTML page, shared by the run report and the inspection page.

Self-contained and safe by construction: no script and no external resource; pictures are
PNG ``data:`` URIs and the Content-Security-Policy (``default-src 'none'``) forbids loading
anything else; every string that comes from the data goes through :func:`esc` before it
reaches the markup. A leaf: imports nothing of the project.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.sub{color:#5b6475;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#5b6475;font-size:12px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d8dce3;padding:4px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:8px}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:12px;color:#5b6475;margin-top:4px}
"""


def esc(value: Any) -> str:
    """Text from the data, safe in element content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def head(title: str, css: str = "") -> str:
    """The page up to the opening ``<main>``: charset, the CSP, the title, the styles (``CSS``
    then ``css``, the page's own)."""
    return "".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}{css}</style></head><body><main>",
    ])


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, *, width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    return f'<img src="{data_uri(png)}" alt="{esc(alt)}"{w}>'


def figure(png: bytes, caption: str, *, width: int | None = None) -> str:
    return f"<figure>{img(png, caption, width=width)}<figcaption>{esc(caption)}</figcaption></figure>"


def card(value: Any, label: str) -> str:
    return f'<div class="card"><b>{esc(value)}</b><span>{esc(label)}</span></div>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], kinds: Sequence[str] | None = None) -> str:
    """A table; ``kinds``, one CSS class per column: "n" numbers (right-aligned), "w" text that
    wraps, "" plain text."""
    kinds = kinds or [""] * len(header)

    def cell(tag: str, value: Any, kind: str) -> str:
        return f'<{tag} class="{kind}">{esc(value)}</{tag}>' if kind else f"<{tag}>{esc(value)}</{tag}>"

    th = "".join(cell("th", h, k) for h, k in zip(header, kinds))
    body = "".join("<tr>" + "".join(cell("td", c, k) for c, k in zip(r, kinds)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
