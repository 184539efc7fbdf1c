"""A store's tables in PostgreSQL (``server.database_url``), shared by every gateway replica.

A connection found broken (the server restarted, an idle link was cut) is
reopened and the statement run once more: each store's statements are
written so that run twice they leave the tables as running them once would
(inserts do nothing or update on conflict, updates set values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg


class PostgresDatabase:
    placeholder = "%s"
    shared = True  # every replica's

    def __init__(self, url: str, schema: Sequence[str], schema_lock: int, application_name: str) -> None:
        parts = urlsplit(url)
        self.description = f"PostgreSQL {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        self._url = url
        self._schema = schema
        self._schema_lock = schema_lock
        self._application_name = application_name  # pg_stat_activity tells the stores' connections apart
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
            db = psycopg.connect(self._url, autocommit=True, connect_timeout=5, application_name=self._application_name)
            with db.transaction():  # replicas starting together must not race to create the tables
                db.execute("SELECT pg_advisory_xact_lock(%s)", (self._schema_lock,))
                for statement in self._schema:
                    db.execute(statement)
            self._db = db
        return self._db
