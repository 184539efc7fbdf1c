"""Two gateway replicas behind one real Redis hold one budget in dollars.

The priced model of ``test_dollar_budgets.py``: a request with ``max_tokens: 3``
reserves exactly what it costs, $3, so a $30 budget admits exactly 10.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.gateway.keys.test_dollar_budgets import (
    ADMIN_KEY,
    ASK,
    SPENDER,
    _config,
    _many,
)
from tests.support.servers import ServedApp


@pytest.fixture()
def budgets_redis(redis_url: str) -> Iterator[redis.Redis]:
    """The session's redis-server, without the budgets an earlier test left there."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("switchyard:{budget}:*"):
        client.delete(key)
    yield client
    client.close()


def _replica(gateway_config: GatewayConfig, data_dir: Path, redis_url: str) -> ServedApp:
    config = _config(gateway_config, data_dir, f"  redis_url: {redis_url}\n")
    return ServedApp(create_app(config), server=config.server)


def _spent(url: str) -> float:
    usage = httpx.get(f"{url}/v1/usage", params={"api_key": "spender", "group_by": ""},
                      headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()  # fmt: skip
    return float(usage["totals"]["cost_usd"])


def _settled(client: redis.Redis) -> dict[bytes, bytes]:
    """The spender's monthly hash, once every settlement has reached Redis (they are sent after the answer)."""
    (key,) = client.scan_iter("switchyard:{budget}:key:spender:*")
    deadline = time.monotonic() + 5
    while float(client.hget(key, "reserved") or 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    return client.hgetall(key)


def test_64_concurrent_requests_across_two_replicas_spend_exactly_the_budget(
    gateway_config: GatewayConfig, tmp_path: Path, redis_url: str, budgets_redis: redis.Redis
) -> None:
    with _replica(gateway_config, tmp_path / "one", redis_url) as one, \
         _replica(gateway_config, tmp_path / "two", redis_url) as two:  # fmt: skip

        async def both() -> list[httpx.Response]:
            halves = await asyncio.gather(_many(one.url, SPENDER, 32, ASK), _many(two.url, SPENDER, 32, ASK))
            return halves[0] + halves[1]

        answers = asyncio.run(both())
        answered = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code != 200]
        assert len(answered) == 10  # $30 at $3 each, however the 64 interleave across the two
        assert all(a.status_code == 429 and a.json()["error"]["code"] == "insufficient_quota" for a in refused)
        assert "monthly budget of $30.00 of key 'spender'" in refused[0].json()["error"]["message"]
        settled = _settled(budgets_redis)
        assert float(settled[b"spent"]) == pytest.approx(30.0) and float(settled[b"reserved"]) == 0.0
        assert budgets_redis.ttl(next(budgets_redis.scan_iter("switchyard:{budget}:key:spender:*"))) > 0
        time.sleep(0.3)  # the ledgers' flush interval is 0.05 s
        assert _spent(one.url) + _spent(two.url) == pytest.approx(30.0)  # the ledgers agree: not a cent past it


def test_a_replica_seeds_redis_from_its_ledger_only_where_redis_has_nothing(
    gateway_config: GatewayConfig, tmp_path: Path, redis_url: str, budgets_redis: redis.Redis
) -> None:
    with _replica(gateway_config, tmp_path / "one", redis_url) as one:
        assert sum(a.status_code == 200 for a in asyncio.run(_many(one.url, SPENDER, 4, ASK))) == 4  # $12
        _settled(budgets_redis)
    for key in budgets_redis.scan_iter("switchyard:{budget}:*"):
        budgets_redis.delete(key)  # Redis lost its state: the ledger still knows
    with _replica(gateway_config, tmp_path / "one", redis_url), _replica(gateway_config, tmp_path / "two", redis_url) as two:
        # The second replica's ledger has nothing: starting after the first, it keeps the $12 the first seeded.
        again = asyncio.run(_many(two.url, SPENDER, 10, ASK))
        assert sum(a.status_code == 200 for a in again) == 6  # the $18 left, not a fresh $30
