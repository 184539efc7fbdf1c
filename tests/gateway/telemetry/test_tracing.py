"""OpenTelemetry traces, end to end: the gateway on a real port exporting OTLP/HTTP to a receiver on 127.0.0.1.

The receiver decodes what the official exporter sent with opentelemetry-proto's
types (tests/support/otlp.py); the upstreams are fault-injecting fakes that
record the headers they were sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.app import create_app
from gateway.config import ServerConfig, parse_config
from gateway.telemetry.tracing import traces_url, tracing_config
from providers.redact import MASK
from tests.support.fakes.faulty import Fault, FaultyUpstream
from tests.support.otlp import OTLPReceiver, ReceivedSpan
from tests.support.fakes.media_upstream import FakeMediaUpstream
from tests.support.servers import ServedApp

PROVIDER_KEY = "sk-upstream-secret-0123456789abcdef"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def config_yaml(receiver: OTLPReceiver, **otel: Any) -> str:
    config = {
        "server": {"usage_ledger": False, "otel": {"endpoint": receiver.url, "service_name": "gw-test", **otel}},
        "router": {
            "retries": {"attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.02},
            "cooldown": {"failures": 100, "window": 60, "duration": 1},
        },
        "providers": {
            "a": {"type": "custom", "base_url": "${A_URL}", "api_key": PROVIDER_KEY},
            "b": {"type": "groq", "base_url": "${B_URL}", "api_key": "gsk-other-key-0123456789abcdef"},
        },
        "models": {
            "alpha": {"deployments": [{"provider": "a", "model": "alpha-up"}]},
            "beta": {"deployments": [{"provider": "b", "model": "beta-up"}]},
        },
        "fallbacks": {"alpha": ["beta"]},
    }
    return yaml.safe_dump(config)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FaultyUpstream, FaultyUpstream]]:
    with FaultyUpstream("a") as a, FaultyUpstream("b") as b:
        yield a, b


@contextmanager
def traced_gateway(upstreams: tuple[FaultyUpstream, FaultyUpstream], **otel: Any) -> Iterator[tuple[str, OTLPReceiver]]:
    """The gateway's URL and the receiver its spans go to; every span is exported once the gateway stopped."""
    a, b = upstreams
    a.reset_log()
    b.reset_log()
    with OTLPReceiver() as receiver:
        config = parse_config(config_yaml(receiver, **otel), environ={"A_URL": a.url, "B_URL": b.url})
        with ServedApp(create_app(config)) as served:
            yield served.url, receiver


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)


def by_kind(spans: list[ReceivedSpan], kind: str) -> list[ReceivedSpan]:
    return sorted((span for span in spans if span.kind == kind), key=lambda span: span.start_ns)


def test_a_request_that_retried_and_fell_back_is_one_trace_under_the_clients(upstreams) -> None:
    a, b = upstreams
    a_fault = Fault("status", http_status=503, body={"error": {"message": f"overloaded, key {PROVIDER_KEY}"}})
    with traced_gateway(upstreams) as (url, receiver):
        a.script(a_fault, a_fault)
        answer = client(url).chat.completions.with_raw_response.create(
            model="alpha", messages=[{"role": "user", "content": "hello"}], max_tokens=7, temperature=0.5,
            extra_headers={"traceparent": TRACEPARENT},
        )  # fmt: skip
        assert answer.headers["x-switchyard-fallback-chain"] == "alpha,beta"
    spans = receiver.wait_for(lambda spans: len(spans) >= 4)
    assert len(spans) == 4
    assert {span.trace_id for span in spans} == {CLIENT_TRACE}

    [request] = by_kind(spans, "SERVER")
    assert request.name == "chat alpha"
    assert request.parent_span_id == CLIENT_SPAN
    assert request.resource["service.name"] == "gw-test"
    attributes = request.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "alpha"
    assert attributes["gen_ai.response.model"] == "beta-up"
    assert attributes["gen_ai.provider.name"] == "groq"
    assert attributes["gen_ai.request.max_tokens"] == 7
    assert attributes["gen_ai.request.temperature"] == 0.5
    usage = answer.parse().usage
    assert usage is not None
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert attributes["http.response.status_code"] == 200
    assert attributes["switchyard.attempts"] == 3
    assert attributes["switchyard.fallback_chain"] == ["alpha", "beta"]
    assert attributes["switchyard.request_id"] == answer.headers["x-request-id"]
    assert request.status == "UNSET"
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes

    first, retry, fallback = by_kind(spans, "CLIENT")
    for attempt in (first, retry, fallback):
        assert attempt.parent_span_id == request.span_id
        assert request.start_ns <= attempt.start_ns <= attempt.end_ns <= request.end_ns
    assert (first.name, retry.name, fallback.name) == ("chat alpha-up", "chat alpha-up", "chat beta-up")
    assert first.attributes["gen_ai.provider.name"] == "custom"  # a preset no convention names goes by its own name
    assert first.attributes["server.address"] == "127.0.0.1"
    assert "switchyard.after" not in first.attributes
    assert first.status == "ERROR" and first.attributes["error.type"] == "UpstreamServerError"
    assert first.attributes["http.response.status_code"] == 503
    assert retry.attributes["switchyard.after"] == "retry"
    assert fallback.attributes["switchyard.after"] == "fallback"
    assert fallback.attributes["switchyard.model"] == "beta"
    assert fallback.status == "UNSET"
    for failed, after in ((first, retry), (retry, fallback)):
        reason = after.attributes["switchyard.after.reason"]
        assert reason.startswith("503 ") and MASK in reason, reason  # the key in the upstream's message, masked
        assert PROVIDER_KEY not in reason and PROVIDER_KEY not in failed.status_message
    # Each upstream call carried its own span as the parent of whatever the upstream traces.
    sent = [received.headers.get("traceparent") for received in [*a.requests, *b.requests]]
    assert sent == [f"00-{CLIENT_TRACE}-{span.span_id}-01" for span in (first, retry, fallback)]


def test_a_stream_is_traced_to_its_end_with_its_content_when_asked(upstreams) -> None:
    with traced_gateway(upstreams, record_content=True) as (url, receiver):
        stream = client(url).chat.completions.create(
            model="beta", messages=[{"role": "user", "content": "tell me"}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    spans = receiver.wait_for(lambda spans: len(spans) >= 2)
    [request] = by_kind(spans, "SERVER")
    [attempt] = by_kind(spans, "CLIENT")
    assert request.parent_span_id == ""  # no traceparent: a new trace
    assert request.attributes["switchyard.stream"] is True
    # In the conventions' message shape (gen-ai-input-messages.json, gen-ai-output-messages.json).
    assert json.loads(request.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "tell me"}]}
    ]
    assert json.loads(request.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": "stop"}
    ]
    # The attempt ends at the stream's first events; the request at its last.
    assert attempt.end_ns < request.end_ns


def test_a_stream_cut_after_its_first_events_is_an_error_of_the_request_span(upstreams) -> None:
    _, b = upstreams
    with traced_gateway(upstreams) as (url, receiver):
        b.script(Fault.cut(after=2))
        stream = client(url).chat.completions.create(model="beta", messages=[{"role": "user", "content": "x"}], stream=True)
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
    spans = receiver.wait_for(lambda spans: len(spans) >= 2)
    [request] = by_kind(spans, "SERVER")
    assert request.attributes["http.response.status_code"] == 200  # sent before the cut
    assert request.status == "ERROR" and request.status_message
    assert request.attributes["error.type"] == "stream_interrupted"


def test_an_error_answer_marks_the_request_span(upstreams) -> None:
    a, _ = upstreams
    with traced_gateway(upstreams) as (url, receiver):
        a.script(Fault.status(400))
        with pytest.raises(openai.BadRequestError):
            client(url).chat.completions.create(model="alpha", messages=[{"role": "user", "content": "x"}])
        missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": []})
        assert missing.status_code in (400, 404)
    spans = receiver.wait_for(lambda spans: len(by_kind(spans, "SERVER")) >= 2)
    bad, unknown = by_kind(spans, "SERVER")
    assert bad.attributes["http.response.status_code"] == 400
    assert bad.attributes["error.type"] == "400"
    assert bad.status == "UNSET"  # a client's error is not the server's (HTTP semantic conventions)
    assert unknown.attributes["http.response.status_code"] == missing.status_code


def test_sampling_follows_the_clients_decision_and_the_ratio(upstreams) -> None:
    with traced_gateway(upstreams, sample_ratio=0.0) as (url, receiver):
        gateway = client(url)
        gateway.chat.completions.create(model="beta", messages=[{"role": "user", "content": "unsampled"}])
        gateway.chat.completions.create(
            model="beta", messages=[{"role": "user", "content": "sampled"}], extra_headers={"traceparent": TRACEPARENT}
        )
        not_sampled = f"00-{CLIENT_TRACE[::-1]}-{CLIENT_SPAN}-00"
        gateway.chat.completions.create(
            model="beta", messages=[{"role": "user", "content": "not"}], extra_headers={"traceparent": not_sampled}
        )
    spans = receiver.wait_for(lambda spans: len(spans) >= 2)
    assert {span.trace_id for span in spans} == {CLIENT_TRACE}
    assert len(spans) == 2
    # An unsampled request still passes its trace context on, marked unsampled (W3C flags: bit 0 clear).
    sampled = [int(received.headers["traceparent"][-2:], 16) & 1 for received in upstreams[1].requests]
    assert sampled == [0, 1, 0]
    assert upstreams[1].requests[2].headers["traceparent"].split("-")[1] == CLIENT_TRACE[::-1]


def test_traces_are_on_only_when_configured_or_named_by_the_standard_variables() -> None:
    server = ServerConfig()
    assert tracing_config(server, {}) is None
    from_env = tracing_config(server, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SERVICE_NAME": "edge"})
    assert from_env is not None and from_env.service_name == "edge" and from_env.endpoint is None
    assert tracing_config(server, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) is not None
    configured = ServerConfig.model_validate({"otel": {"endpoint": "http://c:4318"}})
    assert tracing_config(configured, {}) == configured.otel
    assert tracing_config(configured, {"OTEL_SDK_DISABLED": "true"}) is None
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"
    with pytest.raises(ValueError, match="http"):
        ServerConfig.model_validate({"otel": {"endpoint": "grpc://c:4317"}})


def test_without_tracing_nothing_is_sent_and_no_traceparent_goes_upstream(upstreams) -> None:
    _, b = upstreams
    b.reset_log()
    config = parse_config(
        yaml.safe_dump({"server": {"usage_ledger": False}, "providers": {"b": {"type": "custom", "base_url": b.url}},
                        "models": {"beta": {"deployments": [{"provider": "b", "model": "beta-up"}]}}}),
        environ={},
    )  # fmt: skip
    with ServedApp(create_app(config)) as served:
        client(served.url).chat.completions.create(
            model="beta", messages=[{"role": "user", "content": "x"}], extra_headers={"traceparent": TRACEPARENT}
        )
    assert "traceparent" not in b.requests[-1].headers


def test_an_audio_request_is_traced_like_a_chat_request() -> None:
    """The media endpoints' attempts get a span too: no endpoint of the router is left without an operation name."""
    fake = FakeMediaUpstream(api_key="sk-media-upstream-0123456789", azure_key="unused-azure-key-0123456789")
    fake.release_last_chunk.set()  # speech answers whole
    with ServedApp(fake) as upstream, OTLPReceiver() as receiver:
        config = parse_config(yaml.safe_dump({
            "server": {"usage_ledger": False, "otel": {"endpoint": receiver.url}},
            "providers": {"m": {"type": "custom", "base_url": f"{upstream.url}/v1", "api_key": "sk-media-upstream-0123456789"}},
            "models": {"tts": {"deployments": [{"provider": "m", "model": "tts-1"}]}},
        }), environ={})  # fmt: skip
        with ServedApp(create_app(config)) as served:
            speech = client(served.url).audio.speech.create(model="tts", voice="alloy", input="hello")
            assert speech.response.status_code == 200 and speech.content
    spans = receiver.wait_for(lambda spans: len(by_kind(spans, "CLIENT")) >= 1)
    (attempt,) = by_kind(spans, "CLIENT")
    assert attempt.attributes["gen_ai.operation.name"] == "speech"
    assert attempt.attributes["gen_ai.request.model"] == "tts-1"
