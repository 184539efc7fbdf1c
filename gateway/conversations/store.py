"""Where stored Responses API answers are kept: SQLite in the data directory, or PostgreSQL for several replicas.

With PostgreSQL every replica reads what the others wrote, so a
``previous_response_id`` may land on any of them. Both drivers are
synchronous: every call runs on a worker thread, one at a time per store,
so the event loop never waits on a database. The SQL is written once here;
the two backends only connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.config import ADMIN_KEY_NAME, ServerConfig
from gateway.storage import Database, WorkerDatabase, open_database


# SQLite reads DOUBLE PRECISION as REAL. The bodies are JSON text, not
# PostgreSQL's JSONB, which reorders keys and refuses the \u0000 escape that
# a model's text may hold.
# Replicas starting together take this PostgreSQL advisory lock to create the table.
SCHEMA_LOCK = 0x5265_7370_6F6E_7365  # "Response"
SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    response TEXT NOT NULL,
    conversation TEXT NOT NULL
)"""
COLUMNS = ("id", "owner", "created_at", "response", "conversation")


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str  # "resp_..."
    owner: str | None  # the name of the API key that created it; None when the gateway has no keys
    response: dict[str, Any]  # the Response object as the client was answered
    # The input items that led to it, those of earlier responses included, in the Responses input-item shape.
    conversation: list[dict[str, Any]]
    created_at: float  # unix seconds


class ResponseStore(Protocol):
    description: str  # for logs: where the responses go, with no password

    async def put(self, record: StoredResponse) -> None:
        """Keep ``record``, replacing the record with its id if there is one."""
        ...

    async def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        """The record, or None when there is none or it is another owner's."""
        ...

    async def delete(self, response_id: str, owner: str | None) -> bool:
        """Delete the record; False when there is none or it is another owner's."""
        ...

    async def aclose(self) -> None:
        """Close the database: the store must not be used after; closing again does nothing."""
        ...


class SqlResponseStore:
    """A ``ResponseStore`` over either ``Database``, each call on a worker thread under the store's lock."""

    def __init__(self, database: Database) -> None:
        self.description = database.description
        self._database = database
        self._worker = WorkerDatabase(database, "the response store")
        mark = database.placeholder
        updates = ", ".join(f"{column} = excluded.{column}" for column in COLUMNS[1:])
        self._upsert = (
            f"INSERT INTO responses ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))})"
            f" ON CONFLICT (id) DO UPDATE SET {updates}"
        )

    async def put(self, record: StoredResponse) -> None:
        await self._worker.call(self._put, record)

    async def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        return await self._worker.call(self._get, response_id, owner)

    async def delete(self, response_id: str, owner: str | None) -> bool:
        return await self._worker.call(self._delete, response_id, owner)

    async def aclose(self) -> None:
        await self._worker.aclose()

    def _put(self, record: StoredResponse) -> None:
        response = orjson.dumps(record.response).decode()
        conversation = orjson.dumps(record.conversation).decode()
        self._database.execute(self._upsert, (record.id, record.owner, record.created_at, response, conversation))

    def _get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        where, values = self._visible(response_id, owner)
        row = self._database.execute(f"SELECT {', '.join(COLUMNS)} FROM responses WHERE {where}", values).fetchone()
        if row is None:
            return None
        _, stored_owner, created_at, response, conversation = row
        return StoredResponse(response_id, stored_owner, orjson.loads(response), orjson.loads(conversation), created_at)

    def _delete(self, response_id: str, owner: str | None) -> bool:
        where, values = self._visible(response_id, owner)
        return self._database.execute(f"DELETE FROM responses WHERE {where}", values).rowcount > 0

    def _visible(self, response_id: str, owner: str | None) -> tuple[str, list[str]]:
        """The WHERE clause, and its values, that finds ``response_id`` when ``owner`` may see it.

        The admin keys see every record; anyone else, None included, only their own.
        """
        mark = self._database.placeholder
        if owner == ADMIN_KEY_NAME:
            return f"id = {mark}", [response_id]
        if owner is None:
            return f"id = {mark} AND owner IS NULL", [response_id]
        return f"id = {mark} AND owner = {mark}", [response_id, owner]


def open_response_store(server: ServerConfig) -> ResponseStore:
    """PostgreSQL when ``server.database_url`` is set, else SQLite at ``server.data_dir / 'responses.sqlite3'``.

    Nothing is opened here, so this may run on the event loop: the database
    is opened on a worker thread by the store's first call.
    """
    return SqlResponseStore(open_database(server, "responses", [SCHEMA], SCHEMA_LOCK))
