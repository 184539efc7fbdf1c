"""The response store, on a real SQLite file and a real PostgreSQL: what one store keeps, another on the same database reads."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from gateway.config import ADMIN_KEY_NAME, ServerConfig
from gateway.conversations import ResponseStore, StoredResponse, open_response_store


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> ServerConfig:
    url = SecretStr(request.getfixturevalue("postgres_url")) if request.param == "postgres" else None
    return ServerConfig(data_dir=tmp_path, database_url=url)


@pytest.fixture()
async def store(server: ServerConfig) -> AsyncIterator[ResponseStore]:
    opened = open_response_store(server)
    yield opened
    await opened.aclose()


def record(owner: str | None = "team-a", text: str = "Hello! How can I help?") -> StoredResponse:
    # A fresh id each time: the PostgreSQL database is shared by the whole session.
    response_id = f"resp_{uuid.uuid4().hex}"
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "status": "completed",
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
        "usage": {"input_tokens": 12, "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}},
        "metadata": {},
        "temperature": 0.7,
        "previous_response_id": None,
    }
    conversation: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "héllo, 世界 🚂"}]},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'},
    ]
    return StoredResponse(response_id, owner, response, conversation, time.time())


@contextmanager
def writes_blocked(server: ServerConfig) -> Iterator[None]:
    """Another connection holds the write lock until the block ends, as a busy database would."""
    if server.database_url is None:
        with closing(sqlite3.connect(server.data_dir / "responses.sqlite3", isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            yield
            db.execute("COMMIT")
        return
    with psycopg.connect(server.database_url.get_secret_value()) as db:
        db.execute("LOCK TABLE responses IN EXCLUSIVE MODE")
        yield


async def test_a_record_comes_back_as_it_was_put(store: ResponseStore) -> None:
    kept = record(text='naïve café ☕, \u0000 and \\u0000, "quoted"\nnext line')
    await store.put(kept)
    assert await store.get(kept.id, "team-a") == kept
    again = await store.get(kept.id, "team-a")
    assert again is not None and list(again.response) == list(kept.response)  # key order kept, as answered
    assert await store.get("resp_nothing", "team-a") is None


async def test_owners_see_only_their_own_and_admin_sees_all(store: ResponseStore) -> None:
    team_a, team_b, keyless = record("team-a"), record("team-b"), record(None)
    for kept in (team_a, team_b, keyless):
        await store.put(kept)
    assert await store.get(team_a.id, "team-b") is None
    assert await store.get(team_a.id, None) is None
    assert await store.get(keyless.id, "team-a") is None
    assert await store.get(keyless.id, None) == keyless
    assert await store.get(team_b.id, "team-b") == team_b
    for kept in (team_a, team_b, keyless):
        assert await store.get(kept.id, ADMIN_KEY_NAME) == kept
    assert not await store.delete(team_a.id, "team-b")
    assert not await store.delete(team_a.id, None)
    assert not await store.delete(keyless.id, "team-a")
    assert await store.get(team_a.id, "team-a") == team_a  # the refused deletes changed nothing
    assert await store.delete(keyless.id, None)
    assert await store.delete(team_b.id, ADMIN_KEY_NAME)
    assert await store.get(team_b.id, "team-b") is None


async def test_a_deleted_record_is_gone(store: ResponseStore) -> None:
    kept = record()
    await store.put(kept)
    assert await store.delete(kept.id, "team-a")
    assert await store.get(kept.id, "team-a") is None
    assert not await store.delete(kept.id, "team-a")


async def test_a_put_with_the_same_id_replaces(store: ResponseStore) -> None:
    first = record()
    second = StoredResponse(first.id, "team-a", {**first.response, "status": "incomplete"}, [], first.created_at + 1)
    await store.put(first)
    await store.put(second)
    assert await store.get(first.id, "team-a") == second


async def test_another_store_on_the_same_database_reads_what_one_wrote(
    store: ResponseStore, server: ServerConfig
) -> None:
    kept = record()
    await store.put(kept)
    replica = open_response_store(server)  # another gateway replica continuing the conversation
    try:
        assert await replica.get(kept.id, "team-a") == kept
        assert await replica.delete(kept.id, "team-a")
    finally:
        await replica.aclose()
    assert await store.get(kept.id, "team-a") is None


async def test_concurrent_puts_all_land(store: ResponseStore, server: ServerConfig) -> None:
    replica = open_response_store(server)
    try:
        for _ in range(5):
            records = [record(f"key-{index % 3}") for index in range(20)]
            # Half through each store: two replicas writing at once.
            await asyncio.gather(*((store if i % 2 else replica).put(r) for i, r in enumerate(records)))
            assert await asyncio.gather(*(store.get(r.id, r.owner) for r in records)) == records
    finally:
        await replica.aclose()


async def test_a_busy_database_does_not_block_the_event_loop(store: ResponseStore, server: ServerConfig) -> None:
    kept = record()
    await store.put(kept)  # the table exists before another connection locks it
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    with writes_blocked(server):
        # The put waits on the database; the 50 gets wait behind it for the store's connection.
        put = asyncio.create_task(store.put(record()))
        gets = [asyncio.create_task(store.get(kept.id, "team-a")) for _ in range(50)]
        await asyncio.sleep(0.5)
        assert not put.done() and not any(get.done() for get in gets)  # they did wait
    assert await asyncio.gather(*gets) == [kept] * 50
    await put
    ticker.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) >= 20 and max(gaps) < 0.2, f"the event loop stalled for {max(gaps):.3f}s"


async def test_a_closed_store_refuses_to_be_used(server: ServerConfig) -> None:
    store = open_response_store(server)
    kept = record()
    await store.put(kept)
    await store.aclose()
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await store.get(kept.id, "team-a")
    with pytest.raises(RuntimeError, match="closed"):
        await store.put(kept)


def backends(admin: psycopg.Connection[tuple[int]]) -> list[int]:
    """The server processes of the response stores' connections."""
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = 'switchyard-responses'"
    return [pid for (pid,) in admin.execute(query)]


async def test_postgres_reconnects_when_its_connection_is_cut(postgres_url: str, tmp_path: Path) -> None:
    store = open_response_store(ServerConfig(data_dir=tmp_path, database_url=SecretStr(postgres_url)))
    try:
        kept = record()
        await store.put(kept)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            before = backends(admin)
            admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = ANY(%s)", (before,))
            assert await store.get(kept.id, "team-a") == kept
            after = backends(admin)
        assert before and after and not set(before) & set(after)
    finally:
        await store.aclose()
    assert not (tmp_path / "responses.sqlite3").exists()
