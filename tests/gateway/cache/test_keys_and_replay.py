"""The cache's pure parts: what a key is made of, and a stream folded and replayed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.cache.keys import cache_keys, deterministic
from gateway.cache.replay import ChunkFolder, replay_chunks
from tests.support.openai_spec.spec import validate

BASE = {"model": "m", "temperature": 0, "messages": [{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": "hi"}]}  # fmt: skip


@pytest.mark.parametrize("field", ["user", "metadata", "stream", "stream_options", "cache", "fallbacks", "service_tier"])
def test_a_field_that_cannot_change_the_answer_is_not_in_the_key(field: str) -> None:
    assert cache_keys("t", "m", {**BASE, field: {"x": 1}}).exact == cache_keys("t", "m", BASE).exact


@pytest.mark.parametrize("change", [{"seed": 3}, {"max_tokens": 9}, {"top_k": 5}, {"tools": []}, {"n": 2}])
def test_every_other_field_is(change: dict[str, Any]) -> None:
    assert cache_keys("t", "m", {**BASE, **change}).exact != cache_keys("t", "m", BASE).exact


def test_the_owner_and_the_model_are_in_the_key() -> None:
    keys = {cache_keys(owner, model, BASE).exact for owner in ("team:a", "team:b") for model in ("m", "n")}
    assert len(keys) == 4


def test_the_semantic_scope_leaves_out_the_last_user_message_only() -> None:
    other = {**BASE, "messages": [BASE["messages"][0], {"role": "user", "content": "hello there"}]}
    assert cache_keys("t", "m", other).scope == cache_keys("t", "m", BASE).scope
    assert cache_keys("t", "m", other).exact != cache_keys("t", "m", BASE).exact
    other_system = {**BASE, "messages": [{"role": "system", "content": "be long"}, BASE["messages"][1]]}
    assert cache_keys("t", "m", other_system).scope != cache_keys("t", "m", BASE).scope
    assert cache_keys("t", "m", BASE).text == "hi"
    tool_turn = {**BASE, "messages": [*BASE["messages"], {"role": "tool", "tool_call_id": "c", "content": "x"}]}
    assert cache_keys("t", "m", tool_turn).scope is None  # the last message is not the user's: exact only


def test_only_deterministic_requests_count_as_such() -> None:
    assert deterministic({"temperature": 0}) and deterministic({"seed": 1, "temperature": 1})
    assert not deterministic({}) and not deterministic({"temperature": 0.2})


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m", "choices": choices, **extra})


STREAM = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"content": "Let me "}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"content": "check."}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                 "function": {"name": "get_weather", "arguments": ""}}]},
            "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    chunk([], usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
]


def test_a_stream_folds_into_the_completion_it_adds_up_to() -> None:
    folder = ChunkFolder()
    folder.read(STREAM[:3])
    folder.read(STREAM[3:])
    answer = folder.completion()
    assert answer is not None
    validate("CreateChatCompletionResponse", answer)
    message = answer["choices"][0]["message"]
    assert message["content"] == "Let me check." and answer["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]  # fmt: skip
    assert answer["usage"]["total_tokens"] == 7 and answer["id"] == "c1"


def test_a_replayed_answer_folds_back_into_itself() -> None:
    folder = ChunkFolder()
    folder.read(STREAM)
    answer = folder.completion()
    assert answer is not None
    chunks = replay_chunks(answer)
    for data in chunks:
        validate("CreateChatCompletionStreamResponse", orjson.loads(data))
    again = ChunkFolder()
    again.read(chunks)
    assert again.completion() == {name: value for name, value in answer.items() if name != "usage"}  # usage: its own chunk


def test_a_chunk_that_is_not_a_chat_chunk_is_never_kept() -> None:
    folder = ChunkFolder()
    folder.read([STREAM[0], b"not json"])
    assert folder.completion() is None
    assert ChunkFolder().completion() is None
