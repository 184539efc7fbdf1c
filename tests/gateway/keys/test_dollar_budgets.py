"""Budgets in dollars: reserved at admission, settled to the actual cost, per calendar period, held under concurrency.

The priced model here costs nothing per prompt token and $1 per completion
token, and the fake upstream answers every chat with 3 completion tokens;
a request with ``max_tokens: 3`` therefore reserves exactly what it costs, $3.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from gateway.keys.budgets import (
    DollarBudget,
    LocalBudgetBook,
    Refusal,
    Reservation,
    period_of,
    reset_time,
    resets_at,
)
from tests.conftest import GATEWAY_YAML
from tests.support.servers import ServedApp

PARIS = ZoneInfo("Europe/Paris")
ADMIN_KEY = "sk-admin-dollars-0123456789"
SPENDER, TEAMMATE, OTHER = "sk-spender-0123456789", "sk-teammate-0123456789", "sk-other-dollars-0123456789"
SERVER_YAML = """server:
  data_dir: ${DATA_DIR}
  ledger_flush_interval: 0.05
  admin_keys: ["${ADMIN_KEY}"]
  budget_timezone: Europe/Paris
  api_keys:
    - {key: "${SPENDER}", name: spender, budget_usd: 30, budget_period: monthly}
    - {key: "${TEAMMATE}", name: teammate}
    - {key: "${OTHER}", name: other, model_budgets_usd: {dear: 6}}
  teams:
    - {name: pair, keys: [teammate, other], budget_usd: 9, budget_period: daily}
"""
MODELS_YAML = """
  dear:
    price: {input_per_mtok: 0, output_per_mtok: 1000000}
    deployments: [{provider: fake, model: fake-model}]
  cheap:
    price: {input_per_mtok: 0, output_per_mtok: 0}
    deployments: [{provider: fake, model: fake-model}]
"""
ASK = {"model": "dear", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


def _config(gateway_config: GatewayConfig, data_dir: Path, extra: str = "") -> GatewayConfig:
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y", "ADMIN_KEY": ADMIN_KEY,
               "SPENDER": SPENDER, "TEAMMATE": TEAMMATE, "OTHER": OTHER, "DATA_DIR": str(data_dir)}  # fmt: skip
    config = parse_config(SERVER_YAML + extra + GATEWAY_YAML + MODELS_YAML, environ=environ)
    return config.model_copy(update={"providers": gateway_config.providers})


@pytest.fixture()
def dollars_gateway(gateway_config: GatewayConfig, tmp_path: Path) -> Iterator[str]:
    config = _config(gateway_config, tmp_path)
    with ServedApp(create_app(config), server=config.server) as served:
        yield served.url


async def _many(url: str, key: str, count: int, body: dict[str, object]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        return await asyncio.gather(*(
            client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            for _ in range(count)
        ))  # fmt: skip


def test_64_concurrent_requests_spend_exactly_the_budget(dollars_gateway: str) -> None:
    answers = asyncio.run(_many(dollars_gateway, SPENDER, 64, ASK))
    answered = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(answered) == 10  # $30 at $3 each, however the 64 interleave
    assert all(a.status_code == 429 and a.json()["error"]["code"] == "insufficient_quota" for a in refused)
    assert "monthly budget of $30.00 of key 'spender'" in refused[0].json()["error"]["message"]
    assert refused[0].headers["x-should-retry"] == "false"
    time.sleep(0.3)  # the ledger's flush interval is 0.05 s
    usage = httpx.get(f"{dollars_gateway}/v1/usage", params={"api_key": "spender", "group_by": ""},
                      headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()  # fmt: skip
    assert usage["totals"]["cost_usd"] == pytest.approx(30.0)  # the ledger agrees: not a cent past it
    remaining = [float(a.headers["x-switchyard-budget-remaining-usd"]) for a in answered]
    assert min(remaining) == 0.0 and max(remaining) == pytest.approx(27.0)


def test_a_team_shares_its_budget_and_a_model_budget_holds_alone(dollars_gateway: str) -> None:
    first = asyncio.run(_many(dollars_gateway, TEAMMATE, 2, ASK))
    assert [a.status_code for a in first] == [200, 200]  # $6 of the team's $9
    second = asyncio.run(_many(dollars_gateway, OTHER, 2, ASK))
    assert sorted(a.status_code for a in second) == [200, 429]  # the team's last $3
    assert "daily budget of $9.00 of team 'pair'" in next(a for a in second if a.status_code == 429).text
    cheap = asyncio.run(_many(dollars_gateway, OTHER, 3, {**ASK, "model": "cheap"}))
    assert [a.status_code for a in cheap] == [200, 200, 200]  # $0 each: the team's budget is not touched


def test_a_model_budget_refuses_that_model_only(gateway_config: GatewayConfig, tmp_path: Path) -> None:
    config = _config(gateway_config, tmp_path).model_copy(deep=True)
    server = config.server.model_copy(update={"teams": []})
    config = config.model_copy(update={"server": server})
    with ServedApp(create_app(config), server=config.server) as served:
        dear = asyncio.run(_many(served.url, OTHER, 3, ASK))
        assert sorted(a.status_code for a in dear) == [200, 200, 429]  # $6 for `dear`
        assert "budget of $6.00 of key 'other' for `dear`" in next(a for a in dear if a.status_code == 429).text
        assert asyncio.run(_many(served.url, OTHER, 1, {**ASK, "model": "cheap"}))[0].status_code == 200


def test_an_unpriced_model_is_refused_to_a_key_with_a_dollar_budget(dollars_gateway: str) -> None:
    (answer,) = asyncio.run(_many(dollars_gateway, SPENDER, 1, {**ASK, "model": "gpt-test"}))
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "model_not_priced"


def test_a_restart_picks_up_the_periods_spend_from_the_ledger(gateway_config: GatewayConfig, tmp_path: Path) -> None:
    config = _config(gateway_config, tmp_path)
    with ServedApp(create_app(config), server=config.server) as served:
        assert sum(a.status_code == 200 for a in asyncio.run(_many(served.url, SPENDER, 4, ASK))) == 4  # $12
    with ServedApp(create_app(config), server=config.server) as served:
        again = asyncio.run(_many(served.url, SPENDER, 10, ASK))
        assert sum(a.status_code == 200 for a in again) == 6  # the $18 left, not a fresh $30


def test_a_period_rolls_over_at_midnight_where_the_budget_lives() -> None:
    now = [datetime(2026, 3, 28, 23, 59, 30, tzinfo=PARIS).timestamp()]  # the night before the clocks go forward
    book = LocalBudgetBook(PARIS, clock=lambda: now[0])
    daily = DollarBudget("key:k", 5.0, "daily", "daily budget of $5.00 of key 'k'")
    held = book.reserve_now([daily], 5.0)
    assert isinstance(held, Reservation) and held.remaining_usd == 0.0
    refused = book.reserve_now([daily], 0.01)
    assert isinstance(refused, Refusal)
    assert reset_time(refused, PARIS) == datetime(2026, 3, 29, tzinfo=PARIS)
    now[0] = datetime(2026, 3, 29, 0, 0, 1, tzinfo=PARIS).timestamp()
    assert isinstance(book.reserve_now([daily], 5.0), Reservation)  # a new day: a new $5
    book.settle(held, 4.0)  # yesterday's request settles in yesterday
    assert isinstance(book.reserve_now([daily], 0.01), Refusal)  # today's $5 is reserved already
    assert period_of("monthly", now[0], PARIS) == "2026-03-01"
    assert resets_at("monthly", now[0], PARIS) == datetime(2026, 4, 1, tzinfo=PARIS).timestamp()
    assert period_of("weekly", now[0], PARIS) == "2026-03-23"  # the Monday
    assert resets_at("weekly", now[0], PARIS) == datetime(2026, 3, 30, tzinfo=PARIS).timestamp()
    assert period_of("total", now[0], PARIS) == "total" and resets_at("total", now[0], PARIS) is None


def test_a_settled_request_frees_what_it_did_not_spend() -> None:
    book = LocalBudgetBook(ZoneInfo("UTC"), clock=lambda: 0.0)
    total = DollarBudget("key:k", 10.0, "total", "budget of $10.00 of key 'k'")
    first = book.reserve_now([total], 8.0)
    assert isinstance(first, Reservation) and isinstance(book.reserve_now([total], 3.0), Refusal)
    book.settle(first, 1.0)  # it cost $1 of the $8 it held
    second = book.reserve_now([total], 9.0)
    assert isinstance(second, Reservation) and second.remaining_usd == pytest.approx(0.0)
