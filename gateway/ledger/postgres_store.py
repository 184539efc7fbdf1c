"""The ledger in PostgreSQL (``server.database_url``), shared by several gateway replicas.

Batches go in with ``COPY``, the fastest way into PostgreSQL. A broken
connection is dropped and reopened on the next batch; the writer keeps the
batch that failed and sends it again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import psycopg

from gateway.ledger.records import (
    COLUMNS,
    SPENT_SQL,
    UsageQuery,
    UsageRecord,
    added_columns,
    records_sql,
    schema,
    summary_sql,
)

SCHEMA = schema("BIGSERIAL PRIMARY KEY")
# Replicas starting together must not race to create the table.
SCHEMA_LOCK = 0x5377_6974_6368  # "Switch"

COPY = f"COPY usage_records ({', '.join(COLUMNS)}) FROM STDIN"


class PostgresStore:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.description = f"PostgreSQL {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        self._url = url
        self._db: psycopg.Connection[Any] | None = None
        self._connection()  # fail at start, not at the first batch, when the server is unreachable

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                self._db.execute(SCHEMA)
                existing = {row[0] for row in self._db.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'usage_records'"
                )}  # fmt: skip
                for statement in added_columns(existing):
                    self._db.execute(statement)  # type: ignore[arg-type]
        return self._db

    def append(self, records: Sequence[UsageRecord]) -> None:
        db = self._connection()
        with db.transaction(), db.cursor() as cursor, cursor.copy(COPY) as copy:
            for record in records:
                copy.write_row(record)

    def summarize(self, query: UsageQuery) -> list[dict[str, Any]]:
        sql, values, names = summary_sql(query, "%s")
        rows = self._connection().execute(sql, values).fetchall()  # type: ignore[arg-type]
        # SUM over integers is NUMERIC in PostgreSQL: report it as the integer it is (a sum of costs is a float already).
        return [dict(zip(names, (int(v) if isinstance(v, Decimal) else v for v in row))) for row in rows]

    def spent_by_key(self) -> dict[str, int]:
        return {name: int(total) for name, total in self._connection().execute(SPENT_SQL)}

    def records(self, since: float | None, until: float | None) -> Iterator[tuple[Any, ...]]:
        sql, values = records_sql(since, until, "%s")
        with self._connection().cursor() as cursor:
            cursor.execute(sql, values)  # type: ignore[arg-type]
            yield from cursor

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
