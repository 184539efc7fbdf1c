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
from typing import Protocol

from starlette.types import Send

from gateway.errors import InternalError
from providers import OpenAIError, UpstreamStream
from providers.sse import DONE_EVENT, encode_event

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
    none, one with the gateway's estimate goes before ``[DONE]``.
    """

    __slots__ = ("_include_usage",)

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage

    def events(self, events: list[bytes]) -> bytes:
        return b"".join([encode_event(data) for data in events])

    async def end(self, stream: UpstreamStream) -> bytes:
        usage_chunk = stream.usage_chunk() if self._include_usage else None
        return DONE_EVENT if usage_chunk is None else encode_event(usage_chunk) + DONE_EVENT

    def error(self, error: OpenAIError) -> bytes:
        return encode_event(error.to_json())


async def relay_event_stream(
    stream: UpstreamStream, headers: list[tuple[bytes, bytes]], send: Send, framing: EventFraming
) -> None:
    """Write ``stream`` to the client as ``framing`` says; never raises once the response has started."""
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
            return
        except Exception:
            logger.exception("stream relay failed")
            await _end_with_error(send, framing.error(InternalError()))
            return
        await send({"type": "http.response.body", "body": ending, "more_body": False})
    finally:
        await stream.aclose()


async def _end_with_error(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": False})
