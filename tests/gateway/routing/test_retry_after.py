"""Retry-After as upstreams really send it, and the gateway's own, seen from the official SDK.

Whatever an upstream puts in ``Retry-After`` / ``retry-after-ms`` (inf,
NaN, negative, huge, an HTTP date, garbage), the request is retried or
falls back as usual, never a 500, and the client is told at most
``router.retries.retry_after_max``. A breaker-open 503 says when the probe
may go, rounded up, so an SDK that honours it comes back in time.
"""

from __future__ import annotations

import dataclasses
import time

import openai
import pytest

from tests.support.fakes.faulty import Fault, FaultyUpstream

from .conftest import HI, Gateway


def rate_limited(name: str, value: str) -> Fault:
    return dataclasses.replace(Fault.status(429), headers={name: value})


# (header, value, what the client is told (None: no Retry-After), the gateway's wait before its retry)
CASES = [
    ("retry-after", "inf", None, "backoff"),
    ("retry-after", "nan", None, "backoff"),
    ("retry-after", "-3", None, "backoff"),
    ("retry-after", "soon", None, "backoff"),
    ("retry-after-ms", "1e400", None, "backoff"),
    ("retry-after-ms", "200", "1", 0.2),
    ("retry-after", "251606193120", "1", 1.0),  # capped at retry_after_max: 1
    ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", "1", 1.0),
    ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT", "0", 0.0),  # in the past: now
]


@pytest.mark.parametrize(("name", "value", "told", "wait"), CASES, ids=[f"{n}={v}" for n, v, _, _ in CASES])
def test_any_value_is_retried_and_capped(
    gateway: Gateway, a: FaultyUpstream, name: str, value: str, told: str | None, wait: float | str
) -> None:
    a.script(rate_limited(name, value), rate_limited(name, value))
    with (
        gateway(router={"retries": {"attempts": 2}}, fallbacks=None) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(model="alpha", messages=HI)
    assert caught.value.status_code == 429 and caught.value.response.headers["x-switchyard-attempts"] == "2"
    assert caught.value.response.headers.get("retry-after") == told
    waited = a.requests[1].at - a.requests[0].at
    low, high = (0.0, 0.3) if wait == "backoff" else (float(wait), float(wait) + 0.4)
    assert low <= waited < high, waited


def test_an_unusable_value_still_falls_back(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(*[rate_limited("retry-after-ms", "1e400")] * 3)
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.parse().choices[0].message.content == "b"
    assert raw.headers["x-switchyard-fallback-chain"] == "alpha,beta"


def test_a_5xx_retry_after_is_honoured_too(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(dataclasses.replace(Fault.status(503), headers={"retry-after-ms": "300"}), Fault.ok())
    with gateway() as client:
        client.chat.completions.create(model="alpha", messages=HI)
    assert 0.3 <= a.requests[1].at - a.requests[0].at < 0.7


def test_the_breaker_says_when_its_probe_may_go_and_the_sdk_comes_back_then(gateway: Gateway, a: FaultyUpstream) -> None:
    """Rounded up, so the SDK's one retry lands after the cool-down: rounded down (1 s of 1.4) it would hit it again."""
    config = {"router": {"retries": {"attempts": 1}, "cooldown": {"failures": 1, "duration": 1.4}}, "fallbacks": None}
    a.script(Fault.status(500))
    with gateway(**config) as client:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="alpha", messages=HI)
        opened = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="alpha", messages=HI)
        assert caught.value.status_code == 503 and caught.value.code == "no_deployment_available"
        assert caught.value.response.headers["retry-after"] == "2"  # 1.4 s less a few ms, rounded up
        patient = client.with_options(max_retries=1)
        answer = patient.chat.completions.create(model="alpha", messages=HI)  # 503, waits 2 s, then the probe
    assert answer.choices[0].message.content == "a"
    assert time.monotonic() - opened >= 1.4
    assert len(a.requests) == 2  # the failure, then the probe: no call while the breaker was open
