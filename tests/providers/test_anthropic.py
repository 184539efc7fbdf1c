"""type: anthropic: the translation both ways as pure functions, then through the gateway with the official openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from providers.anthropic.translate import (
    DEFAULT_MAX_TOKENS,
    ChunkTranslator,
    anthropic_error,
    chat_completion,
    messages_request,
)
from providers.errors import (
    ContextWindowExceeded,
    StreamInterrupted,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
)
from tests.support.fakes.anthropic_upstream import FakeAnthropic, Reply, error_body
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

KEY = "sk-ant-test"
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
PNG = "iVBORw0KGgo="


def request(**payload: Any) -> dict[str, Any]:
    return messages_request({"model": "claude", "messages": HI, **payload})


REQUESTS = [
    ("plain", {}, {"model": "claude", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": DEFAULT_MAX_TOKENS}),
    ("max_tokens kept", {"max_tokens": 10}, {"max_tokens": 10}),
    ("stop as a list", {"stop": "END"}, {"stop_sequences": ["END"]}),
    ("user as metadata", {"user": "u-1"}, {"metadata": {"user_id": "u-1"}}),
    ("sampling forwarded", {"temperature": 0.5, "top_p": 0.9, "top_k": 5}, {"temperature": 0.5, "top_p": 0.9, "top_k": 5}),
    ("stream_options consumed", {"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),
    ("one system prompt", {"messages": [{"role": "system", "content": "Be brief."}, *HI]},
     {"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}),
    ("two system prompts", {"messages": [{"role": "system", "content": "A"}, {"role": "developer", "content": "B"}, *HI]},
     {"system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]}),
    ("images", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "What is it?"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
         {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}]}),
    ("a tool round trip", {"messages": [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "And so?"}]},
     {"messages": [
         {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": [
             {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
             {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}}]},
         {"role": "user", "content": [
             {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
             {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
             {"type": "text", "text": "And so?"}]}]}),
    ("tools", {"tools": [WEATHER]},
     {"tools": [{"name": "weather", "description": "Weather in a city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}),
    ("tool_choice auto", {"tools": [WEATHER], "tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
    ("tool_choice required", {"tools": [WEATHER], "tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
    ("tool_choice none", {"tools": [WEATHER], "tool_choice": "none", "parallel_tool_calls": False}, {"tool_choice": {"type": "none"}}),
    ("tool_choice named", {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "weather"}}},
     {"tool_choice": {"type": "tool", "name": "weather"}}),
    ("no parallel tool calls", {"tools": [WEATHER], "parallel_tool_calls": False},
     {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "expected"), [case[1:] for case in REQUESTS], ids=[case[0] for case in REQUESTS])
def test_requests_are_translated(payload: dict[str, Any], expected: dict[str, Any]) -> None:
    translated = request(**payload)
    assert {key: translated.get(key) for key in expected} == expected
    assert "stream_options" not in translated and "parallel_tool_calls" not in translated


def test_what_has_no_messages_form_is_a_400_naming_it() -> None:
    with pytest.raises(UpstreamRejected) as caught:
        request(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}])
    assert caught.value.status_code == 400 and caught.value.param == "messages" and not caught.value.retryable


ANSWERS = [
    ("text", [{"type": "text", "text": "Hello"}], "end_turn", {"content": "Hello"}, "stop"),
    ("length", [{"type": "text", "text": "Hel"}], "max_tokens", {"content": "Hel"}, "length"),
    ("stop sequence", [{"type": "text", "text": "a"}], "stop_sequence", {"content": "a"}, "stop"),
    ("refusal", [], "refusal", {"content": ""}, "content_filter"),
    ("tool use", [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Paris"}}],
     "tool_use", {"content": "Checking.", "tool_calls": [
         {"id": "toolu_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}, "tool_calls"),
    ("tool use alone", [{"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}}],
     "tool_use", {"content": None}, "tool_calls"),
]  # fmt: skip


@pytest.mark.parametrize(("blocks", "stop_reason", "expected", "finish"), [c[1:] for c in ANSWERS], ids=[c[0] for c in ANSWERS])
def test_answers_are_translated(blocks: list[dict[str, Any]], stop_reason: str, expected: dict[str, Any], finish: str) -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": blocks,
               "stop_reason": stop_reason, "usage": {"input_tokens": 3, "output_tokens": 4}}  # fmt: skip
    completion = chat_completion(message)
    reply = completion["choices"][0]["message"]
    assert {key: reply.get(key) for key in expected} == expected
    assert completion["choices"][0]["finish_reason"] == finish
    assert (completion["id"], completion["model"], completion["object"]) == ("msg_1", "claude-x", "chat.completion")
    openai.types.chat.ChatCompletion.model_validate(completion)  # the SDK's own type takes it


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    usage = {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50, "output_tokens": 7}
    completion = chat_completion({"id": "m", "model": "c", "content": [], "stop_reason": "end_turn", "usage": usage})
    assert completion["usage"] == {"prompt_tokens": 160, "completion_tokens": 7, "total_tokens": 167,
                                   "prompt_tokens_details": {"cached_tokens": 100}}  # fmt: skip


def test_stream_events_become_chunks() -> None:
    translator = ChunkTranslator("claude", usage_chunk_wanted=True)
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": 'ty": "Paris"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 20}},
        {"type": "message_stop"},
    ]  # fmt: skip
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    deltas = [chunk["choices"][0]["delta"] if chunk["choices"] else None for chunk in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]},
        {},
        None,
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29, "prompt_tokens_details": {"cached_tokens": 0}}
    assert {chunk["id"] for chunk in chunks} == {"msg_1"} and translator.finished
    with pytest.raises(StreamInterrupted, match="overloaded_error: Overloaded"):
        ChunkTranslator("claude", False).feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


ERRORS = [
    (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", UpstreamRateLimited, 429, True),
    (529, "overloaded_error", "Overloaded", UpstreamServerError, 503, True),
    (500, "api_error", "Internal server error", UpstreamServerError, 500, True),
    (400, "invalid_request_error", "messages: roles must alternate", UpstreamRejected, 400, False),
    (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", ContextWindowExceeded, 400, False),
    (401, "authentication_error", "invalid x-api-key", UpstreamAuthFailed, 401, False),
    (403, "permission_error", "Your API key does not have permission", UpstreamAuthFailed, 403, False),
]  # fmt: skip


@pytest.mark.parametrize(("status", "kind", "message", "cls", "client_status", "retryable"), ERRORS)
def test_errors_land_in_the_error_tree(status: int, kind: str, message: str, cls: type, client_status: int, retryable: bool) -> None:
    error = anthropic_error(status, orjson.dumps(error_body(kind, message)), {"retry-after": "3"}, provider="claude")
    assert type(error) is cls
    assert (error.status_code, error.error_type, error.message, error.retryable) == (client_status, kind, message, retryable)
    assert error.retry_after == 3 and error.provider == "claude"
    assert error.to_dict()["error"]["message"] == message  # OpenAI's shape for the client
    if cls is ContextWindowExceeded:
        assert error.code == "context_length_exceeded"


GATEWAY_YAML = """
router:
  retries: {attempts: 3, backoff_initial: 0, backoff_max: 0}
  cooldown: {failures: 1000}
providers:
  claude:
    type: anthropic
    base_url: ${ANTHROPIC_URL}
    api_key: ${ANTHROPIC_KEY}
    headers: {anthropic-beta: prompt-caching-2024-07-31}
  versioned:
    type: anthropic
    base_url: ${ANTHROPIC_URL}
    api_key: ${ANTHROPIC_KEY}
    headers: {Anthropic-Version: "2099-01-01"}
  big:
    type: custom
    base_url: ${OPENAI_URL}/v1
models:
  claude:
    deployments: [{provider: claude, model: claude-sonnet-4-5}]
  claude-strict:
    unsupported_params: reject
    deployments: [{provider: claude, model: claude-sonnet-4-5}]
  claude-versioned:
    deployments: [{provider: versioned, model: claude-sonnet-4-5}]
  big:
    deployments: [{provider: big, model: big-model}]
context_window_fallbacks:
  claude: [big]
"""


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeAnthropic, FakeOpenAI, ServedApp]]:
    anthropic, big = FakeAnthropic(key=KEY), FakeOpenAI()
    with ServedApp(anthropic) as upstream, ServedApp(big) as other:
        environ = {"ANTHROPIC_URL": upstream.url, "ANTHROPIC_KEY": KEY, "OPENAI_URL": other.url}
        config = parse_config(GATEWAY_YAML, environ=environ)
        with ServedApp(create_app(config), server=config.server) as gateway:
            yield anthropic, big, gateway


@pytest.fixture()
def fake(served: tuple[FakeAnthropic, FakeOpenAI, ServedApp]) -> FakeAnthropic:
    served[0].script()
    served[1].requests.clear()
    return served[0]


@pytest.fixture()
def client(served: tuple[FakeAnthropic, FakeOpenAI, ServedApp]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[2].url}/v1", api_key="client-key", max_retries=0)


def test_plain_chat_with_a_system_prompt(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=messages, max_completion_tokens=50)
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 5)
    seen = fake.requests[0]
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == KEY and "authorization" not in seen["headers"]
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert seen["body"] == {"model": "claude-sonnet-4-5", "system": "Be brief.", "max_tokens": 50,
                            "messages": [{"role": "user", "content": "Hello there"}]}  # fmt: skip


def test_a_clients_anthropic_beta_header_reaches_anthropic(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="claude-versioned", messages=HI,
                                   extra_headers={"anthropic-beta": "files-api-2025-04-14", "x-other": "kept-here"})  # fmt: skip
    seen = fake.requests[0]["headers"]
    assert seen["anthropic-beta"] == "files-api-2025-04-14"
    assert "x-other" not in seen  # only the headers the preset forwards


def test_the_version_header_is_the_configs_to_override(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="claude-versioned", messages=HI)
    assert fake.requests[0]["headers"]["anthropic-version"] == "2099-01-01"


def test_untranslatable_parameters_are_dropped_and_named_or_rejected(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=HI, seed=1, presence_penalty=0.5, n=1)
    assert raw.headers["x-switchyard-dropped-params"] == "presence_penalty,seed"
    assert "seed" not in fake.requests[0]["body"] and fake.requests[0]["body"]["max_tokens"] == DEFAULT_MAX_TOKENS
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude-strict", messages=HI, logprobs=True)
    assert caught.value.code == "unsupported_parameter" and len(fake.requests) == 1


def test_tools_round_trip(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    fake.script(Reply.tool_use("weather", {"city": "Paris"}, tool_id="toolu_01X"), Reply.text("Sunny in Paris."))
    first = client.chat.completions.create(model="claude", messages=HI, tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_01X", "weather", {"city": "Paris"})
    history = [*HI, first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model="claude", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "Sunny in Paris."
    assert fake.requests[0]["body"]["tool_choice"] == {"type": "any"}
    assert fake.requests[1]["body"]["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01X", "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01X", "content": "sunny"}]},
    ]


def test_streaming_event_by_event(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    fake.script(Reply.tool_use("weather", {"city": "Paris", "days": 3}, text="Let me check the weather."))
    chunks = list(client.chat.completions.create(model="claude", messages=HI, tools=[WEATHER], stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    arguments = "".join(call.function.arguments or "" for chunk in chunks if chunk.choices
                        for call in chunk.choices[0].delta.tool_calls or ())  # fmt: skip
    assert text == "Let me check the weather."
    assert json.loads(arguments) == {"city": "Paris", "days": 3}
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) == 5  # one per word
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 12 and chunks[-1].usage.completion_tokens == 5
    assert fake.requests[0]["body"]["stream"] is True


def test_usage_with_cache_tokens(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    usage = {"input_tokens": 4, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200, "output_tokens": 9}
    fake.script(Reply.text("cached", usage=usage), Reply.text("cached again", usage=usage))
    completion = client.chat.completions.create(model="claude", messages=HI)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1204, 9)
    assert completion.usage.prompt_tokens_details.cached_tokens == 1000
    chunks = list(client.chat.completions.create(model="claude", messages=HI, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == 1204 and chunks[-1].usage.prompt_tokens_details.cached_tokens == 1000


@pytest.mark.parametrize(("reply", "retried"), [
    (Reply.error(429, "rate_limit_error", "slow down", retry_after="0"), True),
    (Reply.error(529, "overloaded_error", "Overloaded"), True),
    (Reply.error(500, "api_error", "Internal server error"), True),
])  # fmt: skip
def test_retryable_errors_are_retried_then_answered(fake: FakeAnthropic, client: openai.OpenAI, reply: Reply, retried: bool) -> None:
    fake.script(reply, Reply.text("second time"))
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=HI)
    assert raw.parse().choices[0].message.content == "second time"
    assert raw.headers["x-switchyard-attempts"] == "2" and len(fake.requests) == 2


@pytest.mark.parametrize(("reply", "sdk_error", "status"), [
    (Reply.error(429, "rate_limit_error", "slow down", retry_after="0"), openai.RateLimitError, 429),
    (Reply.error(529, "overloaded_error", "Overloaded"), openai.InternalServerError, 503),
    (Reply.error(400, "invalid_request_error", "messages: roles must alternate"), openai.BadRequestError, 400),
    (Reply.error(401, "authentication_error", "invalid x-api-key"), openai.AuthenticationError, 401),
    (Reply.error(403, "permission_error", "not allowed"), openai.PermissionDeniedError, 403),
])  # fmt: skip
def test_errors_reach_the_client_in_openais_shape(
    fake: FakeAnthropic, client: openai.OpenAI, reply: Reply, sdk_error: type, status: int
) -> None:
    fake.script(*[reply] * 3)
    with pytest.raises(sdk_error) as caught:
        client.chat.completions.create(model="claude", messages=HI)
    assert caught.value.status_code == status
    assert caught.value.body["message"] == reply.message and caught.value.body["type"] == reply.error_type
    assert len(fake.requests) == (3 if reply.status in (429, 529) else 1)  # retried only when retryable


def test_a_bad_key_is_an_auth_failure(served: tuple[FakeAnthropic, FakeOpenAI, ServedApp], client: openai.OpenAI) -> None:
    anthropic = served[0]
    anthropic.script()
    anthropic.key = "another-key"
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="claude", messages=HI)
    finally:
        anthropic.key = KEY
    assert caught.value.body["message"] == "invalid x-api-key"


def test_a_prompt_too_long_falls_back_to_a_larger_model(
    fake: FakeAnthropic, served: tuple[FakeAnthropic, FakeOpenAI, ServedApp], client: openai.OpenAI
) -> None:
    fake.script(Reply.error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"))
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=HI)
    assert raw.parse().choices[0].message.content == "You said: Hi"
    assert raw.headers["x-switchyard-fallback-chain"] == "claude,big"
    assert len(fake.requests) == 1 and served[1].requests[0].body["model"] == "big-model"


def test_a_stream_error_event_or_a_break_ends_the_stream_with_an_error(fake: FakeAnthropic, client: openai.OpenAI) -> None:
    fake.script(Reply.text("one two three four", stream_error_after=4), Reply.text("one two three four", stream_break_after=4))
    for expected in ("overloaded_error: Overloaded", "broke before it finished"):
        pieces = []
        with pytest.raises(openai.APIError, match=expected):
            for chunk in client.chat.completions.create(model="claude", messages=HI, stream=True):
                pieces.append(chunk.choices[0].delta.content or "")
        assert "".join(pieces) == "one "
