"""Stored responses in PostgreSQL (``server.database_url``), shared by every gateway replica.

A replica can then continue a conversation that another one started. A
connection found broken (the server restarted, an idle link was cut) is
reopened and the statement run once more: run twice, each of the store's
statements leaves the table as running it once would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg

# Replicas starting together must not race to create the table.
SCHEMA_LOCK = 0x5265_7370_6F6E_7365  # "Response"


class PostgresDatabase:
    placeholder = "%s"

    def __init__(self, url: str, schema: str) -> None:
        parts = urlsplit(url)
        self.description = f"PostgreSQL {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        self._url = url
        self._schema = schema
        self._db: psycopg.Connection[Any] | None = None

    def execute(self, sql: str, values: Sequence[Any]) -> psycopg.Cursor[Any]:
        db = self._connection()
        try:
            return db.execute(sql, values)
        except psycopg.OperationalError:
            if not db.broken:  # the statement failed, not the connection
                raise
        return self._connection().execute(sql, values)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.broken:
            self.close()
            # application_name: pg_stat_activity tells these connections from the ledger's.
            db = psycopg.connect(self._url, autocommit=True, connect_timeout=5, application_name="switchyard-responses")
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                db.execute(self._schema)
            self._db = db
        return self._db
