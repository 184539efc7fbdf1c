"""Retries on one deployment, seen from the official SDK: what is retried, how often, and how long it waits."""

from __future__ import annotations

import openai
import pytest

from tests.support.fakes.faulty import Fault, FaultyUpstream

from .conftest import HI, Gateway


def test_a_503_is_retried_on_the_same_deployment(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(Fault.status(503), Fault.status(502), Fault.ok())
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.parse().choices[0].message.content == "a"
    assert raw.headers["x-switchyard-attempts"] == "3"
    assert raw.headers["x-switchyard-fallback-chain"] == "alpha"
    assert len(a.requests) == 3 and not b.requests
    assert all(r.body["model"] == "alpha-up" for r in a.requests)


def test_retry_after_ms_is_honoured(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(Fault.status(429, retry_after_ms=150), Fault.ok())
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.headers["x-switchyard-attempts"] == "2"
    waited = a.requests[1].at - a.requests[0].at
    assert 0.15 <= waited < 0.6, waited


def test_retry_after_is_capped_by_config(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(Fault.status(429, retry_after="30"), Fault.ok())
    with gateway(router={"retries": {"retry_after_max": 0.1}}) as client:
        client.chat.completions.create(model="alpha", messages=HI)
    waited = a.requests[1].at - a.requests[0].at
    assert 0.1 <= waited < 0.6, waited


def test_backoff_waits_grow_and_stay_under_the_cap(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(Fault.status(500), Fault.status(500), Fault.status(500), Fault.ok())
    with gateway(router={"retries": {"attempts": 4, "backoff_initial": 0.05, "backoff_max": 0.1}}) as client:
        client.chat.completions.create(model="alpha", messages=HI)
    waits = [later.at - earlier.at for earlier, later in zip(a.requests, a.requests[1:])]
    assert len(waits) == 3
    assert all(wait < 0.1 + 0.2 for wait in waits), waits  # full jitter: somewhere in [0, cap], plus scheduling


@pytest.mark.parametrize(("status", "error"), [(400, openai.BadRequestError), (404, openai.NotFoundError), (422, openai.UnprocessableEntityError)])
def test_a_client_error_is_not_retried_nor_falls_back(
    gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream, status: int, error: type[Exception]
) -> None:
    a.script(Fault.status(status))
    with gateway() as client, pytest.raises(error) as caught:
        client.chat.completions.create(model="alpha", messages=HI)
    assert caught.value.response.headers["x-switchyard-attempts"] == "1"  # type: ignore[attr-defined]
    assert len(a.requests) == 1 and not b.requests


def test_an_auth_failure_is_not_retried_but_falls_back(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(Fault.status(401))
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.headers["x-switchyard-attempts"] == "2"
    assert raw.headers["x-switchyard-fallback-chain"] == "alpha,beta"
    assert len(a.requests) == 1 and len(b.requests) == 1


def test_when_every_attempt_fails_the_client_gets_the_upstream_status(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(*[Fault.status(503)] * 3)
    with gateway(fallbacks={"alpha": []}) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="alpha", messages=HI)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-switchyard-attempts"] == "3"
    assert len(a.requests) == 3


def test_a_reset_connection_is_retried(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(Fault.reset(), Fault.ok())
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.parse().choices[0].message.content == "a"
    assert raw.headers["x-switchyard-attempts"] == "2"


def test_a_200_whose_body_is_not_json_falls_back(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(Fault.not_json())
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.parse().choices[0].message.content == "b"
    assert raw.headers["x-switchyard-attempts"] == "2"  # not retried: the same deployment answered it that way
    assert len(a.requests) == 1
