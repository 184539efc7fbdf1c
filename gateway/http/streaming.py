"""Relay an upstream event stream to the client, event by event.

Each event is written as soon as it is read: nothing is held back (events
that arrived in one read are written in one message). The stream ends with
``data: [DONE]`` only when the upstream finished; if it breaks after the
response has started, the client gets an error event in OpenAI's shape and
no ``[DONE]``, so an SDK raises instead of returning half an answer.

How events, the end and an error are written is the door's
``EventFraming``: ``OpenAIFraming`` relays the upstream's events as they
are; another API's door translates them (``doors/anthropic_stream.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import orjson

from starlette.types import Send

from gateway.errors import InternalError
from providers import OpenAIError, UpstreamStream
from providers.sse import DONE_EVENT, encode_event

if TYPE_CHECKING:
    from gateway.pricing import Cost
    from providers.wire import Usage

logger = logging.getLogger(__name__)

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer
]


class EventFraming(Protocol):
    """What the client reads of an upstream stream: its events, its end, and an error that breaks it."""

    def events(self, events: list[bytes]) -> bytes:
        """The bytes to write for the ``data`` of events read together (may be empty)."""
        ...

    async def end(self, stream: UpstreamStream) -> bytes:
        """The last bytes, once the upstream finished (``stream``'s usage is final by then).

        Awaitable: a door may keep the finished answer before the client reads its end (Responses' store).
        """
        ...

    def error(self, error: OpenAIError) -> bytes:
        """The last bytes when the stream broke after the response started."""
        ...


class OpenAIFraming:
    """The upstream's events as they are, then ``[DONE]``.

    ``include_usage``: the client asked for a usage chunk; if the upstream sent
    none, one with the gateway's estimate goes before ``[DONE]``. With a
    ``price``, that last usage chunk carries the answer's cost too, as
    ``usage.cost_usd`` (where a price is known): the upstream's usage chunk,
    recognised by its empty ``choices``, is held until the end for that.
    """

    __slots__ = ("_held", "_include_usage", "_price")

    def __init__(self, include_usage: bool, price: Callable[[Usage], Cost | None] | None = None) -> None:
        self._include_usage = include_usage
        self._price = price if include_usage else None
        self._held: bytes | None = None

    def events(self, events: list[bytes]) -> bytes:
        framed = []
        if self._held is not None:  # more came after it: it was not the last
            framed.append(encode_event(self._held))
            self._held = None
        if self._price is not None and _is_usage_chunk(events[-1]):
            self._held, events = events[-1], events[:-1]
        framed += [encode_event(data) for data in events]
        return b"".join(framed)

    async def end(self, stream: UpstreamStream) -> bytes:
        usage_chunk = self._held or (stream.usage_chunk() if self._include_usage else None)
        if usage_chunk is None:
            return DONE_EVENT
        if self._price is not None and stream.usage is not None and (cost := self._price(stream.usage)) is not None:
            usage_chunk = _with_cost(usage_chunk, cost.usd)
        return encode_event(usage_chunk) + DONE_EVENT

    def error(self, error: OpenAIError) -> bytes:
        held = encode_event(self._held) if self._held is not None else b""
        return held + encode_event(error.to_json())


def _is_usage_chunk(data: bytes) -> bool:
    # A byte test first: every other chunk has a choice (Azure's first, with its filter results, has no usage).
    return b'"choices":[]' in data and b'"usage":{' in data


def _with_cost(chunk: bytes, usd: float) -> bytes:
    event = orjson.loads(chunk)
    event["usage"]["cost_usd"] = round(usd, 10)
    return orjson.dumps(event)


async def relay_event_stream(
    stream: UpstreamStream, headers: list[tuple[bytes, bytes]], send: Send, framing: EventFraming
) -> OpenAIError | None:
    """Write ``stream`` to the client as ``framing`` says; never raises once the response has started.

    Returns the error that ended it early, sent as its last event (the status was 200 already); None when whole.
    """
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers})
        try:
            async for events in stream:
                body = framing.events(events)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            ending = await framing.end(stream)
        except OpenAIError as error:
            logger.warning("stream from %s interrupted: %s", getattr(error, "provider", None), error.message)
            await _end_with_error(send, framing.error(error))
            return error
        except Exception:
            logger.exception("stream relay failed")
            internal = InternalError()
            await _end_with_error(send, framing.error(internal))
            return internal
        await send({"type": "http.response.body", "body": ending, "more_body": False})
        return None
    finally:
        await stream.aclose()


async def _end_with_error(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": False})
