"""The HTTP server: uvicorn, with the limits on slow, idle and surplus clients that it lacks.

uvicorn closes a keep-alive connection that stays idle after an answer
(``timeout_keep_alive``), but starts no clock on a new connection, and waits
for ever for a request's headers and for its body; its ``limit_concurrency``
answers a text/plain 503 to every request past the limit, those of
connections already being served too. ``GuardedHttpToolsProtocol`` is its
httptools protocol with one clock per request::

    opened ─► first byte ─► headers ─► body ──► answer ─► idle ─► first byte ─► headers ...
    ├──── header_timeout ───┤         │         │         ├─ keepalive ─┤ ├─ header_timeout ─┤
                            ├─ body_timeout + 1 s per body_min_rate bytes ─┤

* **headers**: ``header_timeout`` seconds from the opening, or from the first
  byte of a later request on a kept-alive connection;
* **body**: ``body_timeout`` seconds, plus one second for every
  ``body_min_rate`` bytes received (Apache's mod_reqtimeout rule): a large
  body sent at a fair rate is never cut, a trickle is cut soon after
  ``body_timeout``. Time while the gateway itself pauses reading (the app has
  not taken the body yet, a pipelined request waits) does not count;
* **connections**: the connection that makes more than ``max_connections``
  open is answered 503 in OpenAI's shape with ``Retry-After: 1`` on its first
  request, then closed. Those already open keep being served, so clients
  that pile up cannot take the gateway from the ones it is serving.

A request cut while no answer is on its way gets a 408 first; a connection
that sent nothing is closed quietly, as an idle one is. The clock is one
timer, armed when a connection opens and cancelled once its first request
is in; a later request gets one only if a read leaves it incomplete, so a
request that arrives whole in one read, as most do, costs none. The body's
rate is looked at only when the timer fires, which re-arms it while the
body keeps up.

This relies on the internals of uvicorn's ``HttpToolsProtocol`` (its parser
callbacks, ``cycle``, ``flow``, ``connections``); tests/gateway/http/test_slow_clients.py
holds it to that.
"""

from __future__ import annotations

import asyncio
import http
import logging
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import ServerConfig
from gateway.errors import RequestTimeout, TooManyConnections
from gateway.http.responses import send_error
from providers import OpenAIError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """How long a client may take to send a request, and how many may be connected at once."""

    header_timeout: float
    body_timeout: float
    body_min_rate: int
    max_connections: int

    @classmethod
    def of(cls, server: ServerConfig) -> ClientLimits:
        return cls(server.header_timeout, server.body_timeout, server.body_min_rate, server.max_connections)


def uvicorn_config(app: ASGIApp, server: ServerConfig, **options: Any) -> uvicorn.Config:
    """uvicorn's Config to serve ``app`` at ``server``'s address under its limits; ``options``: more of uvicorn's."""
    return uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        http=protocol_class(ClientLimits.of(server)),
        timeout_keep_alive=server.keepalive_timeout,  # type: ignore[arg-type]  # a float works: it goes to call_later
        server_header=False,
        **options,
    )


def protocol_class(limits: ClientLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to ``limits``: uvicorn makes each connection's protocol from a class alone."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClientLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._request_begun = False  # a byte of the request being read has arrived
        self._reading_body = False
        self._body_started = 0.0
        self._body_received = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = _refuse(TooManyConnections(self.limits.max_connections))
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the connection over, with its own pings and timeouts.
        self._disarm()
        self._request_begun = False
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Armed only for a request still incomplete after a read: most arrive whole in one, and cost no timer.
        # (A new connection's first request runs on the clock armed at its opening.)
        if self._request_begun and self._read_timer is None and not self.transport.is_closing():
            self._arm(self.limits.body_timeout if self._reading_body else self.limits.header_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        self._reading_body = False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._reading_body = True
        self._body_started = self.loop.time()
        self._body_received = 0

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._request_begun = self._reading_body = False

    def _arm(self, delay: float) -> None:
        self._read_timer = self.loop.call_later(delay, self._on_read_deadline)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _on_read_deadline(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the gateway is not reading: the client cannot be behind
            self._body_started, self._body_received = now, 0
            self._arm(self.limits.body_timeout)
        elif not self._reading_body:
            self._cut("headers")
        else:
            limits = self.limits
            deadline = self._body_started + limits.body_timeout + self._body_received / limits.body_min_rate
            if deadline > now:
                self._arm(deadline - now)
            else:
                self._cut("body")

    def _cut(self, what: str) -> None:
        """Close the connection of a request that is too slow, with a 408 if nothing else is being answered on it."""
        cycle = self.cycle
        if self._reading_body:
            answer_free = not cycle.response_started
        else:  # this request has no cycle yet; ``cycle`` is the previous request's
            answer_free = self._request_begun and (cycle is None or cycle.response_complete)
        client = "%s:%d" % self.client if self.client else "a client"
        logger.debug("closing the connection of %s: its request's %s did not arrive in time", client, what)
        if answer_free:
            self.transport.write(_response_bytes(RequestTimeout(what), self.server_state.default_headers))
        if self._reading_body:
            # As connection_lost will: the app's receive() says http.disconnect and its sends go nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def _refuse(error: OpenAIError) -> ASGIApp:
    """An ASGI app that answers every request with ``error`` (which says ``connection: close``)."""

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(send, error)

    return refuse


def _response_bytes(error: OpenAIError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 response for ``error``, written straight to a transport no app is answering on."""
    body = error.to_json()
    phrase = http.HTTPStatus(error.status_code).phrase
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in error.headers.items()),
    ]
    head = f"HTTP/1.1 {error.status_code} {phrase}\r\n".encode() + b"".join(
        name + b": " + value + b"\r\n" for name, value in headers
    )
    return head + b"\r\n" + body


# Open files per client connection: its socket, and an upstream connection while its request is relayed.
_FILES_PER_CONNECTION = 2
# And for the rest: pooled idle upstream connections, the ledger, log files, model files.
_FILES_SPARE = 256


def open_file_shortfall(max_connections: int) -> str | None:
    """Raise the soft open-file limit to fit ``max_connections``, as far as the hard limit goes; what still lacks.

    Past that limit accept() fails (EMFILE), and connections are dropped
    unanswered before the cap can answer its 503.
    """
    import resource

    needed = max_connections * _FILES_PER_CONNECTION + _FILES_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target >= needed:
        return None
    return (
        f"the open-file limit is {target}, and server.max_connections {max_connections} needs about {needed}: "
        "raise `ulimit -n`, or lower max_connections"
    )
