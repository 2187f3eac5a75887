"""A self-contained HTML report: every PNG is embedded (base64) and linked to its file next to it."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """An HTML table of ``rows`` restricted to ``columns``."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape("" if v is None else str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: Path, title: str, sections: Sequence[tuple[str, str, Sequence[Path]]]) -> Path:
    """Write ``out/report.html``: per section a heading, an HTML body and its plots."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:980px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style>",
             f"</head><body><h1>{html.escape(title)}</h1>"]
    for heading, body, plots in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
        for p in plots:
            data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
            rel = Path(p).relative_to(out) if Path(p).is_relative_to(out) else Path(p).name
            parts.append(f"<p><a href='{html.escape(str(rel))}'><img src='data:image/png;base64,{data}' "
                         f"alt='{html.escape(str(rel))}'></a></p>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
