"""The default ledger: SQLite in WAL mode, one file in the data directory.

WAL lets ``GET /v1/usage`` read while a batch is written, and with
``synchronous=NORMAL`` a committed batch survives the process being killed
(only a power loss can take the last commits back).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.ledger.records import (
    COLUMNS,
    SPENT_SQL,
    UsageQuery,
    UsageRecord,
    added_columns,
    batch_json,
    records_sql,
    schema,
    summary_sql,
)
from gateway.sqlite import connect

SCHEMA = schema("INTEGER PRIMARY KEY")

_FIELDS = ", ".join(f"json_extract(value, '$[{index}]')" for index in range(len(COLUMNS)))
INSERT = f"INSERT INTO usage_records ({', '.join(COLUMNS)}) SELECT {_FIELDS} FROM json_each(?)"


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.description = f"SQLite {path}"
        self._db = connect(path)  # one writer thread uses it, but not the thread that opened it
        self._db.executescript(SCHEMA)
        existing = {row[1] for row in self._db.execute("PRAGMA table_info(usage_records)")}
        for statement in added_columns(existing):
            self._db.execute(statement)

    def append(self, records: Sequence[UsageRecord]) -> None:
        self._db.execute(INSERT, (batch_json(records),))  # one statement, one transaction

    def summarize(self, query: UsageQuery) -> list[dict[str, Any]]:
        sql, values, names = summary_sql(query, "?")
        return [dict(zip(names, row)) for row in self._db.execute(sql, values)]

    def spent_by_key(self) -> dict[str, int]:
        return {name: int(total) for name, total in self._db.execute(SPENT_SQL)}

    def records(self, since: float | None, until: float | None) -> Iterator[tuple[Any, ...]]:
        sql, values = records_sql(since, until, "?")
        yield from self._db.execute(sql, values)

    def close(self) -> None:
        self._db.close()
