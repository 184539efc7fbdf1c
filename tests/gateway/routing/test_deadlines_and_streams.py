"""One deadline per request, and streams that fail over before their first byte and never end silently after it."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.support.fakes.faulty import Fault, FaultyUpstream

from .conftest import HI, Gateway


def test_a_hanging_upstream_gets_a_504_at_the_deadline(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(Fault.hang())
    with gateway() as client, pytest.raises(openai.APIStatusError) as caught:
        started = time.monotonic()
        client.chat.completions.create(model="alpha", messages=HI, extra_headers={"x-switchyard-timeout": "0.3"})
    elapsed = time.monotonic() - started
    assert caught.value.status_code == 504
    assert caught.value.code == "deadline_exceeded" and caught.value.type == "timeout_error"
    assert caught.value.response.headers["x-switchyard-attempts"] == "1"
    assert 0.3 <= elapsed < 1.5, elapsed
    assert not b.requests  # the deadline covers fallbacks too: none was started


def test_the_deadline_stops_retries_that_would_outlast_it(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(*[Fault.status(429, retry_after_ms=400)] * 5)
    with gateway(router={"timeout": 0.5, "retries": {"attempts": 5}}, fallbacks={"alpha": []}) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            started = time.monotonic()
            client.chat.completions.create(model="alpha", messages=HI)
    # One retry fits in 0.5 s (after a 0.4 s wait); a second 0.4 s wait would not, so it is not taken.
    assert caught.value.response.headers["x-switchyard-attempts"] == "2"
    assert time.monotonic() - started < 1.0


def test_a_bad_timeout_header_is_a_400_naming_it(gateway: Gateway) -> None:
    with gateway() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="alpha", messages=HI, extra_headers={"x-switchyard-timeout": "soon"})
    assert caught.value.param == "x-switchyard-timeout"


def stream_text(client: openai.OpenAI, **extra: object) -> tuple[list[str], httpx.Headers]:
    """The content of each chunk of a streamed chat completion, and the response headers."""
    with client.chat.completions.with_streaming_response.create(model="alpha", messages=HI, stream=True, **extra) as response:
        pieces = [c.choices[0].delta.content or "" for c in response.parse() if c.choices]
        return pieces, response.headers


def test_a_stream_that_fails_before_its_first_event_fails_over_unseen(gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream) -> None:
    a.script(Fault.reset(), Fault.status(503), Fault.cut(after=0))
    with gateway() as client:
        pieces, headers = stream_text(client)
    assert pieces == ["b-0 ", "b-1 ", "b-2 ", ""]
    assert headers["x-switchyard-attempts"] == "4"
    assert headers["x-switchyard-fallback-chain"] == "alpha,beta"


def test_a_slow_first_event_is_retried(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(Fault.ok(delay=1.0), Fault.ok())
    with gateway(router={"stream_first_event_timeout": 0.2}) as client:
        started = time.monotonic()
        pieces, headers = stream_text(client)
    assert pieces == ["a-0 ", "a-1 ", "a-2 ", ""]
    assert headers["x-switchyard-attempts"] == "2"
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("fault", [Fault.cut(after=2), Fault.stall(after=2), Fault.malformed(after=2)], ids=["cut", "stall", "malformed"])
def test_a_stream_broken_after_its_first_event_ends_with_an_error_the_sdk_raises(
    gateway: Gateway, a: FaultyUpstream, b: FaultyUpstream, fault: Fault
) -> None:
    a.script(fault)
    received: list[str] = []
    with gateway(router={"stream_stall_timeout": 0.3}) as client:
        stream = client.chat.completions.create(model="alpha", messages=HI, stream=True)
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert received == ["a-0 ", "a-1 "]  # what arrived before the break, chunk by chunk, and nothing after
    assert "stream" in str(caught.value.message)
    assert len(a.requests) == 1 and not b.requests  # after the first byte there is no failover


def test_a_stream_past_its_deadline_ends_with_a_deadline_error(gateway: Gateway, a: FaultyUpstream) -> None:
    a.script(Fault.stall(after=1))
    with gateway(router={"stream_stall_timeout": 5}) as client:
        stream = client.chat.completions.create(
            model="alpha", messages=HI, stream=True, extra_headers={"x-switchyard-timeout": "0.4"}
        )
        started = time.monotonic()
        with pytest.raises(openai.APIError) as caught:
            for _ in stream:
                pass
    assert "deadline" in str(caught.value.message)
    assert time.monotonic() - started < 1.5


def test_stream_resume_is_refused_until_it_is_built(gateway: Gateway, a: FaultyUpstream) -> None:
    with gateway() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="alpha", messages=HI, stream=True, extra_body={"stream_resume": True})
    assert (caught.value.param, caught.value.code) == ("stream_resume", "unsupported_parameter")
    assert not a.requests
