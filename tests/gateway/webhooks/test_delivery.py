"""Webhooks end to end: the gateway on uvicorn, the openai SDK, a receiver on 127.0.0.1 that fails its first calls."""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import Iterator

import openai
import pytest

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from tests.conftest import GATEWAY_YAML, PLANTED_KEY
from tests.gateway.webhooks.receiver import HANG, RESET, UNAVAILABLE, Call, Receiver, verify
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

SECRET = "whsec_" + base64.b64encode(b"switchyard-end-to-end-secret-key").decode()
SPENDER, FREE, COUNTED = "sk-webhook-spender-0123456789", "sk-webhook-free-0123456789", "sk-webhook-counted-0123456789"
# In every prompt: it must reach no body but that of an endpoint with include_content.
MARKER = "pineapple-marker-7731"
SERVER_YAML = """server:
  usage_ledger: false
  api_keys:
    - {key: "${SPENDER}", name: spender, budget_usd: 1}
    - {key: "${FREE}", name: free}
    - {key: "${COUNTED}", name: counted, budget_tokens: 1}
  webhooks:
"""
HOOK_YAML = """    - url: ${URL}
      secret: ${SECRET}
      events: [request.completed, request.failed, budget.exceeded, batch.completed]
      backoff_initial: 0.05
      backoff_max: 0.2
      timeout: ${TIMEOUT}
      include_content: ${CONTENT}
"""
MODELS_YAML = """
  dear:
    price: {input_per_mtok: 0, output_per_mtok: 1000000}
    deployments: [{provider: fake, model: fake-model}]
  refusing:
    deployments: [{provider: fake, model: status-400}]
"""


def _config(upstream: ServedApp, hooks: list[tuple[str, float, bool]]) -> GatewayConfig:
    environ = {"FAKE_URL": upstream.url, "FAKE_KEY": PLANTED_KEY, "WRONG_KEY": "x", "SPENDER": SPENDER, "FREE": FREE,
               "COUNTED": COUNTED, "SECRET": SECRET}  # fmt: skip
    hooks_yaml = "".join(
        HOOK_YAML.replace("${URL}", url).replace("${TIMEOUT}", str(timeout)).replace("${CONTENT}", str(content).lower())
        for url, timeout, content in hooks
    )  # fmt: skip
    return parse_config(SERVER_YAML + (hooks_yaml or "    []\n") + GATEWAY_YAML + MODELS_YAML, environ=environ)


@pytest.fixture()
def receivers(fake_upstream: tuple[FakeOpenAI, ServedApp]) -> Iterator[tuple[Receiver, Receiver, str]]:
    """A plain receiver that fails its first calls (503, reset, timeout), one with include_content, the gateway's URL."""
    with Receiver([UNAVAILABLE, RESET, HANG]) as plain, Receiver() as content:
        config = _config(fake_upstream[1], [(plain.url, 0.5, False), (content.url, 2.0, True)])
        with ServedApp(create_app(config), server=config.server) as gateway:
            yield plain, content, f"{gateway.url}/v1"


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{MARKER} {text}"}]


def _by_request(calls: list[Call]) -> dict[str, list[str]]:
    events: dict[str, list[str]] = {}
    for call in calls:
        event = call.event
        events.setdefault(event["data"]["request_id"], []).append(event["type"])
    return events


def _send_the_requests(url: str) -> dict[str, str]:
    """Each kind of request once; the request id of each, by kind."""
    free, spender = _client(url, FREE), _client(url, SPENDER)
    ids: dict[str, str] = {}
    answer = free.chat.completions.with_raw_response.create(model="gpt-test", messages=_ask("plain"))
    ids["completed"] = answer.headers["x-request-id"]
    with free.chat.completions.with_streaming_response.create(
        model="gpt-test", messages=_ask("streamed"), stream=True
    ) as stream:
        ids["streamed"] = stream.headers["x-request-id"]
        list(stream.iter_lines())
    with pytest.raises(openai.BadRequestError) as refused:
        free.chat.completions.create(model="refusing", messages=_ask("refused"))
    ids["failed"] = refused.value.response.headers["x-request-id"]
    with pytest.raises(openai.RateLimitError) as spent:
        spender.chat.completions.create(model="dear", messages=_ask("too dear"), max_tokens=3)
    ids["over budget"] = spent.value.response.headers["x-request-id"]
    return ids


def test_every_event_is_delivered_once_in_order_and_signed(receivers: tuple[Receiver, Receiver, str]) -> None:
    plain, content, url = receivers
    ids = _send_the_requests(url)
    calls = plain.wait_for(5)
    time.sleep(0.3)  # a duplicate would arrive meanwhile
    calls = plain.delivered
    assert [call.answered for call in plain.calls[:3]] == [UNAVAILABLE, RESET, HANG]
    assert len(calls) == 5 and len({call.headers["webhook-id"] for call in calls}) == 5  # exactly once each
    assert _by_request(calls) == {
        ids["completed"]: ["request.completed"],
        ids["streamed"]: ["request.completed"],
        ids["failed"]: ["request.failed"],
        ids["over budget"]: ["budget.exceeded", "request.failed"],  # in the order they happened
    }
    assert all(verify(SECRET, call) for call in plain.calls)
    completed = next(call.event for call in calls if call.event["data"]["request_id"] == ids["completed"])
    data = completed["data"]
    assert data["total_tokens"] == data["prompt_tokens"] + data["completion_tokens"] > 0 and data["latency_ms"] > 0
    assert {name: value for name, value in data.items() if not name.endswith(("_tokens", "latency_ms"))} == {
        "request_id": ids["completed"], "endpoint": "chat/completions", "model": "gpt-test", "provider": "fake",
        "deployment": "fake-model", "status": 200, "key": "free", "stream": False, "estimated": False,
        "cost_usd": None, "cache": None,
    }  # fmt: skip
    refusal = next(call.event for call in calls if call.event["type"] == "budget.exceeded")
    assert (refusal["data"]["key"], refusal["data"]["model"]) == ("spender", "dear")
    assert "$1.00" in refusal["data"]["budget"]
    for call in calls:  # no prompt, no answer: the fake answers "You said: <prompt>"
        assert MARKER.encode() not in call.body and b"You said" not in call.body and b"content" not in call.body


def test_standard_webhooks_library_accepts_the_signatures(receivers: tuple[Receiver, Receiver, str]) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    plain, _, url = receivers
    _client(url, FREE).chat.completions.create(model="gpt-test", messages=_ask("signed"))
    call = plain.wait_for(1)[0]
    standardwebhooks.Webhook(SECRET).verify(call.body, call.headers)  # raises unless valid and fresh
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(call.body.replace(b"gpt-test", b"gpt-evil"), call.headers)


def test_include_content_adds_the_answer_of_a_whole_answer(receivers: tuple[Receiver, Receiver, str]) -> None:
    _, content, url = receivers
    free = _client(url, FREE)
    free.chat.completions.create(model="gpt-test", messages=_ask("whole"))
    list(free.chat.completions.create(model="gpt-test", messages=_ask("streamed"), stream=True))
    # Two requests, two lanes: found by what they are, not by arrival.
    events = {call.event["data"]["stream"]: call.event["data"]["content"] for call in content.wait_for(2)}
    whole, streamed = events[False], events[True]
    assert whole["answer"] == f"You said: {MARKER} whole"
    assert streamed["answer"] is None  # a stream's text is not kept for webhooks (docs/webhooks.md)


def test_include_content_adds_the_prompt(receivers: tuple[Receiver, Receiver, str]) -> None:
    _, content, url = receivers
    _client(url, FREE).chat.completions.create(model="gpt-test", messages=_ask("whole"))
    assert content.wait_for(1)[0].event["data"]["content"]["prompt"] == _ask("whole")


def _latencies(url: str, count: int = 15) -> list[float]:
    client = _client(url, FREE)
    client.chat.completions.create(model="gpt-test", messages=_ask("warm up"))
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-test", messages=_ask("timed"))
        latencies.append(time.perf_counter() - started)
    return latencies


def test_a_receiver_that_never_answers_does_not_slow_requests(fake_upstream: tuple[FakeOpenAI, ServedApp]) -> None:
    with Receiver(answer_for=lambda number: HANG) as silent:
        # Without webhooks, then with one whose every attempt waits 3 s for an answer that never comes.
        timings = []
        for hooks in ([], [(silent.url, 3.0, False)]):
            config = _config(fake_upstream[1], hooks)
            with ServedApp(create_app(config), server=config.server) as gateway:
                timings.append(_latencies(f"{gateway.url}/v1"))
        without, with_silent = timings
        assert len(silent.calls) >= 1  # the events did go out, and hung
    assert max(with_silent) < 1.0  # a webhook on the request path would take 3 s here
    assert statistics.median(with_silent) < 2 * statistics.median(without) + 0.05


def test_a_spent_token_budget_is_told_too(receivers: tuple[Receiver, Receiver, str]) -> None:
    _, content, url = receivers
    counted = _client(url, COUNTED)
    counted.chat.completions.create(model="gpt-test", messages=_ask("spends it"))
    with pytest.raises(openai.RateLimitError):
        counted.chat.completions.create(model="gpt-test", messages=_ask("one too many"))
    refusal = next(call.event["data"] for call in content.wait_for(3) if call.event["type"] == "budget.exceeded")
    assert refusal["key"] == "counted" and refusal["model"] == "gpt-test" and refusal["resets_at"] is None
    assert "token budget of 1 tokens" in refusal["budget"]
