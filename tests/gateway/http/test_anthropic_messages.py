"""Anthropic's SDK against /v1/messages on a served gateway, in front of the OpenAI-compatible fake upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from anthropic.types import Message

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from tests.conftest import GATEWAY_YAML
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

TEAM_KEY = "sk-messages-team-0123456789"
LIMITED_KEY = "sk-messages-limited-0123456789"
ADMIN_KEY = "sk-messages-admin-0123456789"
HI = [{"role": "user", "content": "hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
SERVER_YAML = """server:
  ledger_flush_interval: 0.05
  admin_keys: ["${ADMIN_KEY}"]
  api_keys:
    - {key: "${TEAM_KEY}", name: messages-team, models: ["*"]}
    - {key: "${LIMITED_KEY}", name: messages-limited, models: [gpt-test], rpm: 2}
"""
MODELS_YAML = """
  tool-test:
    deployments: [{provider: fake, model: tool-caller}]
  strict-test:
    unsupported_params: reject
    deployments: [{provider: fake, model: fake-model}]
"""


@pytest.fixture(scope="module")
def messages_gateway(gateway_config: GatewayConfig) -> Iterator[str]:
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y",
               "TEAM_KEY": TEAM_KEY, "LIMITED_KEY": LIMITED_KEY, "ADMIN_KEY": ADMIN_KEY}  # fmt: skip
    text = SERVER_YAML + GATEWAY_YAML + MODELS_YAML
    config = parse_config(text, environ=environ)
    config = config.model_copy(update={"providers": gateway_config.providers})  # the session's fake upstream
    with ServedApp(create_app(config), server=config.server) as served:
        yield served.url


def client(url: str, key: str = TEAM_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def test_a_message_parses_into_the_sdks_own_types(messages_gateway: str, fake: FakeOpenAI) -> None:
    raw = client(messages_gateway).messages.with_raw_response.create(
        model="gpt-test", max_tokens=64, system="Be brief.", messages=HI, stop_sequences=["END"],
        metadata={"user_id": "user-7"}, extra_body={"temperature": 0.5, "top_k": 5},  # this SDK's create() has neither
    )  # fmt: skip
    message = raw.parse()
    assert isinstance(message, Message)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "gpt-test"
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == "You said: hi"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)
    assert raw.headers["x-switchyard-provider"] == "fake"
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (sent.body["max_tokens"], sent.body["stop"], sent.body["user"]) == (64, ["END"], "user-7")
    assert (sent.body["temperature"], sent.body["top_k"]) == (0.5, 5)


async def test_the_async_client_gets_the_same_answer(messages_gateway: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=messages_gateway, api_key=TEAM_KEY, max_retries=0) as async_client:
        message = await async_client.messages.create(model="gpt-test", max_tokens=32, messages=HI)
    assert message.content[0].type == "text" and message.content[0].text == "You said: hi"


def test_a_stream_arrives_event_by_event(messages_gateway: str, fake: FakeOpenAI) -> None:
    with client(messages_gateway).messages.stream(model="gpt-test", max_tokens=32, messages=HI) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[1] == "content_block_start" and "content_block_stop" in kinds and "message_delta" in kinds
    deltas = [event.delta.text for event in events if event.type == "content_block_delta"]
    assert "".join(deltas) == "You said: hi" and len(deltas) > 1
    assert isinstance(final, Message) and final.content[0].text == "You said: hi"
    assert final.stop_reason == "end_turn" and (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


def test_a_tool_use_round_trip(messages_gateway: str, fake: FakeOpenAI) -> None:
    api = client(messages_gateway)
    asked = {"role": "user", "content": "Paris"}
    first = api.messages.create(model="tool-test", max_tokens=64, tools=[WEATHER], messages=[asked],
                                tool_choice={"type": "any", "disable_parallel_tool_use": True})  # fmt: skip
    assert first.stop_reason == "tool_use"
    call = first.content[0]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    sent = fake.requests[-1].body
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": WEATHER["description"]}}]
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    result = {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "sunny"}]}
    second = api.messages.create(
        model="tool-test", max_tokens=64, tools=[WEATHER],
        messages=[asked, first.to_param(), {"role": "user", "content": [result]}],
    )  # fmt: skip
    assert second.stop_reason == "end_turn" and second.content[0].text == "You said: sunny"
    assert fake.requests[-1].body["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]  # fmt: skip


def test_a_streamed_tool_call_arrives_as_input_json_deltas(messages_gateway: str) -> None:
    request = {"model": "tool-test", "max_tokens": 64, "tools": [WEATHER], "messages": [{"role": "user", "content": "Oslo"}]}
    with client(messages_gateway).messages.stream(**request) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_message()
    starts = [event.content_block for event in events if event.type == "content_block_start"]
    assert [block.type for block in starts] == ["tool_use"] and starts[0].name == "get_weather"
    partial = [event.delta.partial_json for event in events
               if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]  # fmt: skip
    assert len(partial) == 2 and "".join(partial) == '{"city":"Oslo"}'
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert final.usage.output_tokens == 5


def test_count_tokens_counts_with_the_gateways_estimate(messages_gateway: str) -> None:
    api = client(messages_gateway)
    short = api.messages.count_tokens(model="gpt-test", messages=HI)
    longer = api.messages.count_tokens(model="gpt-test", messages=HI, system="You are a careful assistant.", tools=[WEATHER])
    assert 0 < short.input_tokens < longer.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        api.messages.count_tokens(model="no-such-model", messages=HI)


def test_a_missing_max_tokens_is_a_bad_request_naming_it(messages_gateway: str) -> None:
    response = httpx.post(f"{messages_gateway}/v1/messages", headers={"x-api-key": TEAM_KEY},
                          json={"model": "gpt-test", "messages": HI})  # fmt: skip
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "Missing required parameter: 'max_tokens'."}}  # fmt: skip
    with pytest.raises(anthropic.BadRequestError) as caught:  # create() checks for max_tokens itself: post the body
        client(messages_gateway).post("/v1/messages", body={"model": "gpt-test", "messages": HI}, cast_to=Message)
    assert "max_tokens" in caught.value.message


def test_thinking_is_refused_or_dropped_as_the_model_says(messages_gateway: str) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(messages_gateway).messages.create(model="strict-test", max_tokens=2048, messages=HI, thinking=thinking)
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "`thinking`" in caught.value.message
    raw = client(messages_gateway).messages.with_raw_response.create(
        model="gpt-test", max_tokens=2048, messages=HI, thinking=thinking
    )
    assert raw.headers["x-switchyard-dropped-params"] == "thinking" and raw.parse().content


def test_a_bad_x_api_key_is_an_authentication_error(messages_gateway: str) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=messages_gateway, api_key=None, default_headers={"x-api-key": "sk-wrong"},
                            max_retries=0).messages.create(model="gpt-test", max_tokens=8, messages=HI)  # fmt: skip
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    good = httpx.post(f"{messages_gateway}/v1/messages", headers={"x-api-key": TEAM_KEY},
                      json={"model": "gpt-test", "max_tokens": 8, "messages": HI})  # fmt: skip
    assert good.status_code == 200
    openai_door = httpx.post(f"{messages_gateway}/v1/chat/completions", json={"model": "gpt-test", "messages": HI})
    assert openai_door.status_code == 401 and "code" in openai_door.json()["error"]  # OpenAI's shape stays there


def test_the_edges_refusals_are_in_anthropics_shape_too(messages_gateway: str) -> None:
    not_json = httpx.post(f"{messages_gateway}/v1/messages", content=b"hi", headers={"content-type": "text/plain"})
    assert not_json.status_code == 415
    assert not_json.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": not_json.json()["error"]["message"]}}
    headers = {f"x-filler-{n}": "x" for n in range(200)}
    too_many = httpx.post(f"{messages_gateway}/v1/messages", json={}, headers=headers)
    assert too_many.status_code == 431 and too_many.json()["type"] == "error"
    elsewhere = httpx.post(f"{messages_gateway}/v1/chat/completions", content=b"hi", headers={"content-type": "text/plain"})
    assert elsewhere.status_code == 415 and "code" in elsewhere.json()["error"]  # OpenAI's shape on OpenAI's doors


def test_past_its_rpm_a_key_gets_a_rate_limit_error(messages_gateway: str) -> None:
    limited = client(messages_gateway, LIMITED_KEY)
    for _ in range(2):
        limited.messages.create(model="gpt-test", max_tokens=8, messages=HI)
    with pytest.raises(anthropic.RateLimitError) as caught:
        limited.messages.create(model="gpt-test", max_tokens=8, messages=HI)
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(caught.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.PermissionDeniedError):
        client(messages_gateway, LIMITED_KEY).messages.count_tokens(model="tool-test", messages=HI)


def test_an_upstream_error_is_in_anthropics_shape(messages_gateway: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(messages_gateway).messages.create(model="no-such-model", max_tokens=8, messages=HI)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as broken:
        client(messages_gateway).messages.create(model="fake/status-500", max_tokens=8, messages=HI)
    assert broken.value.status_code == 500 and broken.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_a_stream_that_breaks_ends_with_an_error_event(messages_gateway: str) -> None:
    body = {"model": "fake/broken-stream", "max_tokens": 8, "messages": HI, "stream": True}
    with httpx.stream("POST", f"{messages_gateway}/v1/messages", headers={"x-api-key": TEAM_KEY}, json=body) as response:
        text = "".join(response.iter_text())
    assert text.startswith("event: message_start\n")
    assert "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\"" in text
    assert "message_stop" not in text
    sdk = client(messages_gateway)
    with pytest.raises(anthropic.APIStatusError), sdk.messages.stream(model="fake/broken-stream", max_tokens=8, messages=HI) as stream:
        list(stream)


def test_the_door_shows_in_usage_and_metrics_as_messages(messages_gateway: str) -> None:
    client(messages_gateway).messages.create(model="gpt-test", max_tokens=8, messages=HI)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        usage = httpx.get(f"{messages_gateway}/v1/usage", params={"api_key": "messages-team", "group_by": "endpoint"},
                          headers=admin).json()  # fmt: skip
        rows = [row for row in usage["data"] if row["endpoint"] == "messages"]
        if rows:
            break
        time.sleep(0.05)
    assert rows and rows[0]["requests"] >= 1 and rows[0]["prompt_tokens"] >= 7
    metrics = httpx.get(f"{messages_gateway}/metrics", headers=admin).text
    assert 'switchyard_requests_total{endpoint="messages",model="gpt-test",provider="fake",status="200"}' in metrics
