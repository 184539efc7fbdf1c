"""A client that leaves makes the gateway close its upstream call within a second."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

HELLO = [{"role": "user", "content": "hello"}]


def _wait_for_disconnect(fake: FakeOpenAI, limit: float) -> float:
    deadline = time.monotonic() + limit
    while not fake.disconnects and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.disconnects, "the upstream never saw the gateway disconnect"
    return fake.disconnects[0]


def test_disconnect_mid_stream_closes_the_upstream(gateway: ServedApp, fake: FakeOpenAI) -> None:
    body = {"model": "fake/endless-stream", "messages": HELLO, "stream": True}
    with httpx.Client(base_url=gateway.url) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break
        left_at = time.monotonic()
    assert _wait_for_disconnect(fake, limit=2.0) - left_at < 1.0


def test_disconnect_while_waiting_for_an_answer_cancels_the_upstream_call(
    gateway: ServedApp, fake: FakeOpenAI
) -> None:
    body = {"model": "fake/slow-1.5", "messages": HELLO}
    with httpx.Client(base_url=gateway.url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=body)
        left_at = time.monotonic()
    assert _wait_for_disconnect(fake, limit=2.0) - left_at < 1.0
