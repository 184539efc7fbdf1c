"""Relay an upstream event stream to the client, event by event.

Each event is written as soon as it is read: nothing is held back (events
that arrived in one read are written in one message). The stream
ends with ``data: [DONE]`` only when the upstream finished; if it breaks
after the response has started, the client gets an error event in OpenAI's
shape and no ``[DONE]``, so an SDK raises instead of returning half an answer.
"""

from __future__ import annotations

import logging

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from providers import ProviderError, UpstreamStream
from providers.sse import DONE_EVENT, encode_event

logger = logging.getLogger(__name__)

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer
]


class EventStreamResponse(Response):
    # A Response subclass so that frameworks pass it through untouched; it
    # writes its own messages and uses none of Response's body machinery.
    def __init__(self, stream: UpstreamStream, headers: dict[str, str]) -> None:
        self.stream = stream
        self.status_code = 200
        self.background = None
        self.raw_headers = _SSE_HEADERS + [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                async for events in self.stream:
                    body = b"".join([encode_event(data) for data in events])
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            except ProviderError as error:
                logger.warning("stream from %s interrupted: %s", error.provider, error.message)
                await send({"type": "http.response.body", "body": encode_event(error.to_json()), "more_body": False})
                return
            await send({"type": "http.response.body", "body": DONE_EVENT, "more_body": False})
        finally:
            await self.stream.aclose()
