"""OpenAI's SDK against /v1/responses on a served gateway, in front of the OpenAI-compatible fake upstream.

Every answer is checked against the SDK's own types and OpenAI's published
spec (``Response``, ``ResponseStreamEvent``); the fake shows what went upstream.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from openai.types.responses import Response

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from tests.conftest import GATEWAY_YAML
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.openai_spec.spec import validate
from tests.support.servers import ServedApp

TEAM_KEY = "sk-responses-team-0123456789"
OTHER_KEY = "sk-responses-other-0123456789"
LIMITED_KEY = "sk-responses-limited-0123456789"
ADMIN_KEY = "sk-responses-admin-0123456789"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
SERVER_YAML = """server:
  ledger_flush_interval: 0.05
  data_dir: ${DATA_DIR}
  admin_keys: ["${ADMIN_KEY}"]
  api_keys:
    - {key: "${TEAM_KEY}", name: responses-team, models: ["*"]}
    - {key: "${OTHER_KEY}", name: responses-other, models: ["*"]}
    - {key: "${LIMITED_KEY}", name: responses-limited, models: [gpt-test], rpm: 2}
"""
MODELS_YAML = """
  tool-test:
    deployments: [{provider: fake, model: tool-caller}]
  strict-test:
    unsupported_params: reject
    deployments: [{provider: fake, model: fake-model}]
"""


@pytest.fixture(scope="module")
def responses_gateway(gateway_config: GatewayConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y", "TEAM_KEY": TEAM_KEY,
               "OTHER_KEY": OTHER_KEY, "LIMITED_KEY": LIMITED_KEY, "ADMIN_KEY": ADMIN_KEY,
               "DATA_DIR": str(tmp_path_factory.mktemp("responses-data"))}  # fmt: skip
    config = parse_config(SERVER_YAML + GATEWAY_YAML + MODELS_YAML, environ=environ)
    config = config.model_copy(update={"providers": gateway_config.providers})  # the session's fake upstream
    with ServedApp(create_app(config), server=config.server) as served:
        yield served.url


def client(url: str, key: str = TEAM_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_a_response_parses_into_the_sdks_types_and_the_spec(responses_gateway: str, fake: FakeOpenAI) -> None:
    raw = client(responses_gateway).responses.with_raw_response.create(
        model="gpt-test", instructions="Be brief.", input="hi", max_output_tokens=64, temperature=0.5,
        metadata={"topic": "greeting"},
    )  # fmt: skip
    validate("Response", orjson.loads(raw.content))
    response = raw.parse()
    assert isinstance(response, Response)
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == "You said: hi" and response.model == "gpt-test"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.instructions == "Be brief." and response.metadata == {"topic": "greeting"}
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (7, 3, 10)
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert raw.headers["x-switchyard-provider"] == "fake"
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (sent.body["max_tokens"], sent.body["temperature"]) == (64, 0.5)
    assert "metadata" not in sent.body and "store" not in sent.body  # the gateway's own fields


async def test_the_async_client_gets_the_same_answer(responses_gateway: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{responses_gateway}/v1", api_key=TEAM_KEY, max_retries=0) as api:
        response = await api.responses.create(model="gpt-test", input=[
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
        ])  # fmt: skip
    assert response.output_text == "You said: hello"


def _events(url: str, body: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    """The (event line, data) of each event of a raw stream."""
    with httpx.stream("POST", f"{url}/v1/responses", json=body, headers={"authorization": f"Bearer {TEAM_KEY}"}) as r:
        text = "".join(r.iter_text())
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n", 1)
        events.append((kind.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return events


def test_a_stream_sends_the_typed_events_in_order(responses_gateway: str) -> None:
    events = _events(responses_gateway, {"model": "gpt-test", "input": "hi", "stream": True})
    kinds = [kind for kind, _ in events]
    assert kinds[:5] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
    ]  # fmt: skip
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    for kind, data in events:
        assert data["type"] == kind
        validate("ResponseStreamEvent", data)
    deltas = [data["delta"] for kind, data in events if kind == "response.output_text.delta"]
    assert "".join(deltas) == "You said: hi" and len(deltas) > 1
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed" and completed["usage"]["input_tokens"] == 7  # type: ignore[index]
    assert completed["output"][0]["content"][0]["text"] == "You said: hi"  # type: ignore[index]


def test_the_sdks_stream_helper_assembles_the_final_response(responses_gateway: str, fake: FakeOpenAI) -> None:
    with client(responses_gateway).responses.stream(model="gpt-test", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "You said: hi" and final.status == "completed"
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}


def test_a_function_tool_round_trip(responses_gateway: str, fake: FakeOpenAI) -> None:
    api = client(responses_gateway)
    first = api.responses.create(model="tool-test", input="Paris", tools=[WEATHER], tool_choice="required")  # type: ignore[list-item]
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and orjson.loads(call.arguments) == {"city": "Paris"}
    sent = fake.requests[-1].body
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["parameters"]}}]
    assert sent["tool_choice"] == "required"
    second = api.responses.create(model="tool-test", tools=[WEATHER], input=[  # type: ignore[list-item]
        {"role": "user", "content": "Paris"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ])  # fmt: skip
    assert second.output_text == "You said: sunny"
    assert fake.requests[-1].body["messages"] == [
        {"role": "user", "content": "Paris"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"},
    ]  # fmt: skip


def test_a_streamed_function_call_sends_its_argument_events(responses_gateway: str) -> None:
    body = {"model": "tool-test", "input": "Rome", "tools": [WEATHER], "stream": True}
    events = _events(responses_gateway, body)
    kinds = [kind for kind, _ in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(data for kind, data in events if kind == "response.function_call_arguments.done")
    assert done["name"] == "get_weather" and orjson.loads(done["arguments"]) == {"city": "Rome"}  # type: ignore[arg-type]
    item = next(data["item"] for kind, data in events if kind == "response.output_item.done")
    assert item["type"] == "function_call" and item["status"] == "completed"  # type: ignore[index]
    for _, data in events:
        validate("ResponseStreamEvent", data)


def test_previous_response_id_continues_the_conversation(responses_gateway: str, fake: FakeOpenAI) -> None:
    api = client(responses_gateway)
    first = api.responses.create(model="gpt-test", instructions="Only for the first turn.", input="one")
    second = api.responses.create(model="gpt-test", input="two", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == "You said: two"
    assert fake.requests[-1].body["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "You said: one"},
        {"role": "user", "content": "two"},
    ]  # the instructions are not carried over, as OpenAI's docs say
    with api.responses.stream(model="gpt-test", input="three", previous_response_id=second.id) as stream:
        third = stream.get_final_response()
    fourth = api.responses.create(model="gpt-test", input="four", previous_response_id=third.id)
    assert [m["content"] for m in fake.requests[-1].body["messages"]] == [
        "one", "You said: one", "two", "You said: two", "three", "You said: three", "four",
    ]  # fmt: skip
    assert api.responses.retrieve(fourth.id).output_text == "You said: four"


def test_retrieve_and_delete_a_kept_response(responses_gateway: str) -> None:
    api = client(responses_gateway)
    kept = api.responses.create(model="gpt-test", input="keep me")
    raw = api.responses.with_raw_response.retrieve(kept.id)
    validate("Response", orjson.loads(raw.content))
    assert raw.parse().id == kept.id and raw.parse().output_text == "You said: keep me"
    with pytest.raises(openai.NotFoundError):
        client(responses_gateway, OTHER_KEY).responses.retrieve(kept.id)  # another key's
    assert client(responses_gateway, ADMIN_KEY).responses.retrieve(kept.id).id == kept.id
    api.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(kept.id)
    with pytest.raises(openai.BadRequestError) as continued:
        api.responses.create(model="gpt-test", input="more", previous_response_id=kept.id)
    assert continued.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert continued.value.body["code"] == "previous_response_not_found"  # type: ignore[index]


def test_input_items_list_the_conversation(responses_gateway: str) -> None:
    api = client(responses_gateway)
    first = api.responses.create(model="gpt-test", input="one")
    second = api.responses.create(model="gpt-test", input=[{"role": "user", "content": "two"}], previous_response_id=first.id)
    raw = httpx.get(f"{responses_gateway}/v1/responses/{second.id}/input_items", params={"order": "asc"},
                    headers={"authorization": f"Bearer {TEAM_KEY}"})  # fmt: skip
    validate("ResponseItemList", raw.json())
    listed = api.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in listed.data] == ["message", "message", "message"]
    assert [item.role for item in listed.data] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    assert listed.data[2].content[0].text == "two"  # type: ignore[union-attr]
    page = api.responses.input_items.list(second.id, limit=1)  # newest first
    assert [item.id for item in page.data] == [listed.data[2].id] and page.has_more
    assert [item.id for item in api.responses.input_items.list(second.id, limit=5, after=page.data[0].id).data] == [
        listed.data[1].id, listed.data[0].id,
    ]  # fmt: skip


def test_the_apis_other_urls_say_they_are_not_served(responses_gateway: str) -> None:
    headers = {"authorization": f"Bearer {TEAM_KEY}"}
    for path in ("/v1/responses/input_tokens", "/v1/responses/compact", "/v1/responses/resp_1/cancel"):
        answer = httpx.post(f"{responses_gateway}{path}", json={"model": "gpt-test", "input": "x"}, headers=headers)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "unsupported_endpoint", path
    wrong_method = httpx.put(f"{responses_gateway}/v1/responses/resp_1", headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "DELETE, GET"


def test_store_false_keeps_nothing(responses_gateway: str) -> None:
    api = client(responses_gateway)
    unkept = api.responses.create(model="gpt-test", input="forget me", store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(unkept.id)


def test_a_hosted_tool_is_refused_or_dropped_as_the_model_says(responses_gateway: str) -> None:
    api = client(responses_gateway)
    with pytest.raises(openai.BadRequestError) as refused:
        api.responses.create(model="strict-test", input="news?", tools=[{"type": "web_search"}])
    assert refused.value.body["param"] == "tools[0]"  # type: ignore[index]
    assert refused.value.body["message"].startswith(  # type: ignore[index]
        "`tools[0]` (`web_search`) is a tool OpenAI runs itself, passed on only to a deployment that speaks the "
        "Responses API, and the deployment chosen for this model speaks only chat completions"
    )
    raw = api.responses.with_raw_response.create(model="gpt-test", input="news?", tools=[{"type": "web_search"}])
    assert raw.headers["x-switchyard-dropped-params"] == "tools[0]"
    assert raw.parse().output_text == "You said: news?"


def test_a_conversation_held_at_openai_is_refused_even_with_drop(responses_gateway: str, fake: FakeOpenAI) -> None:
    sent_before = len(fake.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client(responses_gateway).responses.create(model="gpt-test", input="x", conversation="conv_123")
    assert refused.value.body["param"] == "conversation" and len(fake.requests) == sent_before  # type: ignore[index]
    assert "leaving it out would change what the request asks" in refused.value.body["message"]  # type: ignore[index]


def test_text_format_json_schema_becomes_response_format(responses_gateway: str, fake: FakeOpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    client(responses_gateway).responses.create(model="gpt-test", input="x", text={"format": fmt})  # type: ignore[typeddict-item]
    sent = fake.requests[-1].body
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}


def test_a_bad_field_is_a_400_naming_it(responses_gateway: str) -> None:
    api = client(responses_gateway)
    with pytest.raises(openai.BadRequestError) as bad:
        api.responses.create(model="gpt-test", input="x", max_output_tokens="ten")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "max_output_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad_role:
        api.responses.create(model="gpt-test", input=[{"role": "robot", "content": "x"}])  # type: ignore[list-item]
    assert bad_role.value.body["param"] == "input[0].role"  # type: ignore[index]


def test_a_stream_that_breaks_ends_with_response_failed(responses_gateway: str) -> None:
    events = _events(responses_gateway, {"model": "fake/broken-stream", "input": "hi", "stream": True})
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]
    assert "response.completed" not in kinds
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"  # type: ignore[index]
    for _, data in events:
        validate("ResponseStreamEvent", data)


def test_an_upstream_error_keeps_its_status(responses_gateway: str) -> None:
    with pytest.raises(openai.InternalServerError) as broken:
        client(responses_gateway).responses.create(model="fake/status-500", input="hi")
    assert broken.value.status_code == 500


def test_past_its_rpm_a_key_gets_a_rate_limit_error(responses_gateway: str) -> None:
    api = client(responses_gateway, LIMITED_KEY)
    for _ in range(2):
        api.responses.create(model="gpt-test", input="hi")
    with pytest.raises(openai.RateLimitError):
        api.responses.create(model="gpt-test", input="hi")


def test_the_door_shows_in_usage_and_metrics_as_responses(responses_gateway: str) -> None:
    client(responses_gateway).responses.create(model="gpt-test", input="count me")
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        usage = httpx.get(f"{responses_gateway}/v1/usage", params={"api_key": "responses-team", "group_by": "endpoint"},
                          headers=admin).json()  # fmt: skip
        rows = [row for row in usage["data"] if row["endpoint"] == "responses"]
        if rows:
            break
        time.sleep(0.05)
    assert rows and rows[0]["requests"] >= 1 and rows[0]["prompt_tokens"] >= 7  # type: ignore[operator]
    metrics = httpx.get(f"{responses_gateway}/metrics", headers=admin).text
    assert 'switchyard_requests_total{endpoint="responses",model="gpt-test",provider="fake",status="200"}' in metrics


def test_kept_responses_live_in_the_data_dir(responses_gateway: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    kept = client(responses_gateway).responses.create(model="gpt-test", input="where am I kept?")
    (path,) = {p.resolve() for p in Path(tmp_path_factory.getbasetemp()).glob("responses-data*/responses.sqlite3")}
    with sqlite3.connect(path) as db:
        (response,) = db.execute("SELECT response FROM responses WHERE id = ?", (kept.id,)).fetchone()
    assert orjson.loads(response)["output"][0]["content"][0]["text"] == "You said: where am I kept?"


def test_an_answer_whose_copy_cannot_be_kept_still_arrives(
    gateway_config: GatewayConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    server = gateway_config.server.model_copy(update={"data_dir": not_a_directory, "usage_ledger": False})
    config = gateway_config.model_copy(update={"server": server})
    with ServedApp(create_app(config), server=config.server) as served:
        api = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
        assert api.responses.create(model="gpt-test", input="hi").output_text == "You said: hi"
        with api.responses.stream(model="gpt-test", input="hi") as stream:
            assert stream.get_final_response().output_text == "You said: hi"
    assert sum("could not be kept" in record.getMessage() for record in caplog.records) == 2
