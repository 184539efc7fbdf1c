"""Anthropic's Message Batches API on the gateway, through the official anthropic SDK, served by uvicorn on a real port.

Each request goes through the /v1/messages door to an OpenAI-protocol
upstream (tests/support's FakeOpenAI on 127.0.0.1, which quotes the last
user message; ``slow-<s>`` models wait first), so the batch is translated,
routed and counted as live Messages requests are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.conftest import PLANTED_KEY
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

KEY, OTHER = "sk-msgbatch-team-0123456789", "sk-msgbatch-other-0123456789"
CONFIG = """
server:
  data_dir: "{data}"
  batch_concurrency: 1
  api_keys: [{{key: {key}, name: team}}, {{key: {other}, name: other, models: [claude-test]}}]
providers:
  fake: {{type: custom, base_url: "{fake}/v1", api_key: "{fake_key}"}}
models:
  claude-test: {{deployments: [{{provider: fake, model: fake-model}}]}}
  claude-slow: {{deployments: [{{provider: fake, model: slow-0.2}}]}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake_upstream: tuple[FakeOpenAI, ServedApp]) -> Iterator[str]:
    yaml = CONFIG.format(data=tmp_path_factory.mktemp("msgbatches"), key=KEY, other=OTHER, fake=fake_upstream[1].url,
                         fake_key=PLANTED_KEY)  # fmt: skip
    config = parse_config(yaml, environ={})
    with ServedApp(create_app(config), server=config.server) as served:
        yield served.url


def client_for(gateway: str, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)


def request(custom_id: str, text: str, model: str = "claude-test") -> dict:
    return {"custom_id": custom_id, "params": {"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": text}]}}


def ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 20) -> anthropic.types.messages.MessageBatch:
    deadline = time.monotonic() + timeout
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)
    return batch


def test_a_message_batch_is_answered_request_by_request(gateway: str) -> None:
    client = client_for(gateway)
    batch = client.messages.batches.create(requests=[request("first", "one"), request("second", "two")])  # type: ignore[list-item]
    assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress" and batch.results_url is None
    done = ended(client, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.errored, done.request_counts.processing) == (2, 0, 0)
    assert done.ended_at is not None and done.results_url == f"{gateway}/v1/messages/batches/{batch.id}/results"
    results = {row.custom_id: row.result for row in client.messages.batches.results(batch.id)}
    assert set(results) == {"first", "second"}
    first = results["first"]
    assert first.type == "succeeded" and first.message.content[0].text == "You said: one"  # type: ignore[union-attr]
    assert first.message.usage.input_tokens > 0  # type: ignore[union-attr]
    assert batch.id in [each.id for each in client.messages.batches.list(limit=100)]
    openai_batches = httpx.get(f"{gateway}/v1/batches", headers={"authorization": f"Bearer {KEY}"}).json()["data"]
    assert batch.id not in [each["id"] for each in openai_batches]  # each API lists its own
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError) as gone:
        client.messages.batches.retrieve(batch.id)
    assert gone.value.body["type"] == "error" and gone.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_a_bad_request_is_refused_at_creation_in_anthropics_shape(gateway: str) -> None:
    client = client_for(gateway)
    bad = {"custom_id": "no-max", "params": {"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(requests=[request("ok", "fine"), bad])  # type: ignore[list-item]
    body = refused.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "requests[1].params.max_tokens" in body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as twice:
        client.messages.batches.create(requests=[request("same", "a"), request("same", "b")])  # type: ignore[list-item]
    assert "requests[1].custom_id" in twice.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as unknown:
        client.messages.batches.create(requests=[request("a", "b"), request("c", "d", model="claude-elsewhere")])  # type: ignore[list-item]
    assert unknown.value.body["error"]["message"].startswith("requests[1].params.model: 'claude-elsewhere'")  # type: ignore[index]
    with pytest.raises(anthropic.PermissionDeniedError) as denied:  # a model this key may not call
        client_for(gateway, OTHER).messages.batches.create(requests=[request("x", "y", model="claude-slow")])  # type: ignore[list-item]
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]


def test_a_canceled_batch_ends_with_its_unsent_requests_canceled(gateway: str) -> None:
    client = client_for(gateway)
    batch = client.messages.batches.create(requests=[request(f"r{n}", f"n{n}", "claude-slow") for n in range(6)])  # type: ignore[misc]
    early = httpx.get(f"{gateway}/v1/messages/batches/{batch.id}/results", headers={"x-api-key": KEY})
    assert early.status_code == 409 and early.json()["type"] == "error"  # only once ended, in Anthropic's shape
    with pytest.raises(anthropic.AnthropicError):  # the SDK: no results_url yet
        client.messages.batches.results(batch.id)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    done = ended(client, batch.id)
    counts = done.request_counts
    assert counts.canceled >= 4 and counts.succeeded + counts.canceled == 6
    results = list(client.messages.batches.results(batch.id))
    assert sorted(row.custom_id for row in results) == [f"r{n}" for n in range(6)]
    assert sum(row.result.type == "canceled" for row in results) == counts.canceled
    with pytest.raises(anthropic.NotFoundError):  # another key's batch is nobody's
        client_for(gateway, OTHER).messages.batches.retrieve(batch.id)
