"""The Messages door's pure translations, as tables: requests in, answers, stream chunks and errors out."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequest, ModelNotFound, RateLimitReached
from gateway.http.doors.anthropic_messages import (
    chat_to_message,
    error_body,
    messages_to_chat,
)
from gateway.http.doors.anthropic_stream import MessageEvents
from gateway.keys.limits import Admission, KeyLimitsConfig
from providers.errors import (
    OpenAIError,
    UpstreamProtocolError,
    UpstreamServerError,
    UpstreamTimeout,
)
from providers.wire import Usage

BASE = {"model": "m", "max_tokens": 10}
HI = [{"role": "user", "content": "hi"}]
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}

# (Messages request fields, the chat payload fields they become); max_tokens and model are always there.
REQUESTS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"messages": HI}, {"messages": HI}),
    ({"system": "s", "messages": HI}, {"messages": [{"role": "system", "content": "s"}, *HI]}),
    ({"system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "b"}],
      "messages": HI}, {"messages": [{"role": "system", "content": "a\n\nb"}, *HI]}),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image", "source": PNG}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "look"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
    ({"messages": [*HI, {"role": "assistant", "content": [
        {"type": "text", "text": "checking"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True},
            {"type": "text", "text": "and?"}]}]},
     {"messages": [*HI, {"role": "assistant", "content": "checking", "tool_calls": [
         {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]},
         {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
         {"role": "user", "content": "and?"}]}),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}]},
     {"messages": [{"role": "tool", "tool_call_id": "t1", "content": "a\n\nb"}]}),
    ({"messages": HI, "stop_sequences": ["X"], "temperature": 0.2, "top_p": 0.9, "top_k": 4,
      "metadata": {"user_id": "u"}},
     {"messages": HI, "stop": ["X"], "temperature": 0.2, "top_p": 0.9, "top_k": 4, "user": "u"}),
    ({"messages": HI, "stream": True}, {"messages": HI, "stream": True, "stream_options": {"include_usage": True}}),
    ({"messages": HI, "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
      "tool_choice": {"type": "auto"}},
     {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                                  "description": "d"}}], "tool_choice": "auto"}),
    ({"messages": HI, "tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "f",
                                                                                   "disable_parallel_tool_use": True}},
     {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False}),
    ({"messages": HI, "tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "none"}},
     {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "none"}),
    ({"messages": HI, "thinking": {"type": "disabled"}, "cache_control": {"type": "ephemeral"}}, {"messages": HI}),
    ({"messages": HI, "fallbacks": ["other"]}, {"messages": HI, "fallbacks": ["other"]}),  # the gateway's own field
]  # fmt: skip


@pytest.mark.parametrize(("fields", "expected"), REQUESTS)
def test_a_request_becomes_a_chat_payload(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    translated = messages_to_chat({**BASE, **fields})
    assert translated.payload == {**BASE, **expected}
    assert translated.dropped == ()
    assert translated.native is not None and translated.native.payload == {**BASE, **fields}  # for an anthropic deployment


# (Messages request fields, what cannot be translated: the param a reject names, the names drop lists)
UNTRANSLATABLE: list[tuple[dict[str, Any], str]] = [
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"service_tier": "auto"}, "service_tier"),
    ({"metadata": {"user_id": "u", "team": "x"}}, "metadata.team"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages[0].content[0].source"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "image", "source": PNG}]}]}]},
     "messages[0].content[0].content[0]"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "param"), UNTRANSLATABLE)
def test_what_cannot_be_translated_is_noted_for_the_router(fields: dict[str, Any], param: str) -> None:
    request = {**BASE, "messages": HI, **fields}
    translated = messages_to_chat(request)
    assert translated.native is not None and [lost.param for lost in translated.native.lost] == [param]
    assert translated.dropped == (param,)
    assert translated.native.payload == request  # whole, for a deployment that speaks Messages


def test_a_dropped_field_is_named_as_a_header_can_carry_it() -> None:
    request = {**BASE, "messages": HI, "\u001f,é": 1, "x" * 100: 2}
    assert messages_to_chat(request).dropped == ("???", "x" * 64 + "...")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages[0].content[0].tool_use_id"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ],
)
def test_a_malformed_request_is_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_to_chat({**BASE, "messages": HI, **fields})
    assert caught.value.param == param


def _answer(message: dict[str, Any], finish: str, **choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}  # fmt: skip


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}}
# (chat answer, request fields, the Messages answer's content, stop_reason, stop_sequence)
ANSWERS: list[tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], str, str | None]] = [
    (_answer({"content": "hello"}, "stop"), {}, [{"type": "text", "text": "hello"}], "end_turn", None),
    (_answer({"content": "cut"}, "length"), {}, [{"type": "text", "text": "cut"}], "max_tokens", None),
    (_answer({"content": None, "tool_calls": [CALL]}, "tool_calls"), {},
     [{"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 2}}], "tool_use", None),
    (_answer({"content": "let me", "tool_calls": [CALL]}, "stop"), {},
     [{"type": "text", "text": "let me"}, {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 2}}],
     "tool_use", None),
    (_answer({"content": "a"}, "stop", stop_reason="END"), {"stop_sequences": ["END"]},
     [{"type": "text", "text": "a"}], "stop_sequence", "END"),  # vLLM says which stop string matched
    (_answer({"content": "a"}, "stop", stop_reason=2), {"stop_sequences": ["END"]},
     [{"type": "text", "text": "a"}], "end_turn", None),  # a stop token id, not one of the sequences
    (_answer({"content": ""}, "content_filter"), {}, [], "refusal", None),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "fields", "content", "stop_reason", "stop_sequence"), ANSWERS)
def test_a_chat_answer_becomes_a_message(
    answer: dict[str, Any], fields: dict[str, Any], content: list[dict[str, Any]], stop_reason: str,
    stop_sequence: str | None,
) -> None:
    message = chat_to_message(answer, {**BASE, "messages": HI, **fields}, None)
    assert message == {
        "id": "msg_abc", "type": "message", "role": "assistant", "model": "m", "content": content,
        "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": {"input_tokens": 9, "output_tokens": 4},
    }  # fmt: skip


def test_usage_counts_cached_tokens_apart_and_falls_back_to_the_gateways_count() -> None:
    answer = _answer({"content": "x"}, "stop")
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 6}
    assert chat_to_message(answer, BASE, None)["usage"] == {
        "input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 6, "cache_creation_input_tokens": 0}
    del answer["usage"]
    assert chat_to_message(answer, BASE, Usage(5, 2, estimated=True))["usage"] == {"input_tokens": 5, "output_tokens": 2}


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]"])
def test_tool_arguments_that_are_not_an_object_are_an_upstream_protocol_error(arguments: str) -> None:
    call = {**CALL, "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(UpstreamProtocolError):
        chat_to_message(_answer({"tool_calls": [call]}, "tool_calls"), BASE, None)


class _Finished:
    """What ``MessageEvents.end`` reads of a finished stream."""

    usage = Usage(7, 1, estimated=True)


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return orjson.dumps({"id": "chatcmpl-s", "choices": choices, **extra})


def _events(stream: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in stream.decode().split("\n\n")[:-1]:
        kind_line, data_line = frame.split("\n")
        kind, data = kind_line.removeprefix("event: "), orjson.loads(data_line.removeprefix("data: "))
        assert data["type"] == kind
        events.append((kind, data))
    return events


def test_a_chat_stream_becomes_messages_events() -> None:
    writer = MessageEvents({**BASE, "messages": HI})
    written = writer.events([_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hel"})])
    written += writer.events([_chunk({"content": "lo"})])
    written += writer.events([_chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]})])
    written += writer.events([_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]}),
                              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]})])
    written += writer.events([_chunk({}, "tool_calls"), _chunk(usage={"prompt_tokens": 11, "completion_tokens": 6})])
    written += asyncio.run(writer.end(_Finished()))  # type: ignore[arg-type]
    assert [(kind, {k: v for k, v in data.items() if k != "type"}) for kind, data in _events(written)] == [
        ("message_start", {"message": {"id": "msg_s", "type": "message", "role": "assistant", "model": "m",
                                       "content": [], "stop_reason": None, "stop_sequence": None,
                                       "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ("ping", {}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "call_1", "name": "f",
                                                                "input": {}}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"x"'}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": ": 1}"}}),
        ("content_block_stop", {"index": 1}),
        ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"input_tokens": 11, "output_tokens": 6}}),
        ("message_stop", {}),
    ]  # fmt: skip


def test_a_stream_without_a_usage_chunk_ends_with_the_gateways_count() -> None:
    writer = MessageEvents({**BASE, "messages": HI})
    written = writer.events([_chunk({"role": "assistant", "content": "ok"}, "stop")])
    written += asyncio.run(writer.end(_Finished()))  # type: ignore[arg-type]
    kinds = [kind for kind, _ in _events(written)]
    assert kinds == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]  # fmt: skip
    assert _events(written)[5][1]["usage"] == {"input_tokens": 7, "output_tokens": 1}


def test_a_broken_stream_ends_with_an_error_event() -> None:
    written = MessageEvents(BASE).error(UpstreamServerError("gone", status_code=502))
    assert written == b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"gone"}}\n\n'


def _rate_limited() -> OpenAIError:
    return RateLimitReached(KeyLimitsConfig("k", rpm=1), Admission("requests", 30.0, rpm=1))


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad", param="x"), 400, "invalid_request_error"),
        (OpenAIError("no key", status_code=401, error_type="invalid_request_error"), 401, "authentication_error"),
        (OpenAIError("no", status_code=403, error_type="permission_error"), 403, "permission_error"),
        (ModelNotFound("m"), 404, "not_found_error"),
        (_rate_limited(), 429, "rate_limit_error"),
        (OpenAIError("bug"), 500, "api_error"),
        (OpenAIError("cooling", status_code=503), 503, "overloaded_error"),
        (UpstreamTimeout("slow"), 504, "timeout_error"),
    ],
)
def test_errors_take_anthropics_shape_with_the_same_status(error: OpenAIError, status: int, kind: str) -> None:
    assert error.status_code == status
    assert orjson.loads(error_body(error)) == {"type": "error", "error": {"type": kind, "message": error.message}}
