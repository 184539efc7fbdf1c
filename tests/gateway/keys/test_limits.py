"""The limits' arithmetic, held to one contract in-process and in a real Redis.

Redis runs the script on its own clock, so its figures are checked to
within the time the test takes; the in-process limits get a fake clock and
are also shown to refill.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.keys.limits import (
    KeyLimits,
    KeyLimitsConfig,
    LocalKeyLimits,
    format_duration,
)
from gateway.keys.redis_limits import RedisKeyLimits


@pytest.fixture(params=["local", "redis"])
async def limits(request: pytest.FixtureRequest) -> AsyncIterator[KeyLimits]:
    if request.param == "local":
        yield LocalKeyLimits()
        return
    store = RedisKeyLimits(request.getfixturevalue("redis_url"))
    await store._calls.redis.flushdb()
    yield store
    await store.aclose()


async def settle(limits: KeyLimits) -> None:
    """Wait for background charges (Redis sends them after the answer)."""
    calls = getattr(limits, "_calls", None)
    if calls is not None:
        await calls.drain()


async def test_requests_burst_to_the_limit_then_wait_one_interval(limits: KeyLimits) -> None:
    key = KeyLimitsConfig("burst", rpm=6)  # one every 10 s, bursts of 6
    admissions = [await limits.admit(key) for _ in range(6)]
    assert [a.requests_remaining for a in admissions] == [5, 4, 3, 2, 1, 0]
    assert admissions[0].headers()["x-ratelimit-limit-requests"] == "6"
    refused = await limits.admit(key)
    assert refused.refused_by == "requests" and refused.retry_after == pytest.approx(10, abs=0.5)
    assert refused.headers()["x-ratelimit-remaining-requests"] == "0"
    assert (await limits.admit(KeyLimitsConfig("another", rpm=6))).allowed  # limits are per key


async def test_tokens_are_charged_after_the_answer_and_may_run_into_debt(limits: KeyLimits) -> None:
    key = KeyLimitsConfig("tokens", tpm=100)  # 0.6 s per token
    first = await limits.admit(key)
    assert first.allowed and first.tokens_remaining == 100
    limits.charge(key, 40)
    await settle(limits)
    assert (await limits.admit(key)).tokens_remaining == pytest.approx(60, abs=1)
    limits.charge(key, 110)  # 150 in all: 50 over the minute's 100
    await settle(limits)
    refused = await limits.admit(key)
    assert refused.refused_by == "tokens"
    assert refused.retry_after == pytest.approx(50 * 0.6 + 0.6, abs=0.5)  # the debt drains, then one token
    assert refused.headers()["x-ratelimit-limit-tokens"] == "100"


async def test_a_budget_is_spent_once_and_seeded_from_the_ledger(limits: KeyLimits) -> None:
    key = KeyLimitsConfig("budget", budget_tokens=100)
    await limits.seed_spent({"budget": 40})
    await limits.seed_spent({"budget": 0})  # a total that exists is kept
    assert (await limits.admit(key)).budget_remaining == 60
    limits.charge(key, 59)
    await settle(limits)
    assert (await limits.admit(key)).headers()["x-switchyard-budget-remaining-tokens"] == "1"
    limits.charge(key, 1)
    await settle(limits)
    assert (await limits.admit(key)).refused_by == "budget"


async def test_a_refused_request_takes_nothing_from_the_other_limits(limits: KeyLimits) -> None:
    key = KeyLimitsConfig("both", rpm=2, tpm=10)
    limits.charge(key, 10)
    await settle(limits)
    assert (await limits.admit(key)).refused_by == "tokens"
    assert (await limits.admit(key)).refused_by == "tokens"
    # Had the refusals taken requests, none would be left once tokens refill.
    assert (await limits.admit(KeyLimitsConfig("both", rpm=2))).requests_remaining == 1


def test_in_process_limits_refill_one_unit_per_interval() -> None:
    now = [100.0]
    limits = LocalKeyLimits(clock=lambda: now[0])
    key = KeyLimitsConfig("k", rpm=6, tpm=60)
    assert [limits.admit_now(key).allowed for _ in range(7)] == [True] * 6 + [False]
    now[0] += 10
    assert limits.admit_now(key).requests_remaining == 0
    limits.charge(key, 90)  # 30 tokens of debt: one token a second
    assert limits.admit_now(key).refused_by == "tokens"
    now[0] += 30.5
    assert limits.admit_now(key).refused_by == "tokens"
    now[0] += 1
    allowed = limits.admit_now(key)
    assert allowed.allowed and allowed.tokens_remaining == 1
    now[0] += 120
    assert limits.admit_now(key).tokens_remaining == 60
    assert [format_duration(s) for s in (0.02, 1, 360)] == ["20ms", "1s", "6m0s"]


async def test_an_unreachable_redis_lets_requests_through() -> None:
    from tests.support.services import free_port

    limits = RedisKeyLimits(f"redis://127.0.0.1:{free_port()}/0")
    key = KeyLimitsConfig("k", rpm=1, budget_tokens=1)
    assert (await limits.admit(key)).allowed and (await limits.admit(key)).allowed
    limits.charge(key, 5)
    await settle(limits)
    await limits.aclose()
