"""A store's SQLite file in the data directory, for a single gateway (gateway/sqlite.py: WAL, busy waits).

WAL mode lets a read go on while another statement writes, and a write
waits for another writer (a second process on the same file) instead of
failing at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.sqlite import connect


class SqliteDatabase:
    placeholder = "?"
    shared = False  # one gateway's file

    def __init__(self, path: Path, schema: Sequence[str]) -> None:
        self.description = f"SQLite {path}"
        self._path = path
        self._schema = schema
        self._db: sqlite3.Connection | None = None

    def execute(self, sql: str, values: Sequence[Any]) -> sqlite3.Cursor:
        # Autocommit: each statement is its own transaction, committed to the WAL before it returns,
        # so what it wrote survives a kill of the process (synchronous=NORMAL: not a power cut).
        return self._connection().execute(sql, values)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = connect(self._path)  # worker threads take turns with it; none of them opened it
            for statement in self._schema:
                db.execute(statement)
            self._db = db
        return self._db
