"""Counting tokens beside the event loop: which counts go there, and what they come to."""

from __future__ import annotations

import threading
import time

import pytest
import tiktoken

from providers import Endpoint
from providers.counting_pool import INLINE_COUNT_WORK, count_off_loop, counting_work
from providers.tokens import count_messages, count_text, tokens_at_most
from providers.usage import count_usage, estimated_usage


def test_sizing_up_a_huge_request_stops_early() -> None:
    messages = [{"role": "user", "content": "x" * 100}] * 1_000_000
    started = time.perf_counter()
    assert counting_work(messages) > INLINE_COUNT_WORK
    assert time.perf_counter() - started < 0.005
    assert counting_work([{"role": "user", "content": "hello"}]) == 1 + 2 + 4 + 5


async def test_a_long_text_is_counted_on_another_thread_and_a_short_one_in_place() -> None:
    here = threading.get_ident()
    assert await count_off_loop(threading.get_ident, INLINE_COUNT_WORK) == here
    assert await count_off_loop(threading.get_ident, INLINE_COUNT_WORK + 1) != here


async def test_counted_beside_the_loop_or_not_the_usage_is_the_same() -> None:
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 20_000, "name": "ann"}]}
    completion = [(0, "an answer "), (0, "in pieces"), (1, "another choice")]
    assert await count_usage(Endpoint.CHAT, payload, completion) == estimated_usage(Endpoint.CHAT, payload, completion)


@pytest.mark.parametrize(
    "text", ["a" * 70_000, "🙂" * 5_000, "1 2 3 " * 5_000, "你好世界" * 2_000, "hello world " * 9_000]
)
def test_the_upper_bound_is_one(text: str) -> None:
    messages = [{"role": "user", "content": text, "name": "ann"}]
    assert tokens_at_most(messages) >= count_messages(messages, "gpt-4o")
    assert tokens_at_most(messages) >= count_messages(messages, "gpt-4")


def test_a_long_text_counted_in_tiktoken_buffer_counts_the_same() -> None:
    text = "hello world, 1234 🙂 " * 5_000  # past the length counted into a buffer
    assert count_text(text) == len(tiktoken.get_encoding("cl100k_base").encode(text, disallowed_special=()))


async def test_past_the_backlog_an_estimate_is_an_upper_bound_not_a_queued_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("providers.usage.backlog_full", lambda: True)
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 2_000}]}
    bound = await count_usage(Endpoint.CHAT, payload, [(0, "an answer")])
    exact = estimated_usage(Endpoint.CHAT, payload, [(0, "an answer")])
    assert (
        bound.estimated
        and bound.prompt_tokens >= exact.prompt_tokens
        and bound.completion_tokens >= exact.completion_tokens
    )
