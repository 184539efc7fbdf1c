"""One connection to SQLite or PostgreSQL for a store of the gateway's own (kept responses, files and batches).

``open_database`` picks the backend: PostgreSQL when ``server.database_url``
is set (shared by every replica), else a SQLite file in the data directory
(one gateway's). Either is opened, with the store's schema, at its first
statement; ``WorkerDatabase`` runs a store's calls on worker threads, one
at a time, so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from gateway.config import ServerConfig

T = TypeVar("T")


class Cursor(Protocol):
    """What sqlite3's and psycopg's cursors both have."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    """One connection, opened (with its schema) at its first statement. Not thread-safe: one thread at a time."""

    description: str  # with no password
    placeholder: str  # how its driver marks a parameter in SQL
    shared: bool  # other processes may use it (PostgreSQL), or only this one (SQLite)

    def execute(self, sql: str, values: Sequence[Any]) -> Cursor: ...

    def close(self) -> None: ...


def open_database(server: ServerConfig, name: str, schema: Sequence[str], schema_lock: int) -> Database:
    """The store ``name``'s database: PostgreSQL with ``server.database_url``, else ``data_dir/<name>.sqlite3``.

    Nothing is opened here, so this may run on the event loop. ``schema_lock``:
    the PostgreSQL advisory lock replicas starting together take to create the tables.
    """
    if server.database_url is not None:
        from gateway.storage.postgres import PostgresDatabase  # psycopg is an optional dependency

        return PostgresDatabase(server.database_url.get_secret_value(), schema, schema_lock, f"switchyard-{name}")
    from gateway.storage.sqlite import SqliteDatabase

    return SqliteDatabase(server.data_dir / f"{name}.sqlite3", schema)


class WorkerDatabase:
    """A ``Database`` whose calls run on worker threads, one at a time under a lock, until it is closed."""

    def __init__(self, database: Database, what: str) -> None:
        self.database = database
        self._what = what  # "the response store": named when it is used after closing
        self._lock = threading.Lock()  # taken on worker threads only, never on the event loop
        self._closed = False  # read and written under the lock

    async def call(self, method: Callable[..., T], *args: Any) -> T:
        """``method(*args)`` on a worker thread, which may use ``database``."""
        return await asyncio.to_thread(self._locked, method, *args)

    async def aclose(self) -> None:
        """Close the database: calls after this fail; closing again does nothing."""
        await asyncio.to_thread(self._close)

    def _locked(self, method: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._what} ({self.database.description}) is closed")
            return method(*args)

    def _close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.database.close()
