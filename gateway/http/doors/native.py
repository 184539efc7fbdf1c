"""A stream in the door's own API, from a deployment that speaks it: relayed event by event, as it came.

The upstream's events are written with their ``event:`` line again (both
Anthropic and OpenAI's Responses name each event by its ``type``; the
provider hands over only the ``data``). A Responses stream's final event is
held until its response is kept (``store``), so a client that continues
from it at once finds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.http.doors.translation import upstream_object
from providers import UpstreamStream
from providers.errors import OpenAIError, UpstreamProtocolError

Keep = Callable[[dict[str, Any]], Awaitable[None]]
# How a break is written: the error, and the sequence number the next event would have had.
BreakWriter = Callable[[OpenAIError, int], bytes]
# The Responses events that carry the finished response.
_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class NativeEvents:
    """The upstream's events as they are (``EventFraming``); a break is written by ``error``, in the door's shape."""

    def __init__(self, error: BreakWriter, keep: Keep | None = None) -> None:
        self._error = error
        self._keep = keep
        self._next_sequence = 0
        self._held: tuple[bytes, Any] | None = None  # the final event, and its response

    def events(self, events: list[bytes]) -> bytes:
        out = []
        for data in events:
            event = upstream_object(data, "stream event")
            kind = event.get("type")
            if not isinstance(kind, str):
                raise UpstreamProtocolError("the upstream sent an event without a type")
            if isinstance(event.get("sequence_number"), int):
                self._next_sequence = event["sequence_number"] + 1
            framed = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
            if kind in _FINAL and self._keep is not None:
                self._held = (framed, event.get("response"))
            else:
                out.append(framed)
        return b"".join(out)

    async def end(self, stream: UpstreamStream) -> bytes:
        """The held final event, once its response is kept; nothing else (the upstream's last event ended it)."""
        if self._held is None:
            return b""
        framed, response = self._held
        if self._keep is not None and isinstance(response, dict):
            await self._keep(response)
        return framed

    def error(self, error: OpenAIError) -> bytes:
        return self._error(error, self._next_sequence)
