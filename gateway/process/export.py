"""``switchyard usage export``: the ledger's records with their costs, as CSV or JSON lines, to reconcile with an invoice.

Read straight from the ledger's database (SQLite in data_dir, or
PostgreSQL), so it runs beside a serving gateway or without one.
"""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

from gateway.config import GatewayConfig
from gateway.ledger import open_store
from gateway.ledger.records import COLUMNS

Format = Literal["csv", "jsonl"]
_COST = COLUMNS.index("cost_usd")


def export_usage(
    config: GatewayConfig, since: float | None, until: float | None, form: Format, out: TextIO | None = None
) -> int:
    """Write the records with ``since <= time < until``, oldest first (to stdout by default); how many were written."""
    out = sys.stdout if out is None else out  # read at the call: stdout may have been replaced since import
    store = open_store(config.server)
    written = 0
    try:
        writer = csv.writer(out, lineterminator="\n") if form == "csv" else None
        if writer is not None:
            writer.writerow(["time_utc", *COLUMNS])
        for row in store.records(since, until):
            moment = datetime.fromtimestamp(row[0], UTC).isoformat()
            if writer is not None:
                cells = ["" if value is None else value for value in row]
                if row[_COST] is not None:
                    cells[_COST] = f"{row[_COST]:.10f}"  # fixed point: a spreadsheet sums it as it reads it
                writer.writerow([moment, *cells])
            else:
                out.write(orjson.dumps({"time_utc": moment, **dict(zip(COLUMNS, row))}).decode() + "\n")
            written += 1
    finally:
        store.close()
    return written


def moment(text: str) -> float:
    """A bound given on the command line: an ISO 8601 date or time (UTC unless it says otherwise), or unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
