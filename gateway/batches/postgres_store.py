"""Files and batches in PostgreSQL (``server.database_url``), shared by every gateway replica.

A connection found broken is reopened and the statement run once more: each
of the store's statements, run twice, leaves the tables as running it once
would (inserts do nothing on conflict, updates set values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg

# Replicas starting together must not race to create the tables.
SCHEMA_LOCK = 0x4261_7463_6865_73  # "Batches"


class PostgresDatabase:
    placeholder = "%s"
    shared = True  # every replica's

    def __init__(self, url: str, schema: Sequence[str]) -> None:
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
            if not db.broken:
                raise
        return self._connection().execute(sql, values)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.broken:
            self.close()
            db = psycopg.connect(self._url, autocommit=True, connect_timeout=5, application_name="switchyard-batches")
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for statement in self._schema:
                    db.execute(statement)
            self._db = db
        return self._db
