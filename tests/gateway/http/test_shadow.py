"""Shadow traffic on real sockets: a copy goes to another model after the answer, and is counted apart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import ServerConfig, parse_config
from gateway.ledger import open_store
from gateway.ledger.records import COLUMNS
from tests.providers.local.conftest import wait_ready
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

ADMIN = "sk-admin-shadow-tests-0123456789"
KEY = "sk-shadow-client-0123456789"
CONFIG = """
server:
  data_dir: "{data}"
  ledger_flush_interval: 0.05
  admin_keys: ["{admin}"]
  api_keys: [{{key: "{key}", name: client, budget_usd: 0.01}}]
router: {{retries: {{attempts: 1}}}}
providers:
  fake: {{type: custom, base_url: "{upstream}/v1", api_key: sk-fake-upstream-key}}
  encoder: {{type: local, model: all-minilm-l6-v2}}
models:
  main:
    price: {{input_per_mtok: 1, output_per_mtok: 1}}
    shadow: [{{model: candidate, sample: 1.0}}, {{model: failing, sample: 1.0}}]
    deployments: [{{provider: fake, model: gpt-4o-mini}}]
  candidate:  # slow, and dear: a shadow's cost above the key's whole budget
    price: {{input_per_mtok: 100000, output_per_mtok: 100000}}
    deployments: [{{provider: fake, model: slow-3}}]
  failing:
    deployments: [{{provider: fake, model: status-500}}]
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    with ServedApp(fake) as served:
        fake.url = served.url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shadow-data")


@pytest.fixture(scope="module")
def gateway(data_dir: Path, upstream: FakeOpenAI) -> Iterator[str]:
    yaml = CONFIG.format(data=data_dir, admin=ADMIN, key=KEY, upstream=upstream.url)  # type: ignore[attr-defined]
    with ServedApp(create_app(parse_config(yaml, environ={}))) as served:
        wait_ready(served.url)
        yield served.url


def usage(url: str, **params: Any) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/v1/usage", params=params, headers={"Authorization": f"Bearer {ADMIN}"})
    return answer.json()["data"]  # type: ignore[no-any-return]


def shadow_rows(url: str, at_least: int) -> dict[str, dict[str, Any]]:
    """/v1/usage by model once ``at_least`` shadow copies are recorded (a shadow model takes 3 s; bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = {row["model"]: row for row in usage(url, group_by="model")}
        if sum(row["shadow_requests"] for row in rows.values()) >= at_least:
            return rows
        time.sleep(0.1)
    raise AssertionError("the shadow copies were never recorded")


def test_a_copy_goes_after_the_answer_and_is_counted_apart(gateway: str, upstream: FakeOpenAI) -> None:
    api = openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)
    started = time.monotonic()
    raw = api.chat.completions.with_raw_response.create(model="main", messages=[{"role": "user", "content": "ping"}])
    answered = time.monotonic() - started
    assert raw.parse().choices[0].message.content == "You said: ping"
    # The candidate takes 3 s; the answer came without waiting for it (and before its copy was recorded).
    assert answered < 2.5
    assert "candidate" not in {row["model"] for row in usage(gateway, group_by="model")}

    stream = api.chat.completions.create(model="main", messages=[{"role": "user", "content": "pong"}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == "You said: pong"

    rows = shadow_rows(gateway, at_least=4)
    candidate, failing, main = rows["candidate"], rows["failing"], rows["main"]
    assert candidate["shadow_requests"] == 2 and candidate["requests"] == 0 and candidate["cost_usd"] == 0
    assert candidate["shadow_cost_usd"] > 0.01  # dearer than the key's whole budget ...
    assert 0.99 <= candidate["shadow_similarity"] <= 1.0001  # the fake quotes the question either way
    assert failing["shadow_requests"] == 2 and failing["shadow_similarity"] is None
    assert main["requests"] == 2 and main["shadow_requests"] == 0

    # ... and none of it was charged to the key: its budget still admits requests.
    again = api.chat.completions.with_raw_response.create(model="main", messages=[{"role": "user", "content": "ok"}])
    assert again.http_response.status_code == 200
    assert float(again.headers["x-switchyard-budget-remaining-usd"]) > 0.005  # less only this request's hold
    copies = [request.body for request in upstream.requests if request.body["model"] == "slow-3"]
    assert len(copies) >= 2 and all(copy.get("stream") is not True for copy in copies)
    # The client set no max_tokens: each copy is bounded by the real answer's length (at least 64 tokens).
    assert all(copy["max_tokens"] == 64 for copy in copies)


def test_a_shadow_record_names_the_request_it_copied(gateway: str, data_dir: Path) -> None:
    api = openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)
    raw = api.chat.completions.with_raw_response.create(model="main", messages=[{"role": "user", "content": "who?"}])
    request_id = raw.headers["x-request-id"]
    deadline = time.monotonic() + 30
    while len(records := copies_of(data_dir, request_id)) < 2:
        assert time.monotonic() < deadline, "the shadow copies were never recorded"
        time.sleep(0.1)
    statuses = {r["model"]: r["status"] for r in records}
    assert statuses["candidate"] == 200 and statuses["failing"] >= 500  # 500, or 503 once its breaker opened
    assert all(r["api_key"] == "client" for r in records)


def copies_of(data_dir: Path, request_id: str) -> list[dict[str, Any]]:
    store = open_store(ServerConfig(data_dir=data_dir))
    try:
        records = [dict(zip(COLUMNS, row, strict=True)) for row in store.records(None, None)]
    finally:
        store.close()
    return [record for record in records if record["shadow_of"] == request_id]
