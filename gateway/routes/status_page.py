"""The status page's first paint: status_page.html with the figures already in it.

Every value is escaped here (model names come from clients); the page's
script redraws the same tables from ``/status.json``, reading their columns
and formats from the header cells written below, so the columns are listed
once. ``{{name}}`` markers are replaced in one pass: a value that contains
a marker is never read as one.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from html import escape
from importlib import resources
from typing import Any

from gateway.routes.status_figures import DeploymentRow, EngineRow, KeyUsage, StatusFigures

TEMPLATE = resources.files("gateway.routes").joinpath("status_page.html").read_text(encoding="utf-8")
MARKER = re.compile(r"\{\{(\w+)\}\}")
DASH = "\u2013"

# The same formats as the page's script (FORMATS in status_page.html).
FORMATS: dict[str, Callable[[Any], str]] = {
    "text": lambda v: DASH if v is None else str(v),
    "state": str,
    "int": lambda v: DASH if v is None else f"{v:,}",
    "ms": lambda v: DASH if v is None else f"{v:.1f} ms",
    "percent": lambda v: DASH if v is None else f"{v * 100:.1f}%",
    "seconds": lambda v: f"{math.ceil(v)} s" if v else DASH,
    "rate": lambda v: DASH if v is None else f"{v:.2f}",
    "usd": lambda v: "$0" if v == 0 else f"${v:.2f}" if v >= 1 else f"${v:.6f}",
}

# (field, heading, format): the tables' columns, read back by the page's script from their header cells.
DEPLOYMENT_COLUMNS = (
    ("model", "model", "text"),
    ("provider", "provider", "text"),
    ("deployment", "deployment", "text"),
    ("state", "breaker", "state"),
    ("in_flight", "in flight", "int"),
    ("recent_latency_ms", "latency mean", "ms"),
    ("recent_latency_max_ms", "latency max", "ms"),
    ("recent_error_rate", "error rate", "percent"),
    ("recent_successes", "answered", "int"),
    ("recent_failures", "failed", "int"),
    ("cooldown_remaining_s", "cooldown left", "seconds"),
    ("successes", "answered, all", "int"),
    ("failures", "failed, all", "int"),
    ("last_error", "last error", "text"),
)
ENGINE_COLUMNS = (
    ("provider", "provider", "text"),
    ("state", "state", "state"),
    ("running", "running", "int"),
    ("waiting", "waiting", "int"),
    ("kv_cache_usage", "KV cache", "percent"),
    ("tokens_per_s", "tokens/s", "rate"),
)
LEDGER_NOTES = {
    "on": "",
    "off": "The usage ledger is off (server.usage_ledger: false): no usage per key, no tokens/s.",
    "unavailable": "The usage ledger could not be read just now.",
}
# The chart's geometry, in SVG units; the script reads it from the chart's data-* attributes.
CHART_ROW, CHART_LABEL, CHART_BAR = 24, 170, 320


def render_page(figures: StatusFigures, nonce: str, poll_seconds: float) -> str:
    """The whole page for ``figures``; ``nonce`` lets its own style and script run under its CSP."""
    parts = {
        "nonce": nonce,
        "poll_ms": str(int(poll_seconds * 1000)),
        "poll_s": f"{poll_seconds:g}",
        "readiness": f'<strong id="readiness" data-status="{_attr(figures.status)}" '
        f'class="status-{_attr(figures.status)}">{escape(figures.status)}</strong>',
        "time": _attr(figures.time),
        "time_text": time.strftime("%H:%M:%S UTC", time.gmtime(figures.time)),
        "window_min": f"{figures.window_s / 60:g}",
        "tokens_window_s": f"{figures.tokens_window_s:g}",
        "deployments": _table("deployments", ("model", "provider", "deployment"), DEPLOYMENT_COLUMNS,
                              figures.deployments, "no model has a deployment"),
        "engines": _table("engines", ("provider",), ENGINE_COLUMNS, figures.engines, "no local engine in this process"),
        "ledger_note": _ledger_note(figures.ledger),
        "usage": _usage_chart(figures.usage),
    }  # fmt: skip
    return MARKER.sub(lambda match: parts[match[1]], TEMPLATE)


def _table(
    table_id: str,
    keys: Sequence[str],
    columns: Sequence[tuple[str, str, str]],
    rows: Sequence[DeploymentRow | EngineRow],
    empty: str,
) -> str:
    head = "".join(
        f'<th data-field="{field}" data-format="{format_name}">{escape(heading)}</th>'
        for field, heading, format_name in columns
    )
    body = "".join(_row(row, keys, columns) for row in rows) or (
        f'<tr class="empty"><td colspan="{len(columns)}">{escape(empty)}</td></tr>'
    )
    return (
        f'<table id="{table_id}" data-keys="{" ".join(keys)}" data-empty="{_attr(empty)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _row(row: DeploymentRow | EngineRow, keys: Sequence[str], columns: Sequence[tuple[str, str, str]]) -> str:
    identity = "".join(f' data-{key}="{_attr(getattr(row, key))}"' for key in keys)
    cells = []
    for field, _, format_name in columns:
        value = getattr(row, field)
        text = FORMATS[format_name](value)
        extra = f' class="state-{_attr(value)}"' if format_name == "state" else ""
        if format_name == "text":  # cut short by the page's style: the whole text on hover
            extra += f' title="{_attr(text)}"'
        attributes = f'data-field="{field}" data-format="{format_name}" data-value="{_attr(value)}"{extra}'
        cells.append(f"<td {attributes}>{escape(text)}</td>")
    return f"<tr{identity}>{''.join(cells)}</tr>"


def _ledger_note(ledger: str) -> str:
    notes = "".join(f' data-note-{state}="{_attr(note)}"' for state, note in LEDGER_NOTES.items())
    return f'<p class="meta" id="ledger-note" data-ledger="{_attr(ledger)}"{notes}>{escape(LEDGER_NOTES[ledger])}</p>'


def _usage_chart(usage: Sequence[KeyUsage]) -> str:
    """One bar per key, its length the key's tokens against the most any key used (as the script draws it)."""
    empty = "no requests in the last 24 hours"
    height = max(1, len(usage)) * CHART_ROW + 8
    opening = (
        f'<svg id="usage-chart" width="{CHART_LABEL + CHART_BAR + 340}" height="{height}" role="img" '
        f'aria-label="tokens per key" data-row="{CHART_ROW}" data-label="{CHART_LABEL}" data-bar="{CHART_BAR}" '
        f'data-empty="{_attr(empty)}" xmlns="http://www.w3.org/2000/svg">'
    )
    if not usage:
        return f'{opening}<text x="0" y="16">{escape(empty)}</text></svg>'
    most = max([key.total_tokens for key in usage] + [1])
    groups = []
    for index, key in enumerate(usage):
        width = max(1, round(CHART_BAR * key.total_tokens / most))
        figures = f"{key.total_tokens:,} tokens \u00b7 {FORMATS['usd'](key.cost_usd)} \u00b7 {key.requests:,} requests"
        if key.unpriced_requests:
            figures += f" ({key.unpriced_requests:,} unpriced)"
        name = "(no key)" if key.api_key is None else key.api_key
        groups.append(
            f'<g data-key="{_attr(key.api_key)}" data-requests="{key.requests}" data-total-tokens="{key.total_tokens}" '
            f'data-cost-usd="{_attr(key.cost_usd)}" transform="translate(0,{index * CHART_ROW})">'
            f'<text x="0" y="16">{escape(name)}</text>'
            f'<rect class="bar" x="{CHART_LABEL}" y="4" width="{width}" height="16"></rect>'
            f'<text x="{CHART_LABEL + width + 6}" y="16">{escape(figures)}</text></g>'
        )
    return opening + "".join(groups) + "</svg>"


def _attr(value: object) -> str:
    """A value as an attribute's text, as the script's String() writes it (1.0 as 1), quotes escaped; None: empty."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return escape(str(value), quote=True)
