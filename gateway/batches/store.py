"""Where files and batches are kept: SQLite in the data directory, or PostgreSQL shared by replicas.

One interface (``BatchStore``), the SQL written once here, over either
database of ``gateway.storage`` (which only connect). Both drivers are
synchronous: every call runs on a worker thread, one at a time per store,
so the event loop never waits on a database. File bodies are not here but on disk (``bodies.py``).

Exactly once: a line's result is one row keyed by (batch, line), written
with ``ON CONFLICT DO NOTHING`` before the line counts as done, so however
often a line is answered, its batch's output holds it once. A batch is run
by one process at a time: the one holding its lease (``claim``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from gateway.batches.records import (
    UNFINISHED,
    LineResult,
    NativeState,
    Owner,
    StoredBatch,
    StoredFile,
)
from gateway.config import ADMIN_KEY_NAME, ServerConfig
from gateway.storage import Database, WorkerDatabase, open_database


# Bodies are JSON text, not JSONB (which reorders keys and refuses \u0000), as in the conversations store.
# Replicas starting together take this PostgreSQL advisory lock to create the tables.
SCHEMA_LOCK = 0x4261_7463_6865_73  # "Batches"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS files (
        id TEXT PRIMARY KEY,
        owner TEXT,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS batches (
        id TEXT PRIMARY KEY,
        owner TEXT,
        created_at BIGINT NOT NULL,
        status TEXT NOT NULL,
        runner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        batch TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS batch_results (
        batch_id TEXT NOT NULL,
        line INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        output TEXT NOT NULL,
        PRIMARY KEY (batch_id, line)
    )""",
)


class BatchStore(Protocol):
    description: str
    shared: bool  # other gateway processes use it too: their leases are live

    async def put_file(self, record: StoredFile) -> None: ...
    async def get_file(self, file_id: str, owner: str | None) -> StoredFile | None: ...
    async def list_files(
        self, owner: str | None, purpose: str | None, limit: int, descending: bool, after: str | None = None
    ) -> list[StoredFile]: ...
    async def delete_file(self, file_id: str, owner: str | None) -> bool: ...
    async def put_batch(self, batch: StoredBatch) -> None:
        """Keep ``batch`` (its status and every field), replacing the one with its id."""
        ...
    async def get_batch(self, batch_id: str, owner: str | None) -> StoredBatch | None: ...
    async def list_batches(self, owner: str | None, after: str | None, limit: int, kind: str = "batch_") -> list[StoredBatch]:
        """Newest first, those created before ``after`` (an id) when given; ``kind``: the ids' prefix, the API
        that made them (``batch_`` OpenAI's, ``msgbatch_`` Anthropic's)."""
        ...
    async def delete_batch(self, batch_id: str, owner: str | None) -> bool:
        """Forget an ended batch and its results (its files stay); False when there is no such batch."""
        ...
    async def unfinished(self) -> list[StoredBatch]:
        """Every batch that has not ended, whoever runs it."""
        ...
    async def claim(self, batch_id: str, runner: str, until: float, now: float) -> bool:
        """Take or renew the lease on ``batch_id`` for ``runner`` until ``until``: False if another runner holds it."""
        ...
    async def release(self, batch_id: str, runner: str) -> None: ...
    async def put_result(self, batch_id: str, result: LineResult) -> bool:
        """Keep a line's result, durably; False (nothing changed) when that line has one already."""
        ...
    async def answered(self, batch_id: str) -> set[int]:
        """The lines of ``batch_id`` that have a result."""
        ...
    async def counts(self, batch_id: str) -> tuple[int, int]:
        """(lines answered 2xx, lines answered otherwise)."""
        ...
    async def results(self, batch_id: str) -> list[LineResult]:
        """Every result kept, in line order."""
        ...
    async def aclose(self) -> None: ...


class SqlBatchStore:
    """A ``BatchStore`` over either ``Database``, each call on a worker thread under the store's lock."""

    def __init__(self, database: Database) -> None:
        self.description = database.description
        self.shared = database.shared
        self._database = database
        self._worker = WorkerDatabase(database, "the batch store")
        self._mark = database.placeholder

    async def put_file(self, record: StoredFile) -> None:
        m = self._mark
        await self._worker.call(
            self._execute, f"INSERT INTO files (id, owner, filename, purpose, bytes, created_at) "
            f"VALUES ({m}, {m}, {m}, {m}, {m}, {m}) ON CONFLICT (id) DO NOTHING",
            (record.id, record.owner, record.filename, record.purpose, record.bytes, record.created_at),
        )  # fmt: skip

    async def get_file(self, file_id: str, owner: str | None) -> StoredFile | None:
        where, values = self._visible(file_id, owner)
        rows = await self._worker.call(self._rows, f"SELECT id, owner, filename, purpose, bytes, created_at FROM files WHERE {where}", values)
        return StoredFile(*rows[0]) if rows else None

    async def list_files(
        self, owner: str | None, purpose: str | None, limit: int, descending: bool, after: str | None = None
    ) -> list[StoredFile]:
        where, values = self._owned(owner)
        if purpose is not None:
            where, values = f"{where} AND purpose = {self._mark}", [*values, purpose]
        if after is not None:  # the page after that file, in the order asked for
            where += f" AND (created_at, id) {'<' if descending else '>'} (SELECT created_at, id FROM files WHERE id = {self._mark})"
            values = [*values, after]
        order = "DESC" if descending else "ASC"
        sql = f"SELECT id, owner, filename, purpose, bytes, created_at FROM files WHERE {where} ORDER BY created_at {order}, id {order} LIMIT {int(limit)}"
        return [StoredFile(*row) for row in await self._worker.call(self._rows, sql, values)]

    async def delete_file(self, file_id: str, owner: str | None) -> bool:
        where, values = self._visible(file_id, owner)
        return bool(await self._worker.call(self._count, f"DELETE FROM files WHERE {where}", values))

    async def put_batch(self, batch: StoredBatch) -> None:
        m = self._mark
        text = orjson.dumps(dataclasses.asdict(batch)).decode()
        await self._worker.call(
            self._execute, f"INSERT INTO batches (id, owner, created_at, status, batch) VALUES ({m}, {m}, {m}, {m}, {m}) "
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status, batch = excluded.batch",
            (batch.id, batch.owner.name, batch.created_at, batch.status, text),
        )  # fmt: skip

    async def get_batch(self, batch_id: str, owner: str | None) -> StoredBatch | None:
        where, values = self._visible(batch_id, owner)
        rows = await self._worker.call(self._rows, f"SELECT batch FROM batches WHERE {where}", values)
        return _batch(rows[0][0]) if rows else None

    async def list_batches(self, owner: str | None, after: str | None, limit: int, kind: str = "batch_") -> list[StoredBatch]:
        where, values = self._owned(owner)
        m = self._mark
        where, values = f"{where} AND id LIKE {m}", [*values, f"{kind}%"]
        if after is not None:  # the page after that batch: older, or as old with a smaller id
            where += (f" AND (created_at, id) < (SELECT created_at, id FROM batches WHERE id = {m})")
            values = [*values, after]
        sql = f"SELECT batch FROM batches WHERE {where} ORDER BY created_at DESC, id DESC LIMIT {int(limit)}"
        return [_batch(row[0]) for row in await self._worker.call(self._rows, sql, values)]

    async def delete_batch(self, batch_id: str, owner: str | None) -> bool:
        where, values = self._visible(batch_id, owner)
        deleted = bool(await self._worker.call(self._count, f"DELETE FROM batches WHERE {where}", values))
        if deleted:
            await self._worker.call(self._execute, f"DELETE FROM batch_results WHERE batch_id = {self._mark}", (batch_id,))
        return deleted

    async def unfinished(self) -> list[StoredBatch]:
        marks = ", ".join([self._mark] * len(UNFINISHED))
        rows = await self._worker.call(self._rows, f"SELECT batch FROM batches WHERE status IN ({marks}) ORDER BY created_at", UNFINISHED)
        return [_batch(row[0]) for row in rows]

    async def claim(self, batch_id: str, runner: str, until: float, now: float) -> bool:
        m = self._mark
        sql = (f"UPDATE batches SET runner = {m}, lease_until = {m} WHERE id = {m} "
               f"AND (runner IS NULL OR runner = {m} OR lease_until < {m})")  # fmt: skip
        return bool(await self._worker.call(self._count, sql, (runner, until, batch_id, runner, now)))

    async def release(self, batch_id: str, runner: str) -> None:
        m = self._mark
        await self._worker.call(self._execute, f"UPDATE batches SET runner = NULL, lease_until = 0 WHERE id = {m} AND runner = {m}", (batch_id, runner))

    async def put_result(self, batch_id: str, result: LineResult) -> bool:
        m = self._mark
        sql = f"INSERT INTO batch_results (batch_id, line, ok, output) VALUES ({m}, {m}, {m}, {m}) ON CONFLICT (batch_id, line) DO NOTHING"
        return bool(await self._worker.call(self._count, sql, (batch_id, result.line, int(result.ok), orjson.dumps(result.output).decode())))

    async def answered(self, batch_id: str) -> set[int]:
        rows = await self._worker.call(self._rows, f"SELECT line FROM batch_results WHERE batch_id = {self._mark}", (batch_id,))
        return {row[0] for row in rows}

    async def counts(self, batch_id: str) -> tuple[int, int]:
        sql = f"SELECT COALESCE(SUM(ok), 0), COUNT(*) FROM batch_results WHERE batch_id = {self._mark}"
        ok, answered = (await self._worker.call(self._rows, sql, (batch_id,)))[0]
        return int(ok), int(answered) - int(ok)

    async def results(self, batch_id: str) -> list[LineResult]:
        sql = f"SELECT line, ok, output FROM batch_results WHERE batch_id = {self._mark} ORDER BY line"
        rows = await self._worker.call(self._rows, sql, (batch_id,))
        return [LineResult(line, bool(ok), orjson.loads(output)) for line, ok, output in rows]

    async def aclose(self) -> None:
        await self._worker.aclose()

    def _visible(self, record_id: str, owner: str | None) -> tuple[str, list[Any]]:
        """WHERE finding ``record_id`` when ``owner`` may see it: admin keys see all, anyone else their own."""
        where, values = self._owned(owner)
        return f"id = {self._mark} AND {where}", [record_id, *values]

    def _owned(self, owner: str | None) -> tuple[str, list[Any]]:
        if owner == ADMIN_KEY_NAME:
            return "1 = 1", []
        if owner is None:
            return "owner IS NULL", []
        return f"owner = {self._mark}", [owner]

    def _execute(self, sql: str, values: Sequence[Any]) -> None:
        self._database.execute(sql, values)

    def _count(self, sql: str, values: Sequence[Any]) -> int:
        return self._database.execute(sql, values).rowcount

    def _rows(self, sql: str, values: Sequence[Any]) -> list[Any]:
        return list(self._database.execute(sql, values).fetchall())


def _batch(text: str) -> StoredBatch:
    fields = orjson.loads(text)
    owner = Owner(**{**fields["owner"], "token_models": tuple(fields["owner"]["token_models"])})
    native = fields.get("native")
    return StoredBatch(**{**fields, "owner": owner, "native": None if native is None else NativeState(**native)})


def open_batch_store(server: ServerConfig) -> BatchStore:
    """PostgreSQL when ``server.database_url`` is set, else SQLite at ``server.data_dir / 'batches.sqlite3'``.

    Nothing is opened here: the database is opened on a worker thread by the first call.
    """
    return SqlBatchStore(open_database(server, "batches", SCHEMA, SCHEMA_LOCK))
