"""Fallback chains by error kind, per-request overrides, and cooldowns, seen from the official SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.support.fakes.faulty import Fault, FaultyUpstream

from .conftest import HI, Gateway


def test_rate_limits_fall_back_after_the_retries_are_spent(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(*[Fault.status(429)] * 3)
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    completion = raw.parse()
    assert completion.choices[0].message.content == "b"
    assert completion.model == "beta-up"  # the model that answered
    assert raw.headers["x-switchyard-attempts"] == "4"
    assert raw.headers["x-switchyard-fallback-chain"] == "alpha,beta"
    assert raw.headers["x-switchyard-provider"] == "b"
    assert [r.body["model"] for r in b.requests] == ["beta-up"]


def test_chains_are_followed_through_and_each_model_gets_its_own_retries(
    gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream
) -> None:
    a.script(*[Fault.status(500)] * 2)
    b.script(*[Fault.status(503)] * 2, Fault.ok())
    config = {"router": {"retries": {"attempts": 2}}, "fallbacks": {"alpha": ["beta"], "beta": ["big"]}}
    with gateway(**config) as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.headers["x-switchyard-fallback-chain"] == "alpha,beta,big"
    assert raw.headers["x-switchyard-attempts"] == "5"
    assert [r.body["model"] for r in b.requests] == ["beta-up", "beta-up", "big-up"]


def test_a_context_window_error_takes_the_context_chain(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(Fault.status(400, code="context_length_exceeded"))
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.headers["x-switchyard-fallback-chain"] == "alpha,big"
    assert raw.headers["x-switchyard-attempts"] == "2"  # a 400 is not retried
    assert [r.body["model"] for r in b.requests] == ["big-up"]


def test_a_content_filter_refusal_takes_the_content_policy_chain(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(Fault.status(400, code="content_filter"))
    with gateway() as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
    assert raw.headers["x-switchyard-fallback-chain"] == "alpha,safe"
    assert [r.body["model"] for r in b.requests] == ["safe-up"]


def test_without_a_context_chain_the_upstream_error_reaches_the_client(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(Fault.status(400, code="context_length_exceeded"))
    with gateway(context_window_fallbacks={"alpha": []}) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="alpha", messages=HI)
    assert caught.value.code == "context_length_exceeded"


def test_the_default_chain_applies_when_a_model_has_none(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    config = {"router": {"retries": {"attempts": 1}}, "fallbacks": {"alpha": None}, "default_fallbacks": ["safe"]}
    with gateway(**config) as client:
        a.script(Fault.status(503))
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
        assert raw.headers["x-switchyard-fallback-chain"] == "alpha,safe"
    config["fallbacks"] = {"alpha": []}  # a model's own chain, even empty, wins over the default
    with gateway(**config) as client, pytest.raises(openai.InternalServerError):
        a.script(Fault.status(503))
        client.chat.completions.create(model="alpha", messages=HI)


def test_a_client_can_replace_or_disable_the_chain(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    with gateway(router={"retries": {"attempts": 1}}) as client:
        a.script(Fault.status(503))
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI, extra_body={"fallbacks": ["safe"]})
        assert raw.headers["x-switchyard-fallback-chain"] == "alpha,safe"
        assert "fallbacks" not in b.requests[-1].body  # the gateway's own fields are not forwarded

        for off in ({"fallbacks": []}, {"disable_fallbacks": True}):
            a.script(Fault.status(503))
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="alpha", messages=HI, extra_body=off)
            assert caught.value.response.headers["x-switchyard-fallback-chain"] == "alpha"

        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="alpha", messages=HI, extra_body={"fallbacks": ["beta", "nope"]})
        assert bad.value.param == "fallbacks[1]"
    assert len(b.requests) == 1


def test_a_failing_deployment_cools_down_then_one_probe_decides(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    config = {
        "router": {"retries": {"attempts": 1}, "cooldown": {"failures": 2, "window": 60, "duration": 0.3}},
        "models": {"alpha": {"deployments": [{"provider": "a", "model": "alpha-up"}, {"provider": "b", "model": "alpha-b"}]}},
    }
    a.script(Fault.status(500), Fault.status(500))
    with gateway(**config) as client:
        for _ in range(50):  # until a has failed twice (each request answered by b): the breaker opens
            client.chat.completions.create(model="alpha", messages=HI, extra_body={"disable_fallbacks": True})
            if len(a.requests) == 2:
                break
        calls_to_a = len(a.requests)
        assert calls_to_a == 2
        for _ in range(3):  # while open, a is skipped: no call reaches it
            raw = client.chat.completions.with_raw_response.create(model="alpha", messages=HI)
            assert raw.headers["x-switchyard-provider"] == "b"
        assert len(a.requests) == calls_to_a
        ready = httpx.get(str(client.base_url).replace("/v1/", "/health/ready")).json()
        states = {d["provider"]: d for d in ready["models"]["alpha"]}
        assert states["a"]["state"] == "open" and states["a"]["cooldown_remaining_s"] > 0
        time.sleep(0.35)
        assert httpx.get(str(client.base_url).replace("/v1/", "/health/ready")).json()["models"]["alpha"][0]["state"] == "half_open"
        for _ in range(50):  # the first request that draws a is the probe; it succeeds and closes the breaker
            client.chat.completions.create(model="alpha", messages=HI)
            if len(a.requests) > calls_to_a:
                break
        assert len(a.requests) == calls_to_a + 1
        states = {d["provider"]: d for d in httpx.get(str(client.base_url).replace("/v1/", "/health/ready")).json()["models"]["alpha"]}
        assert states["a"]["state"] == "closed"


def test_when_every_deployment_cools_down_the_client_gets_503_with_retry_after(gateway: Gateway, a: FaultyUpstream) -> None:
    config = {"router": {"retries": {"attempts": 1}, "cooldown": {"failures": 1, "duration": 30}}, "fallbacks": {"alpha": []}}
    a.script(Fault.status(500))
    with gateway(**config) as client:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="alpha", messages=HI)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="alpha", messages=HI)
    assert caught.value.status_code == 503
    assert caught.value.code == "no_deployment_available"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 30
    assert len(a.requests) == 1


def test_a_prompt_too_big_for_the_configured_window_goes_to_the_context_chain_without_a_call(
    gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream
) -> None:
    config = {"models": {"alpha": {"context_window": 50}}}
    long_prompt = [{"role": "user", "content": "word " * 60}]
    with gateway(**config) as client:
        raw = client.chat.completions.with_raw_response.create(model="alpha", messages=long_prompt)
        assert raw.headers["x-switchyard-fallback-chain"] == "alpha,big"
        assert raw.headers["x-switchyard-attempts"] == "1"
        assert not a.requests and [r.body["model"] for r in b.requests] == ["big-up"]

        client.chat.completions.create(model="alpha", messages=HI, max_tokens=20)  # fits: 8 + 20 tokens
        assert len(a.requests) == 1
        with pytest.raises(openai.BadRequestError) as caught:  # fits nowhere: no context chain for it
            client.chat.completions.create(model="alpha", messages=long_prompt, extra_body={"disable_fallbacks": True})
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "messages"
    assert len(a.requests) == 1
