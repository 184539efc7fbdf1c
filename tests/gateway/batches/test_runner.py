"""The runner's own clock: a batch past its completion window ends expired, its unsent lines in the error file.

The relay here is a stand-in ASGI app (the runner is what is tested; the
relay's path is tested end to end in test_batches_api.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from gateway.batches import (
    BatchRunner,
    FileBodies,
    Owner,
    StoredBatch,
    StoredFile,
    open_batch_store,
)
from gateway.config import ADMIN_KEY_NAME, ServerConfig
from tests.gateway.batches.flaky import chat_lines


class Generation:
    keys = None
    in_flight = 0

    def __init__(self, relay: Any) -> None:
        self.relay = relay

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1


async def answering_relay(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    body = orjson.dumps({"object": "chat.completion", "choices": []})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def test_a_batch_past_its_window_expires_with_its_unsent_lines_as_errors(tmp_path: Path) -> None:
    server = ServerConfig(data_dir=tmp_path)
    store, bodies = open_batch_store(server), FileBodies.of(server)
    generation = Generation(answering_relay)
    now = [1_000.0]
    runner = BatchRunner(store, bodies, lambda: generation, 1, clock=lambda: now[0])  # type: ignore[arg-type,return-value]
    await bodies.write("file-in", chat_lines(5))
    await store.put_file(StoredFile("file-in", None, "in.jsonl", "batch", 1, 1000))
    batch = StoredBatch("batch_expiring", Owner(None), "/v1/chat/completions", "file-in", "24h", 1000, 1002, 5)
    await store.put_batch(batch)
    sent = 0

    async def relay_then_time_passes(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal sent
        sent += 1
        now[0] += 1.0  # two lines fit in the window
        await answering_relay(scope, receive, send)

    generation.relay = relay_then_time_passes
    await runner.start()
    for _ in range(200):
        kept = await store.get_batch(batch.id, ADMIN_KEY_NAME)
        if kept is not None and kept.status == "expired":
            break
        await asyncio.sleep(0.01)
    await runner.aclose()
    assert kept is not None and kept.status == "expired" and kept.times["expired_at"] == 1002
    assert sent == 2 and await store.counts(batch.id) == (2, 3)
    assert generation.in_flight == 0
    errors = [orjson.loads(line) for line in (await bodies.read(kept.error_file_id)).splitlines()]  # type: ignore[arg-type, union-attr]
    assert [line["custom_id"] for line in errors] == ["line-2", "line-3", "line-4"]
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in errors)
    await store.aclose()


async def test_a_batch_that_fails_at_a_resume_keeps_the_lines_it_had_answered(tmp_path: Path) -> None:
    from gateway.batches import LineResult

    server = ServerConfig(data_dir=tmp_path)
    store, bodies = open_batch_store(server), FileBodies.of(server)
    runner = BatchRunner(store, bodies, lambda: Generation(answering_relay), 1)  # type: ignore[arg-type,return-value]
    batch = StoredBatch("batch_input_gone", Owner(None), "/v1/chat/completions", "file-deleted", "24h", 1000, 10**10, 5,
                        status="in_progress")  # fmt: skip
    await store.put_batch(batch)
    for line, ok in ((0, True), (1, False), (2, True)):  # answered before the stop; then its input file was deleted
        await store.put_result(batch.id, LineResult(line, ok, {"custom_id": f"line-{line}", "response": {"status_code": 200 if ok else 400}}))
    await runner.start()
    for _ in range(200):
        kept = await store.get_batch(batch.id, ADMIN_KEY_NAME)
        if kept is not None and kept.status == "failed":
            break
        await asyncio.sleep(0.01)
    await runner.aclose()
    assert kept is not None and kept.status == "failed" and kept.errors[0]["code"] == "input_file_missing"  # type: ignore[index]
    output = [orjson.loads(line) for line in (await bodies.read(kept.output_file_id)).splitlines()]  # type: ignore[arg-type, union-attr]
    errors = [orjson.loads(line) for line in (await bodies.read(kept.error_file_id)).splitlines()]  # type: ignore[arg-type, union-attr]
    assert [line["custom_id"] for line in output] == ["line-0", "line-2"] and [line["custom_id"] for line in errors] == ["line-1"]
    await store.aclose()
