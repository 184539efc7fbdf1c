"""OpenTelemetry traces of model requests, on only when configured (docs/observability.md).

One trace per request through a door, in the GenAI semantic conventions::

    "chat gpt-4o"        SERVER    the door's request, from its first byte to its last; the client's
    │                              traceparent is its parent; the local engine's queue, prefill and
    │                              decode are its events
    └── "chat gpt-4o-mini" CLIENT  one upstream call (INTERNAL on the engine in this process), its
                                   traceparent sent upstream; a retry or a fallback names the failure
                                   before it. A stream's call ends at its first events.

The SDK and its exporter are imported here only, and only when tracing is on:
without it a request pays an ``is None`` in the relay and one in the router.
Spans leave the process on the SDK's batch thread, never on the event loop.
Prompts and answers are recorded only with ``record_content``; an error's
text passes the gateway's key mask first, as a log line does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from gateway.config import OtelConfig, ServerConfig
from gateway.telemetry.genai_messages import input_messages, output_messages
from providers import Endpoint, OpenAIError, ProviderError, UpstreamRequest
from providers.redact import redact
from providers.wire import RequestTimings

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gateway.keys.accounting import Outcome
    from gateway.routing.balancer import DeploymentState
    from gateway.routing.router import Trace

logger = logging.getLogger(__name__)

T = TypeVar("T")
Call = Callable[["DeploymentState", UpstreamRequest], Awaitable[T]]

# gen_ai.operation.name per endpoint (the doors of other APIs are chat too).
OPERATIONS = {
    Endpoint.CHAT: "chat",
    Endpoint.COMPLETIONS: "text_completion",
    Endpoint.EMBEDDINGS: "embeddings",
    Endpoint.MODERATIONS: "moderation",  # no convention names one, nor the audio and image ones below
    Endpoint.TRANSCRIPTIONS: "transcription",
    Endpoint.TRANSLATIONS: "translation",
    Endpoint.SPEECH: "speech",
    Endpoint.IMAGES: "image_generation",
    Endpoint.IMAGE_EDITS: "image_edit",
}
# The endpoints whose requests carry messages or prompts (with record_content, recorded on the span).
_MESSAGE_ENDPOINTS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.MODERATIONS})
# gen_ai.provider.name for presets the conventions name; any other preset goes by its own name.
PROVIDER_NAMES = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "groq": "groq",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "perplexity": "perplexity",
    "xai": "x_ai",
}
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_TRACE_HEADERS = (b"traceparent", b"tracestate")
# Request fields recorded as gen_ai.request.* attributes.
_REQUEST_FIELDS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
}


def tracing_config(server: ServerConfig, environ: Mapping[str, str]) -> OtelConfig | None:
    """What to trace with: ``server.otel``, or the defaults when only the OTLP variables are set; None: off.

    ``OTEL_SDK_DISABLED=true`` turns it off either way, as in every OpenTelemetry SDK.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        if server.otel is not None:
            logger.info("traces: off (OTEL_SDK_DISABLED=true), though server.otel is set")
        return None
    if server.otel is not None:
        return server.otel
    if any(environ.get(name) for name in ENDPOINT_VARIABLES):
        return OtelConfig(service_name=environ.get("OTEL_SERVICE_NAME") or "switchyard")
    return None


class Tracing:
    """The gateway's tracer: request spans for the relay, attempt spans for the router."""

    def __init__(
        self, config: OtelConfig, provider_types: Mapping[str, str], base_urls: Mapping[str, str],
        secrets: tuple[str, ...], version: str,
    ) -> None:  # fmt: skip
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # Our own provider, not the global one: two gateways in one process (tests) trace apart.
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name, "service.version": version}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(config.endpoint))))
        self._tracer = self._provider.get_tracer("switchyard", version)
        self._propagator = TraceContextTextMapPropagator()
        self.record_content = config.record_content
        self._secrets = secrets
        self.describe_providers(provider_types, base_urls)
        logger.info(
            "traces: OTLP/HTTP to %s, service %s, sampling %g of the requests no traceparent decides%s",
            traces_url(config.endpoint) or "the OTEL_EXPORTER_OTLP_* endpoint (else localhost:4318)",
            config.service_name, config.sample_ratio, ", with prompts and answers" if config.record_content else "",
        )  # fmt: skip

    def describe_providers(self, provider_types: Mapping[str, str], base_urls: Mapping[str, str]) -> None:
        """Name the providers' systems and hosts on attempt spans (at start, and after a configuration reload)."""
        self._provider_names = {name: PROVIDER_NAMES.get(kind, kind) for name, kind in provider_types.items()}
        self._local = frozenset(name for name, kind in provider_types.items() if kind == "local")
        self._hosts = {name: host for name, url in base_urls.items() if (host := urlsplit(url).hostname)}

    def start(self, headers: list[tuple[bytes, bytes]], method: str, path: str) -> RequestSpan:
        """A request's span, current until ``RequestSpan.finish``; its parent is the client's traceparent, if any."""
        from opentelemetry import context, trace

        carrier = {name.decode(): value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}
        parent = self._propagator.extract(carrier) if carrier else None
        span = self._tracer.start_span(
            f"{method} {path}", parent, trace.SpanKind.SERVER,
            {"http.request.method": method, "url.path": path},
        )  # fmt: skip
        return RequestSpan(self, span, context.attach(trace.set_span_in_context(span, parent)))

    def traced(self, call: Call[T], trace: Trace, endpoint: Endpoint) -> Call[T]:
        """``call`` with a span per upstream attempt, its trace context sent upstream.

        Each attempt after a failure says which (``switchyard.after``: retry of
        the same deployment, or fallback to another) and why.
        """
        from opentelemetry import trace as otel
        from opentelemetry.trace import SpanKind, StatusCode

        tracer, propagator, operation = self._tracer, self._propagator, OPERATIONS[endpoint]
        failed: list[tuple[str, str, float]] = []  # the last failure: (provider/model, why, when it ended)

        async def traced_call(state: DeploymentState, request: UpstreamRequest) -> T:
            if not otel.get_current_span().is_recording():  # not sampled: only its context goes upstream (flag 00)
                unsampled: dict[str, str] = {}
                propagator.inject(unsampled)
                return await call(state, replace(request, propagated={**request.propagated, **unsampled}))
            deployment = state.deployment
            name = deployment.provider_name
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": deployment.model,
                "gen_ai.provider.name": self._provider_names.get(name, name),
                "switchyard.provider": name,
                "switchyard.model": trace.models[-1] if trace.models else "",
                "switchyard.attempt": trace.attempts,
            }
            if (host := self._hosts.get(name)) is not None:
                attributes["server.address"] = host
            if failed:
                where, why, ended = failed[-1]
                attributes["switchyard.after"] = "retry" if where == f"{name}/{deployment.model}" else "fallback"
                attributes["switchyard.after.reason"] = why
                attributes["switchyard.after.waited_s"] = round(time.time() - ended, 6)
            kind = SpanKind.INTERNAL if name in self._local else SpanKind.CLIENT
            span = tracer.start_span(f"{operation} {deployment.model}", None, kind, attributes)
            propagated: dict[str, str] = {}
            propagator.inject(propagated, otel.set_span_in_context(span))
            try:
                return await call(state, replace(request, propagated={**request.propagated, **propagated}))
            except ProviderError as error:
                why = redact(f"{error.status_code} {error.message}", self._secrets)
                span.set_attribute("error.type", type(error).__name__)
                span.set_attribute("http.response.status_code", error.status_code)
                span.set_status(StatusCode.ERROR, why)
                failed.append((f"{name}/{deployment.model}", why, time.time()))
                raise
            except asyncio.CancelledError:
                span.set_attribute("error.type", "cancelled")
                raise
            except BaseException as error:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(StatusCode.ERROR)
                raise
            finally:
                span.end()

        return traced_call

    async def aclose(self) -> None:
        """Export what is left and stop (the exporter's HTTP call blocks: off the event loop)."""
        await asyncio.to_thread(self._provider.shutdown)


class RequestSpan:
    """One request's span, current (the parent of its attempts) from ``Tracing.start`` to ``finish``."""

    __slots__ = ("_tracing", "span", "_token", "_operation")

    def __init__(self, tracing: Tracing, span: Span, token: object) -> None:
        self._tracing = tracing
        self.span = span
        self._token = token
        self._operation = "chat"

    @property
    def records_content(self) -> bool:
        return self._tracing.record_content

    def read(self, endpoint: Endpoint, payload: dict[str, Any]) -> None:
        """The request as the router gets it: what it asks for (and, with record_content, its messages)."""
        self._operation = OPERATIONS[endpoint]
        if not self.span.is_recording():  # not sampled: nothing is set on it
            return
        attributes: dict[str, Any] = {"gen_ai.operation.name": self._operation}
        for field, attribute in _REQUEST_FIELDS.items():
            value = payload.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[attribute] = value
        if self._tracing.record_content and endpoint in _MESSAGE_ENDPOINTS:
            attributes["gen_ai.input.messages"] = _json(input_messages(payload))
        self.span.set_attributes(attributes)  # at once: each set_attribute takes the span's lock

    def answered(self, answer: dict[str, Any]) -> None:
        """With record_content: the answer's messages (a chat answer, whole or folded from its stream)."""
        if isinstance(answer.get("choices"), list):  # chat's messages, or a completion's texts
            self.span.set_attribute("gen_ai.output.messages", _json(output_messages(answer)))

    def broken(self, error: OpenAIError) -> None:
        """A stream that ended early with ``error`` as its last event (its status was 200 already)."""
        from opentelemetry.trace import StatusCode

        self.span.set_attribute("error.type", error.code or type(error).__name__)
        self.span.set_status(StatusCode.ERROR, redact(error.message, self._tracing._secrets))

    def finish(self, outcome: Outcome) -> None:
        """End the span with what the request came to (counted first: its cost is known); it is no longer current."""
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        span = self.span
        if not span.is_recording():
            span.end()
            context.detach(self._token)
            return
        names = self._tracing._provider_names
        trace = outcome.trace
        attributes: dict[str, Any] = {
            "switchyard.request_id": outcome.request_id,
            "switchyard.attempts": trace.attempts,
            "switchyard.stream": outcome.stream,
            "http.response.status_code": outcome.status,
        }
        model = outcome.model if isinstance(outcome.model, str) else ""
        if model:
            span.update_name(f"{self._operation} {model}")
            attributes["gen_ai.request.model"] = model
        if outcome.deployment:
            attributes["gen_ai.response.model"] = outcome.deployment
        if outcome.provider:
            attributes["gen_ai.provider.name"] = names.get(outcome.provider, outcome.provider)
            attributes["switchyard.provider"] = outcome.provider
        if (usage := outcome.usage) is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if trace.models:
            attributes["switchyard.fallback_chain"] = list(trace.models)
        if trace.route_reason is not None:
            attributes["switchyard.route_reason"] = trace.route_reason
        if outcome.cache is not None:
            attributes["switchyard.cache"] = outcome.cache
        if outcome.key is not None:
            attributes["switchyard.key"] = outcome.key.name
        if outcome.priced is not None and (cost := outcome.priced[1]) is not None:
            attributes["switchyard.cost_usd"] = cost.usd
        if outcome.status >= 400:
            attributes["error.type"] = str(outcome.status)
        span.set_attributes(attributes)
        if outcome.status >= 500:  # a server span's error is the server's (semantic conventions for HTTP)
            span.set_status(StatusCode.ERROR)
        for timings in outcome.timings:
            _engine_events(span, timings)
        span.end()
        context.detach(self._token)


def _engine_events(span: Span, timings: RequestTimings) -> None:
    """The engine's stages of one request, each an event at its start with its duration."""
    if timings.arrived_at is None or timings.queued_seconds is None or timings.prefill_seconds is None:
        return
    at = timings.arrived_at
    for name, seconds in (
        ("switchyard.engine.queue", timings.queued_seconds),
        ("switchyard.engine.prefill", timings.prefill_seconds),
        ("switchyard.engine.decode", timings.decode_seconds or 0.0),
    ):
        span.add_event(name, {"duration_s": round(seconds, 6)}, int(at * 1e9))
        at += seconds


def traces_url(endpoint: str | None) -> str | None:
    """The OTLP/HTTP traces URL of a collector's URL (``/v1/traces`` added to one without a path); None: the SDK's."""
    if endpoint is None:
        return None
    return endpoint if urlsplit(endpoint).path.strip("/") else endpoint.rstrip("/") + "/v1/traces"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
