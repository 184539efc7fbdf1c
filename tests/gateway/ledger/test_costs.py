"""What each request cost: on the answer, in its stream's usage chunk, in the ledger, in /v1/usage and /metrics.

The prices here are a model's own ``price:`` (the config's override), so the
figures are the test's arithmetic, not a price table's; the tables'
worked examples are tests/gateway/pricing/. The fake upstream reports 7
prompt and 3 completion tokens for every chat answer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from gateway.ledger import UsageQuery, UsageRecord
from gateway.ledger.records import COLUMNS, LATER_COLUMNS
from gateway.ledger.sqlite_store import SqliteStore
from tests.conftest import GATEWAY_YAML
from tests.support.servers import ServedApp

ADMIN_KEY = "sk-admin-costs-0123456789"
TEAM_KEY = "sk-team-costs-0123456789"
SERVER_YAML = """server:
  data_dir: ${DATA_DIR}
  ledger_flush_interval: 0.05
  admin_keys: ["${ADMIN_KEY}"]
  api_keys:
    - {key: "${TEAM_KEY}", name: costs-team, models: ["*"]}
"""
MODELS_YAML = """
  priced:
    price: {input_per_mtok: 2.5, output_per_mtok: 10, cached_input_per_mtok: 1.25}
    deployments: [{provider: fake, model: fake-model}]
"""
# 7 prompt tokens at $2.50 per million, 3 completion tokens at $10 per million.
PRICED_USD = 7 * 2.5 / 1e6 + 3 * 10 / 1e6
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def costs_gateway(gateway_config: GatewayConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y", "ADMIN_KEY": ADMIN_KEY,
               "TEAM_KEY": TEAM_KEY, "DATA_DIR": str(tmp_path_factory.mktemp("costs"))}  # fmt: skip
    config = parse_config(SERVER_YAML + GATEWAY_YAML + MODELS_YAML, environ=environ)
    config = config.model_copy(update={"providers": gateway_config.providers})
    with ServedApp(create_app(config), server=config.server) as served:
        yield served.url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TEAM_KEY, max_retries=0)


def test_an_answer_says_what_it_cost(costs_gateway: str) -> None:
    raw = client(costs_gateway).chat.completions.with_raw_response.create(model="priced", messages=HI)
    assert raw.headers["x-switchyard-cost-usd"] == f"{PRICED_USD:.8f}" == "0.00004750"
    unpriced = client(costs_gateway).chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
    assert "x-switchyard-cost-usd" not in unpriced.headers  # fake-model at a custom base_url: no price known


def test_a_streams_usage_chunk_carries_its_cost(costs_gateway: str) -> None:
    stream = client(costs_gateway).chat.completions.create(
        model="priced", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.model_extra == {"cost_usd": pytest.approx(PRICED_USD)}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: hi"
    unasked = list(client(costs_gateway).chat.completions.create(model="priced", messages=HI, stream=True))
    assert all(chunk.usage is None for chunk in unasked)  # no usage asked for: no usage chunk, no cost in it


def _usage(url: str, **params: str) -> dict[str, object]:
    deadline = time.monotonic() + 5
    while True:
        answer = httpx.get(f"{url}/v1/usage", params=params, headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
        if answer["totals"]["requests"] or time.monotonic() > deadline:  # type: ignore[index]
            return answer  # type: ignore[no-any-return]
        time.sleep(0.05)


def test_the_ledger_and_usage_sum_costs_and_count_the_unpriced(costs_gateway: str) -> None:
    before = _usage(costs_gateway, group_by="model")
    client(costs_gateway).chat.completions.create(model="priced", messages=HI)
    client(costs_gateway).chat.completions.create(model="gpt-test", messages=HI)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = _usage(costs_gateway, group_by="model")
        if after["totals"]["requests"] == before["totals"]["requests"] + 2:  # type: ignore[index]
            break
        time.sleep(0.05)
    rows = {row["model"]: row for row in after["data"]}  # type: ignore[attr-defined]
    earlier = {row["model"]: row for row in before["data"]}  # type: ignore[attr-defined]
    priced = rows["priced"]  # each request at the model's price: the sums of its tokens at the same rates
    assert priced["cost_usd"] == pytest.approx(priced["prompt_tokens"] * 2.5e-6 + priced["completion_tokens"] * 1e-5)
    assert rows["priced"]["unpriced_requests"] == 0
    assert rows["gpt-test"]["unpriced_requests"] == rows["gpt-test"]["requests"]  # unknown, never $0
    assert rows["gpt-test"]["cost_usd"] == 0
    assert rows["gpt-test"]["unpriced_requests"] == earlier.get("gpt-test", {"unpriced_requests": 0})["unpriced_requests"] + 1
    assert after["totals"]["cost_usd"] == pytest.approx(sum(row["cost_usd"] for row in rows.values()))  # type: ignore[index]


def test_metrics_count_dollars_per_model_provider_and_key(costs_gateway: str) -> None:
    client(costs_gateway).chat.completions.create(model="priced", messages=HI)
    metrics = httpx.get(f"{costs_gateway}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    (line,) = [line for line in metrics.splitlines() if line.startswith('switchyard_cost_usd_total{key="costs-team",model="priced"')]
    assert float(line.rsplit(" ", 1)[1]) >= PRICED_USD
    assert 'switchyard_cost_usd_total{key="costs-team",model="gpt-test"' not in metrics  # unknown is not $0


def test_a_ledger_from_before_costs_gains_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    old = [name for name in COLUMNS if name not in LATER_COLUMNS]
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE usage_records (id INTEGER PRIMARY KEY, {', '.join(old)})")
        db.execute(f"INSERT INTO usage_records ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})",
                   (1.0, "r0", None, "chat/completions", "m", "p", "d", 200, False, 1, 2, 3, False, 4.0))  # fmt: skip
    store = SqliteStore(path)
    record = UsageRecord(2.0, "r1", "k", "chat/completions", "m", "p", "d", 200, False, 10, 5, 15, False, 1.0,
                         4, 0, 2, 0.25, "config")  # fmt: skip
    store.append([record])
    (row,) = store.summarize(UsageQuery(group_by=()))
    assert (row["requests"], row["cached_tokens"], row["reasoning_tokens"]) == (2, 4, 2)
    assert (row["cost_usd"], row["unpriced_requests"]) == (0.25, 1)  # the old record's cost is unknown
    store.close()
