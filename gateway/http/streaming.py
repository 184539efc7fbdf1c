"""Relay an upstream event stream to the client, event by event.

Each event is written as soon as it is read: nothing is held back (events
that arrived in one read are written in one message). The stream ends with
``data: [DONE]`` only when the upstream finished; if it breaks after the
response has started, the client gets an error event in OpenAI's shape and
no ``[DONE]``, so an SDK raises instead of returning half an answer.
"""

from __future__ import annotations

import logging

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


async def relay_event_stream(
    stream: UpstreamStream, headers: list[tuple[bytes, bytes]], send: Send, *, include_usage: bool = False
) -> None:
    """Write ``stream`` to the client; never raises once the response has started.

    ``include_usage``: the client asked for a usage chunk; if the upstream sent
    none, one with the gateway's estimate goes before ``[DONE]``.
    """
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers})
        try:
            async for events in stream:
                body = b"".join([encode_event(data) for data in events])
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except OpenAIError as error:
            logger.warning("stream from %s interrupted: %s", getattr(error, "provider", None), error.message)
            await _end_with_error(send, error)
            return
        except Exception:
            logger.exception("stream relay failed")
            await _end_with_error(send, InternalError())
            return
        usage_chunk = stream.usage_chunk() if include_usage else None
        ending = DONE_EVENT if usage_chunk is None else encode_event(usage_chunk) + DONE_EVENT
        await send({"type": "http.response.body", "body": ending, "more_body": False})
    finally:
        await stream.aclose()


async def _end_with_error(send: Send, error: OpenAIError) -> None:
    await send({"type": "http.response.body", "body": encode_event(error.to_json()), "more_body": False})
