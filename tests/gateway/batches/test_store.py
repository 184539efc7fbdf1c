"""The batch store on a real SQLite file and a real PostgreSQL: one result per line, leases, owners, pages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.batches import (
    BatchStore,
    LineResult,
    Owner,
    StoredBatch,
    StoredFile,
    open_batch_store,
)
from gateway.config import ADMIN_KEY_NAME, ServerConfig


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BatchStore]:
    url = SecretStr(request.getfixturevalue("postgres_url")) if request.param == "postgres" else None
    opened = open_batch_store(ServerConfig(data_dir=tmp_path, database_url=url))
    yield opened
    await opened.aclose()


def batch(owner: str | None = "team-a", created_at: int = 1_700_000_000) -> StoredBatch:
    # A fresh id each time: the PostgreSQL database is shared by the whole session.
    return StoredBatch(f"batch_{uuid.uuid4().hex}", Owner(owner, "red", ("gpt-test",)), "/v1/chat/completions",
                       "file-x", "24h", created_at, created_at + 86400, 3, metadata={"a": "b"})  # fmt: skip


async def test_a_line_keeps_its_first_result_only(store: BatchStore) -> None:
    kept = batch()
    await store.put_batch(kept)
    first = LineResult(1, True, {"custom_id": "one", "response": {"status_code": 200}})
    assert await store.put_result(kept.id, first) is True
    assert await store.put_result(kept.id, LineResult(1, False, {"custom_id": "one", "again": True})) is False
    assert await store.put_result(kept.id, LineResult(0, False, {"custom_id": "zero"})) is True
    assert await store.answered(kept.id) == {0, 1}
    assert await store.counts(kept.id) == (1, 1)
    assert await store.results(kept.id) == [LineResult(0, False, {"custom_id": "zero"}), first]


async def test_a_batch_reads_back_as_kept_and_only_for_its_owner(store: BatchStore) -> None:
    kept = batch()
    await store.put_batch(kept)
    assert await store.get_batch(kept.id, "team-a") == kept
    assert await store.get_batch(kept.id, ADMIN_KEY_NAME) == kept
    assert await store.get_batch(kept.id, "team-b") is None and await store.get_batch(kept.id, None) is None
    kept.status, kept.times = "in_progress", {"in_progress_at": 5}
    await store.put_batch(kept)
    assert (await store.get_batch(kept.id, "team-a")) == kept
    assert kept.id in {found.id for found in await store.unfinished()}


async def test_one_runner_holds_a_batch_until_its_lease_lapses(store: BatchStore) -> None:
    kept = batch()
    await store.put_batch(kept)
    assert await store.claim(kept.id, "one", until=100.0, now=50.0)
    assert not await store.claim(kept.id, "two", until=110.0, now=60.0)
    assert await store.claim(kept.id, "one", until=130.0, now=70.0)  # renewed
    assert await store.claim(kept.id, "two", until=240.0, now=140.0)  # lapsed: taken over
    await store.release(kept.id, "one")  # not its lease any more: nothing changes
    assert not await store.claim(kept.id, "one", until=250.0, now=150.0)
    await store.release(kept.id, "two")
    assert await store.claim(kept.id, "one", until=260.0, now=160.0)


async def test_pages_of_batches_and_files(store: BatchStore) -> None:
    owner = f"owner-{uuid.uuid4().hex}"
    made = [batch(owner, created_at=1_700_000_000 + n) for n in range(5)]
    for each in made:
        await store.put_batch(each)
    newest = [each.id for each in reversed(made)]
    first = await store.list_batches(owner, None, 2)
    assert [each.id for each in first] == newest[:2]
    assert [each.id for each in await store.list_batches(owner, first[-1].id, 10)] == newest[2:]
    files = [StoredFile(f"file-{uuid.uuid4().hex}", owner, "a.jsonl", "batch", 10, 1_700_000_000 + n) for n in range(3)]
    for each in files:
        await store.put_file(each)
    assert await store.list_files(owner, "batch", 10, descending=False) == files
    assert await store.list_files(owner, "batch", 10, descending=True, after=files[2].id) == files[1::-1]
    assert await store.list_files(owner, "batch_output", 10, descending=True) == []
    assert await store.delete_file(files[0].id, "someone-else") is False
    assert await store.delete_file(files[0].id, owner) is True
    assert await store.get_file(files[0].id, owner) is None
