"""A door's request passed through untranslated to a deployment that speaks its API, and falling back across APIs.

Messages to the fake Anthropic upstream and Responses to an ``openai``-preset
provider (pointed at the fake OpenAI upstream) go as the client wrote them,
and their answers and events come back as the upstream wrote them; a
fallback to a deployment that speaks only chat completions is translated,
and what the translation cannot carry is refused or dropped as the model says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.support.fakes.anthropic_upstream import FakeAnthropic, Reply
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

KEY = "sk-ant-native-0123456789"
GATEWAY_YAML = """
server: {ledger_flush_interval: 0.05, data_dir: "${DATA_DIR}", admin_keys: ["sk-native-admin-0123456789"]}
router: {retries: {attempts: 1}, cooldown: {failures: 1000}}
providers:
  claude: {type: anthropic, base_url: "${ANTHROPIC_URL}", api_key: "${ANTHROPIC_KEY}"}
  gpt: {type: openai, base_url: "${OPENAI_URL}/v1", api_key: sk-openai-native-0123456789}
  chat-only: {type: custom, base_url: "${OPENAI_URL}/v1"}
models:
  claude-test:
    deployments: [{provider: claude, model: claude-upstream}]
  claude-then-chat:
    routing: ordered
    unsupported_params: reject
    deployments: [{provider: claude, model: claude-upstream}, {provider: chat-only, model: fake-model}]
  chat-then-claude:
    routing: ordered
    unsupported_params: reject
    deployments: [{provider: chat-only, model: fake-model}, {provider: claude, model: claude-upstream}]
  claude-then-chat-drop:
    routing: ordered
    deployments: [{provider: claude, model: claude-upstream}, {provider: chat-only, model: fake-model}]
  gpt-test:
    deployments: [{provider: gpt, model: gpt-upstream}]
  chat-then-gpt:
    routing: ordered
    deployments: [{provider: chat-only, model: status-503}, {provider: gpt, model: gpt-upstream}]
"""
THINKING = {"type": "enabled", "budget_tokens": 1024}
CACHED_SYSTEM = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
ADMIN = {"authorization": "Bearer sk-native-admin-0123456789"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeAnthropic, FakeOpenAI, str]]:
    claude, gpt = FakeAnthropic(key=KEY), FakeOpenAI()
    with ServedApp(claude) as claude_url, ServedApp(gpt) as gpt_url:
        environ = {"ANTHROPIC_URL": claude_url.url, "ANTHROPIC_KEY": KEY, "OPENAI_URL": gpt_url.url,
                   "DATA_DIR": str(tmp_path_factory.mktemp("native"))}  # fmt: skip
        config = parse_config(GATEWAY_YAML, environ=environ)
        with ServedApp(create_app(config), server=config.server) as gateway:
            yield claude, gpt, gateway.url


@pytest.fixture()
def claude(served: tuple[FakeAnthropic, FakeOpenAI, str]) -> FakeAnthropic:
    served[0].script()
    served[1].requests.clear()
    return served[0]


@pytest.fixture()
def gpt(served: tuple[FakeAnthropic, FakeOpenAI, str]) -> FakeOpenAI:
    served[1].requests.clear()
    return served[1]


@pytest.fixture()
def url(served: tuple[FakeAnthropic, FakeOpenAI, str]) -> str:
    return served[2]


def messages_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="client-key", max_retries=0)


def test_a_messages_request_reaches_anthropic_as_the_client_wrote_it(url: str, claude: FakeAnthropic) -> None:
    raw = messages_client(url).messages.with_raw_response.create(
        model="claude-test", max_tokens=2048, system=CACHED_SYSTEM, thinking=THINKING,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "hi"}], extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    )  # fmt: skip
    sent = claude.requests[-1]
    assert sent["body"] == {"model": "claude-upstream", "max_tokens": 2048, "system": CACHED_SYSTEM, "thinking": THINKING,
                            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    assert sent["headers"]["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    message = raw.parse()
    assert message.id == "msg_fake01" and message.model == "claude-upstream"  # the upstream's answer, untouched
    assert "x-switchyard-dropped-params" not in raw.headers
    assert raw.headers["x-switchyard-provider"] == "claude"


def test_a_native_stream_relays_anthropics_own_events(url: str, claude: FakeAnthropic) -> None:
    claude.script(Reply.tool_use("get_weather", {"city": "Paris"}, text="Let me look."))
    body = {"model": "claude-test", "max_tokens": 64, "stream": True, "thinking": THINKING,
            "messages": [{"role": "user", "content": "weather?"}]}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/messages", json=body) as response:
        text = "".join(response.iter_text())
    kinds = [block.split("\n", 1)[0].removeprefix("event: ") for block in text.strip().split("\n\n")]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-1] == "message_stop"
    assert "input_json_delta" in text and claude.requests[-1]["body"]["thinking"] == THINKING
    with messages_client(url).messages.stream(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        final = stream.get_final_message()
    assert final.id == "msg_fake01" and final.content[0].text == "You said: hi"  # type: ignore[union-attr]


def test_a_messages_fallback_to_chat_refuses_what_it_cannot_carry(url: str, claude: FakeAnthropic, gpt: FakeOpenAI) -> None:
    claude.script(Reply.error(529, "overloaded_error", "Overloaded"))
    api = messages_client(url)
    with pytest.raises(anthropic.BadRequestError) as refused:
        api.messages.create(model="claude-then-chat", max_tokens=64, thinking=THINKING,  # type: ignore[arg-type]
                            messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert "`thinking`" in refused.value.message and not gpt.requests  # refused before the call
    claude.script(Reply.error(529, "overloaded_error", "Overloaded"))
    answered = api.messages.with_raw_response.create(model="claude-then-chat", max_tokens=64,
                                                     messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert answered.parse().content[0].text == "You said: hi"  # type: ignore[union-attr]
    assert answered.headers["x-switchyard-provider"] == "chat-only" and gpt.requests[-1].path == "/v1/chat/completions"


def test_a_deployment_that_cannot_carry_the_request_is_skipped(url: str, claude: FakeAnthropic, gpt: FakeOpenAI) -> None:
    message = messages_client(url).messages.create(model="chat-then-claude", max_tokens=64, thinking=THINKING,  # type: ignore[arg-type]
                                                   messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert message.id == "msg_fake01" and not gpt.requests  # chat-only comes first, but could not take `thinking`
    plain = messages_client(url).messages.create(model="chat-then-claude", max_tokens=64,
                                                 messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert plain.id != "msg_fake01" and gpt.requests[-1].path == "/v1/chat/completions"  # nothing to lose: in order


def test_a_messages_fallback_with_drop_names_what_it_left_out(url: str, claude: FakeAnthropic, gpt: FakeOpenAI) -> None:
    claude.script(Reply.error(529, "overloaded_error", "Overloaded"))
    raw = messages_client(url).messages.with_raw_response.create(
        model="claude-then-chat-drop", max_tokens=64, thinking=THINKING, messages=[{"role": "user", "content": "hi"}],  # type: ignore[arg-type]
    )  # fmt: skip
    assert raw.headers["x-switchyard-dropped-params"] == "thinking"
    assert "thinking" not in gpt.requests[-1].body
    claude.script()  # Anthropic answers: nothing is dropped
    raw = messages_client(url).messages.with_raw_response.create(
        model="claude-then-chat-drop", max_tokens=64, thinking=THINKING, messages=[{"role": "user", "content": "hi"}],  # type: ignore[arg-type]
    )  # fmt: skip
    assert "x-switchyard-dropped-params" not in raw.headers and raw.parse().id == "msg_fake01"


def responses_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="client-key", max_retries=0)


def test_a_responses_request_reaches_openai_as_the_client_wrote_it(url: str, gpt: FakeOpenAI) -> None:
    api = responses_client(url)
    tools = [{"type": "web_search"}]
    raw = api.responses.with_raw_response.create(model="gpt-test", input="hi", tools=tools, reasoning={"effort": "low"})  # type: ignore[list-item]
    sent = gpt.requests[-1]
    assert sent.path == "/v1/responses" and sent.headers["authorization"] == "Bearer sk-openai-native-0123456789"
    assert sent.body == {"model": "gpt-upstream", "input": "hi", "tools": tools, "reasoning": {"effort": "low"}}
    response = raw.parse()
    assert response.id == "resp_fake_upstream" and response.output_text == "You said: hi"
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 4
    continued = api.responses.create(model="gpt-test", input="again", previous_response_id=response.id)
    assert continued.output_text == "You said: again"
    assert gpt.requests[-1].body["input"] == [  # the gateway keeps the conversation: OpenAI is sent all of it
        {"type": "message", "role": "user", "content": "hi"}, *orjson.loads(raw.content)["output"],
        {"type": "message", "role": "user", "content": "again"},
    ]  # fmt: skip
    assert "previous_response_id" not in gpt.requests[-1].body


def test_a_native_responses_stream_relays_openais_own_events(url: str, gpt: FakeOpenAI) -> None:
    with responses_client(url).responses.stream(model="gpt-test", input="stream me") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds == [
        "response.created", "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # the fake's own, as it sent them
    assert final.id == "resp_fake_upstream" and final.output_text == "You said: stream me"
    assert gpt.requests[-1].body["stream"] is True
    assert responses_client(url).responses.retrieve(final.id).output_text == "You said: stream me"  # kept


def test_a_responses_fallback_from_chat_to_openai_passes_through(url: str, gpt: FakeOpenAI) -> None:
    raw = responses_client(url).responses.with_raw_response.create(
        model="chat-then-gpt", input="hi", tools=[{"type": "web_search"}],  # type: ignore[list-item]
    )  # fmt: skip
    assert [request.path for request in gpt.requests] == ["/v1/chat/completions", "/v1/responses"]
    assert "web_search" not in str(gpt.requests[0].body) and gpt.requests[1].body["tools"] == [{"type": "web_search"}]
    assert raw.headers["x-switchyard-provider"] == "gpt" and "x-switchyard-dropped-params" not in raw.headers


def test_native_answers_are_counted_in_the_ledger(url: str, claude: FakeAnthropic, gpt: FakeOpenAI) -> None:
    messages_client(url).messages.create(model="claude-test", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    responses_client(url).responses.create(model="gpt-test", input="x")
    deadline, rows = time.monotonic() + 5, {}
    while time.monotonic() < deadline and len(rows) < 2:
        usage = httpx.get(f"{url}/v1/usage", params={"group_by": "endpoint,model"}, headers=ADMIN).json()
        rows = {(row["endpoint"], row["model"]): row for row in usage["data"] if row["model"] in ("claude-test", "gpt-test")}
        time.sleep(0.05)
    assert rows[("messages", "claude-test")]["prompt_tokens"] >= 12  # the fake's usage, as Anthropic counts it
    assert rows[("responses", "gpt-test")]["prompt_tokens"] >= 9 and rows[("responses", "gpt-test")]["completion_tokens"] >= 4
