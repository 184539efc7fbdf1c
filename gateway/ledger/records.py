"""What the ledger holds, and the one SQL shape both stores answer queries with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

# Columns a summary may be grouped by, in the order they are reported.
GROUPABLE = ("api_key", "model", "provider", "deployment", "endpoint")


class UsageRecord(NamedTuple):
    """One finished request on a model endpoint, answered or not.

    A tuple already, so a batch goes to the database driver as it is.
    """

    time: float  # unix seconds when the answer finished
    request_id: str
    api_key: str | None  # the key's name (never the key); None on an open gateway
    endpoint: str  # chat/completions, completions, embeddings, moderations, audio/..., images/... (or a door)
    model: str  # as the client asked for it
    provider: str | None  # the deployment that answered, if one did
    deployment: str | None  # the model's name at that provider
    status: int
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool  # counted by the gateway: the upstream reported no usage
    latency_ms: float
    cached_tokens: int = 0  # of prompt_tokens, read from the upstream's cache
    cache_write_tokens: int = 0  # of prompt_tokens, written to it (Anthropic's cache creation)
    reasoning_tokens: int = 0  # of completion_tokens
    cost_usd: float | None = None  # None: no price is known for the deployment (never recorded as 0)
    price_source: str | None = None  # where the price came from ("genai-prices 0.2.3", "config", "local")
    cache: str | None = None  # a model with a response cache: hit, miss or bypass
    saved_tokens: int = 0  # a cache hit: the tokens the kept answer used when it was fresh
    shadow_of: str | None = None  # a shadow request: the request id of the real one it copied
    similarity: float | None = None  # a shadow answer: its cosine similarity to the real answer
    unit: str | None = None  # a media endpoint's own unit: "seconds" of audio, "characters", "images"
    units: float = 0.0  # how many of ``unit`` the answer used (docs/media.md)


COLUMNS = UsageRecord._fields
# SQL types both databases read alike (SQLite maps them to its affinities).
COLUMN_TYPES = {
    "time": "DOUBLE PRECISION NOT NULL",
    "request_id": "TEXT NOT NULL",
    "api_key": "TEXT",
    "endpoint": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "provider": "TEXT",
    "deployment": "TEXT",
    "status": "INTEGER NOT NULL",
    "stream": "BOOLEAN NOT NULL",
    "prompt_tokens": "INTEGER NOT NULL",
    "completion_tokens": "INTEGER NOT NULL",
    "total_tokens": "INTEGER NOT NULL",
    "estimated": "BOOLEAN NOT NULL",
    "latency_ms": "DOUBLE PRECISION NOT NULL",
    "cached_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0",
    "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cost_usd": "DOUBLE PRECISION",
    "price_source": "TEXT",
    "cache": "TEXT",
    "saved_tokens": "INTEGER NOT NULL DEFAULT 0",
    "shadow_of": "TEXT",
    "similarity": "DOUBLE PRECISION",
    "unit": "TEXT",
    "units": "DOUBLE PRECISION NOT NULL DEFAULT 0",
}
assert tuple(COLUMN_TYPES) == COLUMNS
# Columns added after the first release: a ledger created before them gains them at start (``added_columns``).
LATER_COLUMNS = (
    "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "price_source",
    "cache", "saved_tokens", "shadow_of", "similarity", "unit", "units",
)  # fmt: skip


def schema(id_column: str) -> str:
    """The table and its indexes; ``id_column`` is the one thing the two databases spell differently."""
    columns = ",\n".join(f"    {name} {kind}" for name, kind in COLUMN_TYPES.items())
    return f"""
CREATE TABLE IF NOT EXISTS usage_records (
    id {id_column},
{columns}
);
CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time);
CREATE INDEX IF NOT EXISTS usage_records_key_time ON usage_records (api_key, time);
"""


def added_columns(existing: set[str]) -> list[str]:
    """``ALTER TABLE`` statements for the columns an older ledger lacks (both databases take this form)."""
    return [f"ALTER TABLE usage_records ADD COLUMN {name} {COLUMN_TYPES[name]}" for name in LATER_COLUMNS if name not in existing]


def batch_json(records: Sequence[UsageRecord]) -> bytes:
    """A batch as one JSON array of rows, for a single INSERT ... SELECT from it.

    One statement per batch, not one per row: the database then works
    through the whole batch without taking Python's GIL once per row, which
    would otherwise cost the event loop's thread a GIL hand-off per record.
    """
    return orjson.dumps([tuple(record) for record in records])


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """``GET /v1/usage``'s filters: each one optional; time as unix seconds, start inclusive, end exclusive."""

    api_key: str | None = None
    model: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    group_by: tuple[str, ...] = ("api_key", "model")


def _real(value: str, zero: str = "0") -> str:
    """``value`` for a real request, ``zero`` for a shadow copy (counted apart, in the ``shadow_`` sums)."""
    return f"CASE WHEN shadow_of IS NULL THEN {value} ELSE {zero} END"


SUMS = (
    f"COALESCE(SUM({_real('1')}), 0) AS requests",
    f"COALESCE(SUM({_real('CASE WHEN status < 400 THEN 0 ELSE 1 END')}), 0) AS failed_requests",
    f"COALESCE(SUM({_real('prompt_tokens')}), 0) AS prompt_tokens",
    f"COALESCE(SUM({_real('completion_tokens')}), 0) AS completion_tokens",
    f"COALESCE(SUM({_real('total_tokens')}), 0) AS total_tokens",
    f"COALESCE(SUM({_real('CASE WHEN estimated THEN 1 ELSE 0 END')}), 0) AS estimated_requests",
    f"COALESCE(SUM({_real('cached_tokens')}), 0) AS cached_tokens",
    f"COALESCE(SUM({_real('reasoning_tokens')}), 0) AS reasoning_tokens",
    f"COALESCE(SUM({_real('cost_usd', '0.0')}), 0.0) AS cost_usd",  # of the requests whose cost is known
    f"COALESCE(SUM({_real('CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END')}), 0) AS unpriced_requests",
    "COALESCE(SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END), 0) AS cache_hits",
    "COALESCE(SUM(saved_tokens), 0) AS saved_tokens",
    "COALESCE(SUM(CASE WHEN shadow_of IS NULL THEN 0 ELSE 1 END), 0) AS shadow_requests",
    "COALESCE(SUM(CASE WHEN shadow_of IS NULL THEN 0.0 ELSE cost_usd END), 0.0) AS shadow_cost_usd",
    "COALESCE(SUM(CASE WHEN shadow_of IS NOT NULL AND similarity IS NOT NULL THEN 1 ELSE 0 END), 0) AS shadow_scored",
    "AVG(CASE WHEN shadow_of IS NULL THEN NULL ELSE similarity END) AS shadow_similarity",  # null: none scored
)
# Sums that are means: over several rows, each weighs by the count named here.
MEANS = {"shadow_similarity": "shadow_scored"}
SUM_NAMES = tuple(expression.rsplit(" AS ", 1)[1] for expression in SUMS)


def summary_sql(query: UsageQuery, placeholder: str) -> tuple[str, list[Any], list[str]]:
    """``SELECT group columns, sums FROM usage_records WHERE filters GROUP BY ...``, its values and column names.

    Column names come from ``GROUPABLE`` only; every value is a bound parameter.
    """
    conditions, values = [], []
    for column, value in (("api_key", query.api_key), ("model", query.model)):
        if value is not None:
            conditions.append(f"{column} = {placeholder}")
            values.append(value)
    if query.start_time is not None:
        conditions.append(f"time >= {placeholder}")
        values.append(query.start_time)
    if query.end_time is not None:
        conditions.append(f"time < {placeholder}")
        values.append(query.end_time)
    groups = [column for column in GROUPABLE if column in query.group_by]
    sql = f"SELECT {', '.join(groups + list(SUMS))} FROM usage_records"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if groups:
        order = ", ".join(f"{column} NULLS LAST" for column in groups)  # the same order in both databases
        sql += f" GROUP BY {', '.join(groups)} ORDER BY {order}"
    return sql, values, groups + list(SUM_NAMES)


def records_sql(since: float | None, until: float | None, placeholder: str) -> tuple[str, list[float]]:
    """``SELECT COLUMNS FROM usage_records`` within the time bounds, oldest first, and its values."""
    conditions, values = [], []
    if since is not None:
        conditions.append(f"time >= {placeholder}")
        values.append(since)
    if until is not None:
        conditions.append(f"time < {placeholder}")
        values.append(until)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT {', '.join(COLUMNS)} FROM usage_records{where} ORDER BY time, id", values


SPENT_SQL = (
    "SELECT api_key, COALESCE(SUM(total_tokens), 0) FROM usage_records"
    " WHERE api_key IS NOT NULL AND shadow_of IS NULL GROUP BY api_key"
)
