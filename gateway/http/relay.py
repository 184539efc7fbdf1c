"""The endpoints that carry model traffic, served as plain ASGI.

Chat completions, completions and embeddings are most of what a gateway
serves, so they skip the web framework: FastAPI's routing, dependency
solving and Request/Response objects cost about half of the gateway's CPU
per request (docs/performance.md). Everything else (models, health, docs,
unknown URLs) is served by FastAPI behind this dispatcher.

Each URL is a door (``gateway.http.doors``): OpenAI's are relayed as they
are, another API's (OpenAI's ``/v1/responses``, Anthropic's ``/v1/messages``)
is translated in and out around the same routing, limits and accounting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.cache import BYPASS, CACHE_PROVIDER, CachedAnswer, CacheLookup, ResponseCache
from gateway.cache.replay import FoldingStream, ReplayedStream
from gateway.errors import InternalError, MethodNotAllowed, RequestTooLarge
from gateway.http.doors import DOORS, Door, DoorContext
from gateway.http.doors.translation import Translated
from gateway.http.responses import send_error, send_json
from gateway.http.shadow import ShadowTraffic, answer_text
from gateway.http.streaming import relay_event_stream
from gateway.http.validation import BodyLimits
from gateway.keys.accounting import CLIENT_CLOSED_REQUEST, Accounting, Outcome
from gateway.keys.keyring import ApiKey, api_key_of
from gateway.pricing import Cost
from gateway.routing.deadline import request_timeout
from gateway.routing.router import Routed, Router
from providers import Endpoint, OpenAIError
from providers.presets import FORWARDED_HEADERS
from providers.wire import Header, Usage, usage_requested

if TYPE_CHECKING:
    from gateway.conversations import ResponseStore
    from gateway.telemetry.tracing import Tracing

logger = logging.getLogger(__name__)

RELAY_PATHS = DOORS
# On an answer whose token usage the gateway counted because the upstream reported none.
ESTIMATED_HEADER = (Header.USAGE_ESTIMATED.encode(), b"true")
_PROCESS_TIME, _PROVIDER, _MODEL, _DROPPED, _COST, _CACHE, _CACHE_SIMILARITY = (
    name.encode()
    for name in (Header.PROCESS_TIME, Header.PROVIDER, Header.MODEL, Header.DROPPED_PARAMS, Header.COST_USD,
                 Header.CACHE, Header.CACHE_SIMILARITY)
)  # fmt: skip
# An answer from the response cache costs nothing.
FREE = Cost(0.0, "cache")


class GatewayApp:
    """Sends a POST to each door (``RELAY_PATHS``) to the relay, the rest to ``fallback``."""

    def __init__(
        self, router: Router, fallback: ASGIApp, accounting: Accounting, limits: BodyLimits,
        responses: ResponseStore | None = None, cache: ResponseCache | None = None, shadows: ShadowTraffic | None = None,
        tracing: Tracing | None = None,
    ) -> None:  # fmt: skip
        self._limits = limits
        self._tracing = tracing
        self._cache = cache
        self._shadows = shadows
        self._responses = responses
        self._contexts: dict[str | None, DoorContext] = {}  # one per key name: the same for each of its requests
        self._router = router
        self._fallback = fallback
        self._accounting = accounting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door = RELAY_PATHS.get(scope["path"]) if scope["type"] == "http" else None
        if door is None:
            await self._fallback(scope, receive, send)
        elif scope["method"] != "POST":
            await send_error(send, MethodNotAllowed(scope["method"], scope["path"], "POST"), door.error_body)
        elif door.answer_here is not None:
            await self._answer_here(scope, receive, send, door)
        else:
            await self._relay(scope, receive, send, door)

    async def _relay(self, scope: Scope, receive: Receive, send: Send, door: Door) -> None:
        started = time.perf_counter()
        state = scope["state"]
        outcome = Outcome(state["request_id"], api_key_of(scope))
        if self._tracing is not None:
            outcome.span = self._tracing.start(scope["headers"], "POST", scope["path"])
        try:
            await self._answer(scope, receive, send, door, started, outcome)
        except asyncio.CancelledError:
            outcome.status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            self._accounting.finish(door.label, outcome, started)
            if outcome.span is not None:
                outcome.span.finish(outcome)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, door: Door, started: float, outcome: Outcome
    ) -> None:
        limit_headers: list[tuple[bytes, bytes]] = []
        try:
            body = await read_body(scope, receive, self._limits.max_bytes)
            context = self._context(outcome.key)
            translated = await door.read(body, context)
            payload = translated.payload
            outcome.model = payload["model"]
            outcome.payload = payload  # for the webhooks' content, when a hook asks for it
            if outcome.span is not None:
                outcome.span.read(door.endpoint, payload)
            if outcome.key is not None:
                limit_headers = await self._accounting.admit(outcome.key, payload["model"], outcome.request_id)
            lookup = await self._look_up(scope, door, translated, outcome)
            if lookup is not None:
                limit_headers.append((_CACHE, lookup.status.encode()))
                if lookup.similarity is not None:
                    limit_headers.append((_CACHE_SIMILARITY, f"{lookup.similarity:.4f}".encode()))
                if lookup.hit is not None:  # free: no dollar budget is held for it
                    await self._answer_from_cache(send, door, translated, context, outcome, lookup.hit, limit_headers, started)
                    return
            if outcome.key is not None:
                limit_headers += await self._accounting.reserve(outcome, door.endpoint, payload)
            deadline = self._router.deadline(request_timeout(scope["headers"], self._router.default_timeout))
            if payload.get("stream") is True and door.streams:
                outcome.stream = True
                routed_stream = await self._router.open_stream(
                    door.endpoint, payload, deadline, outcome.request_id, outcome.trace, _forwarded(scope),
                    translated.native,
                )  # fmt: skip
                outcome.routed(routed_stream, 200)
                first_event = time.perf_counter() - started
                self._accounting.first_event(outcome, first_event)
                headers = routed_headers(routed_stream) + limit_headers + [_process_time(first_event)]
                stream = routed_stream.answer
                keep = lookup is not None and lookup.keep
                shadows = self._shadows.drawn(outcome.model) if self._shadows is not None else ()
                traced = outcome.span is not None and outcome.span.records_content and door.endpoint is Endpoint.CHAT
                folded: list[dict[str, Any]] = []  # the whole answer, once the stream finished
                if (keep or shadows or traced) and not routed_stream.native:
                    stream = FoldingStream(stream, partial(self._folded, lookup if keep else None, outcome, folded))
                try:
                    context = replace(context, price=lambda usage: self._accounting.cost(outcome, usage))
                    if routed_stream.native and door.native_framing is not None:
                        framing, dropped = door.native_framing(translated, context), ()
                    else:
                        framing, dropped = door.framing(translated, context), translated.dropped
                    broken = await relay_event_stream(stream, _dropped(headers, dropped), send, framing)
                    if broken is not None and outcome.span is not None:
                        outcome.span.broken(broken)
                finally:  # a stream cut short is counted for what it used
                    outcome.usage = routed_stream.answer.usage
                if traced and folded:
                    outcome.span.answered(folded[0])  # type: ignore[union-attr]
                if shadows and folded:  # the answer is out: only now may the copies go
                    self._shadows.send(shadows, payload, outcome, answer_text(folded[0]))  # type: ignore[union-attr]
                return
            routed = await self._router.send(
                door.endpoint, payload, deadline, outcome.request_id, outcome.trace, _forwarded(scope),
                translated.native,
            )  # fmt: skip
            outcome.routed(routed, routed.answer.status)
            outcome.usage = routed.answer.usage
            answer, dropped = routed.answer.body, translated.dropped
            if lookup is not None and lookup.keep and not routed.native and routed.answer.status == 200:
                self._keep(lookup, outcome, orjson.loads(answer), outcome.usage)  # a provider's 2xx body is JSON
            if outcome.span is not None and outcome.span.records_content and not routed.native:
                outcome.span.answered(orjson.loads(answer))
            shadows = () if self._shadows is None or routed.answer.status != 200 else self._shadows.drawn(outcome.model)
            real_text = answer_text(answer) if shadows and not routed.native else None
            if routed.native and door.native_answer is not None:
                answer, dropped = await door.native_answer(answer, translated, context), ()
            elif door.answer is not None:
                answer = await door.answer(answer, translated, outcome.usage, context)
        except Exception as error:  # relay_event_stream never raises after the response started, so none has
            outcome.status = await _refuse(send, door, error, scope["path"])
            return
        headers = routed_headers(routed) + limit_headers + [_process_time(time.perf_counter() - started)]
        if outcome.usage is not None and outcome.usage.estimated:
            headers.append(ESTIMATED_HEADER)
        if (cost := self._accounting.cost(outcome, outcome.usage)) is not None:
            headers.append((_COST, usd_text(cost.usd)))
        await send_json(send, routed.answer.status, answer, _dropped(headers, dropped))
        if shadows:  # the answer is out: only now may the copies go
            self._shadows.send(shadows, payload, outcome, real_text)  # type: ignore[union-attr]

    async def _look_up(self, scope: Scope, door: Door, translated: Translated, outcome: Outcome) -> CacheLookup | None:
        """The cache's verdict on a chat request for a model with a cache; None when the model has none."""
        cache, model = self._cache, outcome.model
        if cache is None or door.endpoint is not Endpoint.CHAT or not cache.covers(model):  # type: ignore[arg-type]
            return None
        if translated.native is not None and translated.native.lost:  # the chat answer is not the one asked for
            outcome.cache = BYPASS.status
            return BYPASS
        owner = "" if outcome.key is None else outcome.key.cache_owner
        cache_control = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"cache-control"), "")
        lookup = await cache.lookup(model, translated.payload, owner, cache_control)  # type: ignore[arg-type]
        outcome.cache = lookup.status
        return lookup

    def _folded(
        self, lookup: CacheLookup | None, outcome: Outcome, folded: list[dict[str, Any]], answer: dict[str, Any],
        usage: Usage | None,
    ) -> None:  # fmt: skip
        """A stream finished whole: its answer kept for the cache (with ``lookup``) and for the shadow copies."""
        folded.append(answer)
        if lookup is not None:
            self._keep(lookup, outcome, answer, usage)

    def _keep(self, lookup: CacheLookup, outcome: Outcome, answer: dict[str, Any], usage: Usage | None) -> None:
        """Keep a fresh chat answer (its usage filled in, if a stream carried none) for the cache's next hit."""
        assert self._cache is not None and outcome.answered_by is not None
        if usage is not None and "usage" not in answer:
            answer["usage"] = usage.to_openai()
        deployment = outcome.answered_by
        self._cache.keep(outcome.model, lookup, CachedAnswer(answer, usage, deployment.provider_name, deployment.model))  # type: ignore[arg-type]

    async def _answer_from_cache(
        self, send: Send, door: Door, translated: Translated, context: DoorContext, outcome: Outcome,
        hit: CachedAnswer, headers: list[tuple[bytes, bytes]], started: float,
    ) -> None:  # fmt: skip
        """A kept answer, through the door as a fresh one would go (replayed as a stream when one was asked for)."""
        outcome.from_cache(hit)
        headers = [(_PROVIDER, CACHE_PROVIDER.encode()), (_MODEL, hit.deployment.encode()), *headers, (_COST, usd_text(0.0))]
        if translated.payload.get("stream") is True and door.streams:
            outcome.stream = True
            headers.append(_process_time(time.perf_counter() - started))
            context = replace(context, price=lambda usage: FREE)
            include_usage = usage_requested(translated.payload)
            replayed = ReplayedStream(hit.answer, hit.usage, include_usage)
            await relay_event_stream(replayed, _dropped(headers, translated.dropped), send, door.framing(translated, context))
            return
        answer = orjson.dumps(hit.answer)
        if door.answer is not None:
            answer = await door.answer(answer, translated, hit.usage, context)
        headers.append(_process_time(time.perf_counter() - started))
        await send_json(send, 200, answer, _dropped(headers, translated.dropped))

    async def _answer_here(self, scope: Scope, receive: Receive, send: Send, door: Door) -> None:
        """A door the gateway answers itself (count_tokens): read and checked as the others, never routed."""
        assert door.answer_here is not None
        try:
            body = await read_body(scope, receive, self._limits.max_bytes)
            key = api_key_of(scope)
            translated = await door.read(body, self._context(key))
            if key is not None:
                key.require(translated.payload["model"])
            answer = await door.answer_here(translated, self._router.table)
        except Exception as error:
            await _refuse(send, door, error, scope["path"])
            return
        await send_json(send, 200, answer, _dropped([], translated.dropped))

    def _context(self, key: ApiKey | None) -> DoorContext:
        owner = None if key is None else key.name
        context = self._contexts.get(owner)
        if context is None:  # a key's first request (keys are the configured ones: the dict stays that small)
            context = self._contexts[owner] = DoorContext(self._limits, self._responses, owner)
        return context


async def _refuse(send: Send, door: Door, error: Exception, path: str) -> int:
    """Answer ``error`` in the door's shape (anything but an OpenAIError is a bug: logged, a 500); its status."""
    if not isinstance(error, OpenAIError):
        logger.error("unexpected error on POST %s", path, exc_info=error)
        error = InternalError()
    await send_error(send, error, door.error_body)
    return error.status_code


_FORWARDED = frozenset(name.encode() for name in FORWARDED_HEADERS)


def _forwarded(scope: Scope) -> dict[str, str]:
    """The request's headers that some provider passes on (``anthropic-beta``); the provider picks its own."""
    return {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in _FORWARDED}


def _dropped(headers: list[tuple[bytes, bytes]], dropped: tuple[str, ...]) -> list[tuple[bytes, bytes]]:
    """``headers`` with the door's dropped fields added to x-switchyard-dropped-params (the provider's may be there)."""
    if not dropped:
        return headers
    named = b",".join(name.encode() for name in dropped)
    kept = [(name, value) for name, value in headers if name != _DROPPED]
    provider_dropped = [value for name, value in headers if name == _DROPPED]
    return [*kept, (_DROPPED, b",".join([named, *provider_dropped]))]


def usd_text(usd: float) -> bytes:
    """Dollars as a header carries them: fixed point, to a millionth of a cent, never in exponent form."""
    return f"{usd:.8f}".encode()


def _process_time(seconds: float) -> tuple[bytes, bytes]:
    """x-process-time: the gateway's time to the answer (to the first event, for a stream), in seconds."""
    return (_PROCESS_TIME, f"{seconds:.4f}".encode())


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body; RequestTooLarge as soon as it passes ``limit`` bytes (the rest is never buffered).

    Every endpoint that takes a body reads it here (the relay, /v1/tokenize, /v1/detokenize).
    """
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise RequestTooLarge(limit)
        return body
    # Only a body that came in several parts is large enough for its declared length to matter.
    if _declared_length(scope) > limit:
        raise RequestTooLarge(limit)
    parts, size = [body], len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            # The client left (or was cut as too slow) mid-body: a prefix must never be parsed as the request.
            raise asyncio.CancelledError("the client disconnected before its body ended")
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise RequestTooLarge(limit)
        parts.append(part)
    return b"".join(parts)


def _declared_length(scope: Scope) -> int:
    """The body's Content-Length, or 0 without a usable one (chunked)."""
    value = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
    return int(value) if value.isdigit() and len(value) <= 18 else 0  # 18 digits: more than any body anyone sends


def routed_headers(routed: Routed[Any]) -> list[tuple[bytes, bytes]]:
    """Which deployment answered, and how many calls and which models it took."""
    deployment = routed.deployment
    return [
        (_PROVIDER, deployment.provider_name.encode()),
        (_MODEL, deployment.model.encode()),
        *((name.encode(), value.encode()) for name, value in routed.trace.headers().items()),
        *((name.encode(), value.encode()) for name, value in routed.answer.headers.items()),
    ]
