"""Where ledger records are kept: SQLite in the data directory, or PostgreSQL for several replicas.

Stores are synchronous and used from one thread only (the writer's), so
neither database's driver ever runs on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from gateway.config import ServerConfig
from gateway.ledger.records import UsageQuery, UsageRecord


class LedgerStore(Protocol):
    description: str  # for logs: where the records go, with no password

    def append(self, records: Sequence[UsageRecord]) -> None:
        """Write ``records`` in one transaction; raise when they were not written."""
        ...

    def summarize(self, query: UsageQuery) -> list[dict[str, Any]]:
        """One row per group: the group's columns and the sums of ``records.SUMS``."""
        ...

    def spent_by_key(self) -> dict[str, int]:
        """Total tokens per key name, for budgets."""
        ...

    def records(self, since: float | None, until: float | None) -> Iterator[tuple[Any, ...]]:
        """Every record with ``since <= time < until`` (each bound optional), oldest first, as ``COLUMNS`` tuples."""
        ...

    def close(self) -> None: ...


def open_store(server: ServerConfig) -> LedgerStore:
    """The store ``server`` asks for: PostgreSQL when ``database_url`` is set, else SQLite in ``data_dir``."""
    if server.database_url is not None:
        from gateway.ledger.postgres_store import (
            PostgresStore,  # psycopg is an optional dependency
        )

        return PostgresStore(server.database_url.get_secret_value())
    from gateway.ledger.sqlite_store import SqliteStore

    return SqliteStore(server.data_dir / "usage.sqlite3")
