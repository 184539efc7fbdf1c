"""The in-process client with `provider: anthropic`: the SDK over the gateway's Anthropic adapter, against the fake on a socket."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from providers import (
    AsyncOpenAICompatibleAPI,
    MissingAPIKey,
    NotOffered,
    OpenAICompatibleAPI,
)
from providers.errors import UnsupportedParameter
from tests.support.fakes.anthropic_upstream import FakeAnthropic, Reply
from tests.support.fakes.asgi import read_request, serve_lifespan
from tests.support.servers import ServedApp

KEY = "sk-ant-client-test-0123456789abcdef"
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
CACHED_USAGE = {"input_tokens": 4, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200, "output_tokens": 9}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic(key=KEY)
    with ServedApp(fake) as upstream:
        yield fake, upstream.url


@pytest.fixture()
def fake(served: tuple[FakeAnthropic, str]) -> FakeAnthropic:
    served[0].script()
    return served[0]


@pytest.fixture()
def config(served: tuple[FakeAnthropic, str]) -> dict[str, Any]:
    return {"provider": "anthropic", "api_key": KEY, "base_url": served[1], "default_model": "claude-test", "max_retries": 0}


@pytest.fixture()
def api(config: dict[str, Any]) -> Iterator[OpenAICompatibleAPI]:
    with OpenAICompatibleAPI(config) as client:
        yield client


def test_a_plain_answer_is_the_sdks_chat_completion(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    completion = api.chat_completion(messages, max_completion_tokens=50)
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "You said: Hello there"
    assert completion.choices[0].finish_reason == "stop" and completion.model == "claude-test"
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 5)
    assert api.chat(HI) == "You said: Hi"
    seen = fake.requests[0]
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == KEY and "authorization" not in seen["headers"]
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["body"] == {"model": "claude-test", "system": "Be brief.", "max_tokens": 50,
                            "messages": [{"role": "user", "content": "Hello there"}]}  # fmt: skip


def test_cache_reads_are_cached_tokens(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    fake.script(Reply.text("cached", usage=CACHED_USAGE))
    usage = api.chat_completion(HI).usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1204, 9, 1213)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 1000


def test_the_key_may_come_from_the_environment(fake: FakeAnthropic, config: dict[str, Any]) -> None:
    with pytest.raises(MissingAPIKey, match="ANTHROPIC_API_KEY"):
        OpenAICompatibleAPI({**config, "api_key": None}, environ={})
    with OpenAICompatibleAPI({**config, "api_key": None}, environ={"ANTHROPIC_API_KEY": KEY}) as api:
        assert api.chat(HI) == "You said: Hi"
    assert fake.requests[0]["headers"]["x-api-key"] == KEY


def test_a_stream_arrives_event_by_event(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    fake.script(Reply.text("Hello big world", usage=CACHED_USAGE), Reply.text("Hello big world"))
    chunks = list(api.chat_completion(HI, stream=True, stream_options={"include_usage": True}))
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert [(c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks[:-1]] == [
        ("", None), ("Hello ", None), ("big ", None), ("world", None), (None, "stop"),
    ]  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {(chunk.id, chunk.model) for chunk in chunks} == {("msg_fake01", "claude-test")}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (1204, 9)
    assert last.usage.prompt_tokens_details is not None and last.usage.prompt_tokens_details.cached_tokens == 1000
    assert fake.requests[0]["body"]["stream"] is True and "stream_options" not in fake.requests[0]["body"]
    unasked = list(api.chat_completion(HI, stream=True))
    assert all(chunk.usage is None for chunk in unasked) and unasked[-1].choices[0].finish_reason == "stop"


def test_chat_streams_the_texts_pieces(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    fake.script(Reply.text("one two three"))
    assert list(api.chat(HI, stream=True)) == ["one ", "two ", "three"]


def test_a_tool_call_round_trip(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    fake.script(Reply.tool_use("weather", {"city": "Paris"}, tool_id="toolu_01X"), Reply.text("Sunny in Paris."))
    first = api.chat_completion(HI, tools=[WEATHER], tool_choice="required")
    assert first.choices[0].finish_reason == "tool_calls"
    calls = first.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("toolu_01X", "weather", {"city": "Paris"})
    history = [*HI, first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    assert api.chat(history, tools=[WEATHER]) == "Sunny in Paris."
    assert fake.requests[0]["body"]["tool_choice"] == {"type": "any"}
    assert fake.requests[0]["body"]["tools"] == [{"name": "weather", "description": "Weather in a city",
                                                  "input_schema": WEATHER["function"]["parameters"]}]  # fmt: skip
    assert fake.requests[1]["body"]["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01X", "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01X", "content": "sunny"}]},
    ]


def test_a_streamed_tool_call(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    fake.script(Reply.tool_use("weather", {"city": "Paris", "days": 3}, text="Checking."))
    chunks = list(api.chat_completion(HI, stream=True, tools=[WEATHER]))
    calls = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or ()]
    assert calls[0].id == "toolu_01A" and calls[0].function is not None and calls[0].function.name == "weather"
    assert json.loads("".join(call.function.arguments or "" for call in calls if call.function)) == {"city": "Paris", "days": 3}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_429_is_the_sdks_rate_limit_error_with_retry_after(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    fake.script(Reply.error(429, "rate_limit_error", "slow down", retry_after="7"))
    with pytest.raises(openai.RateLimitError) as caught:
        api.chat(HI)
    error = caught.value
    assert error.status_code == 429 and error.response.headers["retry-after"] == "7"
    assert error.body == {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}
    assert error.response.headers["x-should-retry"] == "true" and len(fake.requests) == 1


def test_a_529_is_the_sdks_server_error_as_a_503(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    fake.script(Reply.error(529, "overloaded_error", "Overloaded"))
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat(HI)
    assert caught.value.status_code == 503 and caught.value.body["type"] == "overloaded_error"


@pytest.mark.parametrize(("reply", "sdk_error", "status", "attempts"), [
    (Reply.error(429, "rate_limit_error", "slow down", retry_after="0.01"), openai.RateLimitError, 429, 2),
    (Reply.error(529, "overloaded_error", "Overloaded", retry_after="0.01"), openai.InternalServerError, 503, 2),
    (Reply.error(400, "invalid_request_error", "messages: roles must alternate"), openai.BadRequestError, 400, 1),
    (Reply.error(403, "permission_error", "not allowed"), openai.PermissionDeniedError, 403, 1),
])  # fmt: skip
def test_the_sdk_retries_what_the_error_tree_calls_retryable(
    fake: FakeAnthropic, config: dict[str, Any], reply: Reply, sdk_error: type[openai.APIStatusError], status: int, attempts: int
) -> None:
    fake.script(reply, reply)
    with OpenAICompatibleAPI({**config, "max_retries": 1}) as api, pytest.raises(sdk_error) as caught:
        api.chat(HI)
    assert caught.value.status_code == status and len(fake.requests) == attempts
    fake.script(reply, Reply.text("second time"))
    with OpenAICompatibleAPI({**config, "max_retries": 1}) as api:
        if attempts == 2:
            assert api.chat(HI) == "second time"
        else:
            with pytest.raises(sdk_error):
                api.chat(HI)


def test_a_broken_stream_raises_as_through_the_gateway(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    fake.script(Reply.text("one two three four", stream_error_after=4), Reply.text("one two three four", stream_break_after=4))
    pieces: list[str] = []
    with pytest.raises(openai.APIError, match="overloaded_error: Overloaded"):
        pieces.extend(api.chat(HI, stream=True))
    assert pieces == ["one "]
    pieces.clear()
    with pytest.raises(openai.APIError, match="broke before it finished"):
        pieces.extend(api.chat(HI, stream=True))
    # A connection reset may overtake the events sent before it: aiohttp raises a stream's
    # error before handing over what it still buffers. What arrived is a prefix of the answer.
    assert pieces in ([], ["one "])


async def stalling_anthropic(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Starts a Messages stream, then sends nothing until the client leaves."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    await read_request(scope, receive)
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 1, "output_tokens": 1}}}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": f"event: message_start\ndata: {json.dumps(start)}\n\n".encode(), "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


def test_a_stalled_stream_times_out_as_the_sdk_would(config: dict[str, Any]) -> None:
    with ServedApp(stalling_anthropic) as stalling, OpenAICompatibleAPI({**config, "base_url": stalling.url, "timeout": 0.3}) as api:
        chunks = api.chat_completion(HI, stream=True)
        assert next(iter(chunks)).choices[0].delta.role == "assistant"
        with pytest.raises(openai.APITimeoutError):
            list(chunks)


def test_an_unreachable_upstream_is_a_connection_error(config: dict[str, Any]) -> None:
    with OpenAICompatibleAPI({**config, "base_url": "http://127.0.0.1:9"}) as api, pytest.raises(openai.APIConnectionError) as caught:
        api.chat(HI)
    assert "is unreachable" in str(caught.value.__cause__)


def test_fallback_configs_apply(fake: FakeAnthropic, config: dict[str, Any]) -> None:
    refused = {**config, "api_key": "sk-ant-wrong-0123456789"}
    with OpenAICompatibleAPI({**refused, "fallback": [{**config, "default_model": "claude-other"}]}) as api:
        assert api.chat(HI) == "You said: Hi"
    assert [request["body"]["model"] for request in fake.requests] == ["claude-test", "claude-other"]


def test_what_the_preset_does_not_offer_is_not_offered(fake: FakeAnthropic, api: OpenAICompatibleAPI) -> None:
    with pytest.raises(NotOffered, match="'anthropic' does not offer /v1/embeddings"):
        api.create_embedding("hi", model="embed")
    with pytest.raises(NotOffered, match="'anthropic' does not offer /v1/completions"):
        api.complete("hi")
    with pytest.raises(NotOffered, match="'anthropic' does not offer /v1/moderations"):
        api.moderate("hi")
    with pytest.raises(NotOffered, match="'anthropic' does not offer /v1/models"):
        api.list_models()
    with pytest.raises(NotOffered, match="'anthropic' does not offer /v1/models"):
        api.validate_credentials()
    assert fake.requests == []


def test_the_parameter_map_applies(fake: FakeAnthropic, api: OpenAICompatibleAPI, config: dict[str, Any]) -> None:
    assert api.chat(HI, seed=1, presence_penalty=0.5, n=1, top_k=5) == "You said: Hi"
    body = fake.requests[0]["body"]
    assert "seed" not in body and "presence_penalty" not in body and "n" not in body and body["top_k"] == 5
    with OpenAICompatibleAPI({**config, "unsupported_params": "reject"}) as strict, pytest.raises(UnsupportedParameter, match="`logprobs`"):
        strict.chat(HI, logprobs=True)
    assert len(fake.requests) == 1


def test_the_configs_headers_reach_anthropic(fake: FakeAnthropic, config: dict[str, Any]) -> None:
    headers = {"anthropic-beta": "files-api-2025-04-14", "Anthropic-Version": "2099-01-01"}
    with OpenAICompatibleAPI({**config, "headers": headers}) as api:
        api.chat(HI)
    seen = fake.requests[0]["headers"]
    assert seen["anthropic-beta"] == "files-api-2025-04-14" and seen["anthropic-version"] == "2099-01-01"


def test_the_key_is_in_no_error_and_no_log(fake: FakeAnthropic, config: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    fake.script(Reply.error(400, "invalid_request_error", f"bad request from key {KEY}"))
    with OpenAICompatibleAPI(config) as api:
        with pytest.raises(openai.BadRequestError) as rejected:
            api.chat(HI)
        errors.append(rejected.value)
        assert rejected.value.body["message"] == "bad request from key [redacted]"
    fake.key = "another-key-0123456789"  # the fake refuses ours: 401
    try:
        with OpenAICompatibleAPI(config) as api, pytest.raises(openai.AuthenticationError) as refused:
            api.chat(HI)
    finally:
        fake.key = KEY
    errors.append(refused.value)
    with OpenAICompatibleAPI({**config, "base_url": "http://127.0.0.1:9"}) as api, pytest.raises(openai.APIConnectionError) as unreachable:
        api.chat(HI)
    errors.append(unreachable.value)
    for error in errors:
        texts = [str(error), repr(error), str(error.__cause__), json.dumps(getattr(error, "body", None))]
        if isinstance(error, openai.APIStatusError):
            texts += [error.response.text, str(error.response.headers), str(error.request.headers)]
        assert not [text for text in texts if KEY in text]
    assert KEY not in caplog.text


async def test_the_async_twin_does_the_same(fake: FakeAnthropic, config: dict[str, Any]) -> None:
    fake.script(Reply.text("cached", usage=CACHED_USAGE), Reply.text("a b c"), Reply.error(429, "rate_limit_error", "slow", retry_after="3"))
    async with AsyncOpenAICompatibleAPI(config) as api:
        completion = await api.chat_completion(HI)
        assert isinstance(completion, ChatCompletion) and completion.choices[0].message.content == "cached"
        assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
        assert completion.usage.prompt_tokens_details.cached_tokens == 1000
        pieces = [piece async for piece in await api.chat(HI, stream=True)]
        assert pieces == ["a ", "b ", "c"]
        with pytest.raises(openai.RateLimitError) as caught:
            await api.chat(HI)
        assert caught.value.response.headers["retry-after"] == "3"
        chunks = [chunk async for chunk in await api.chat_completion(HI, stream=True, stream_options={"include_usage": True})]
        assert chunks[-1].usage is not None and chunks[-2].choices[0].finish_reason == "stop"
        with pytest.raises(NotOffered, match="/v1/embeddings"):
            await api.create_embedding("hi", model="e")
        with pytest.raises(NotOffered, match="/v1/models"):
            await api.list_models()
