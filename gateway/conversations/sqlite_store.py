"""Stored responses in SQLite, one file in the data directory, for a single gateway.

WAL mode lets a read go on while another request's response is written,
and a write waits for another writer (a second process on the same file)
instead of failing at once (gateway/sqlite.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.sqlite import connect


class SqliteDatabase:
    placeholder = "?"

    def __init__(self, path: Path, schema: str) -> None:
        self.description = f"SQLite {path}"
        self._path = path
        self._schema = schema
        self._db: sqlite3.Connection | None = None

    def execute(self, sql: str, values: Sequence[Any]) -> sqlite3.Cursor:
        return self._connection().execute(sql, values)  # autocommit: one statement, one transaction

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = connect(self._path)  # worker threads take turns with it; none of them opened it
            db.execute(self._schema)
            self._db = db
        return self._db
