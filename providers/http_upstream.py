"""What every adapter of an upstream over HTTP shares: one pooled session, and its failures as ProviderErrors.

An adapter (``openai_compatible.py``, ``anthropic/provider.py``) says where a
request goes and what its body is; this layer posts it and reads the answer:

    HTTPUpstream.post(url, body)         a whole answer: (response, body), or a ProviderError
    HTTPUpstream.call(method, url, ...)  the same for any method (the Batch API's GETs and DELETEs)
    HTTPUpstream.open(url, body)         an open event stream (status 2xx, text/event-stream), or a ProviderError;
                                         with ``event_stream=False``, any 2xx body read as it comes (speech audio)

A body is bytes, or an async iterable of them with its length in the
headers (a multipart upload read from its spool: ``providers/media.py``).

One ``aiohttp.ClientSession`` per provider keeps connections alive across
requests; it is made on first use, on the event loop that runs it.

A request written to a pooled connection the upstream had just closed
(``EPIPE``: it closed an idle keep-alive connection as the request took it)
is sent once more at once, on a new connection: the upstream never read it.
Any other transport failure is the router's to retry (an upstream that read
the request may have answered it).

Why aiohttp and not httpx: on the hot path the HTTP client is the largest
single cost. Against the same local upstream, httpx's AsyncClient spent
about 0.9 ms of CPU per request and aiohttp about 0.15 ms (aiohttp parses
HTTP in C, httpx's h11 in Python); the whole gateway's budget is 1 ms. The
gateway measured 1.31 ms per request on httpx and 0.52 ms on aiohttp
(docs/performance.md).

Redirects are never followed (``allow_redirects=False`` on every call):
aiohttp drops ``Authorization`` on a cross-origin redirect but not other
auth headers (Azure's ``api-key``, Anthropic's ``x-api-key``), and a POST
turned into a GET by a 302 would come back as someone else's 200. A 3xx is
``UpstreamRedirected``.

Nothing here masks keys: what an upstream echoes (in an error's fields, a
stream event, a 200 body) is masked on its way out of the gateway, in one
place (``gateway/http/middleware/redaction.py``), and in log lines by the log formatter.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterable, Mapping

import aiohttp
from yarl import URL

from providers.config import HostedProviderConfig, ResolvedProvider
from providers.errors import (
    ProviderError,
    StreamInterrupted,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_from_response,
)

logger = logging.getLogger(__name__)

# How long to wait for the end of a stream's body after its last event.
_DRAIN_SECONDS = 0.5
STREAM_HEADERS = {"accept": "text/event-stream", "accept-encoding": "identity"}
_ANY_BODY_HEADERS = {"accept": "*/*", "accept-encoding": "identity"}
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
# What a request body may be: its bytes, or its chunks as they are read (headers then carry its length).
Body = bytes | AsyncIterable[bytes]


class HTTPUpstream:
    """The session, timeouts and error mapping of one configured upstream; adapters subclass it."""

    state = "ready"  # an HTTP upstream's health is the router's to learn, from its answers

    def __init__(self, name: str, config: HostedProviderConfig) -> None:
        self.name = name
        self._upstream: ResolvedProvider = config.resolve()
        self._headers = {"content-type": "application/json", **self._upstream.headers, **self._upstream.auth_headers()}
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        # A stream's reads are not timed here: a per-read timer is re-armed on
        # every chunk (about 9% of a stream's CPU), and the gateway watches
        # streams with one timer each (gateway/routing/stream_guard.py).
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout, sock_read=None)

    def error_from_response(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        """The error for a non-2xx answer; an upstream with its own error shapes overrides this."""
        return error_from_response(status, body, headers, provider=self.name)

    async def post(
        self, url: URL, body: Body, headers: Mapping[str, str] | None = None
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """Post ``body`` and read the whole 2xx answer; anything else raises."""
        return await self.call("POST", url, body, headers)

    async def call(
        self, method: str, url: URL, body: Body | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """``method`` on ``url`` (a GET, a DELETE: the Batch API's reads); the whole 2xx answer, anything else raises."""
        for attempt in (1, 2):
            try:
                async with self._client().request(method, url, data=body, headers=headers, allow_redirects=False) as response:
                    answer = await response.read()
                break
            except TRANSPORT_ERRORS as exc:
                if attempt == 1 and _closed_before_sent(exc, body):
                    continue
                raise self._transport_error(exc) from None
        if response.status >= 300:
            raise self.error_from_response(response.status, answer, response.headers)
        return response, answer

    async def open(
        self, url: URL, body: Body, headers: Mapping[str, str] | None = None, event_stream: bool = True
    ) -> aiohttp.ClientResponse:
        """Post ``body`` for an event stream; the response, once its status is 2xx and its type an event stream.

        ``event_stream=False``: any 2xx answer, its body to be read as it arrives (speech audio).
        """
        wanted = STREAM_HEADERS if event_stream else _ANY_BODY_HEADERS
        for attempt in (1, 2):
            try:
                response = await self._client().post(
                    url, data=body, headers={**wanted, **headers} if headers else wanted, timeout=self._stream_timeout,
                    allow_redirects=False,
                )  # fmt: skip
                break
            except TRANSPORT_ERRORS as exc:
                if attempt == 1 and _closed_before_sent(exc, body):
                    continue
                raise self._transport_error(exc) from None
        try:
            if response.status >= 300:
                answer = await response.read()
                raise self.error_from_response(response.status, answer, response.headers)
            if event_stream and not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise UpstreamProtocolError(
                    f"provider '{self.name}' answered a stream request without an event stream", provider=self.name
                )
        except TRANSPORT_ERRORS as exc:
            response.close()
            raise self._transport_error(exc) from None
        except BaseException:
            response.close()
            raise
        return response

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop that runs it.
        if self._session is None:
            config = self._config
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=config.max_connections, limit_per_host=0, keepalive_timeout=config.keepalive_timeout
                ),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=config.connect_timeout, sock_read=config.timeout),
                raise_for_status=False,
            )
        return self._session

    def _transport_error(self, exc: BaseException) -> ProviderError:
        logger.warning("provider %s: %s: %s", self.name, type(exc).__name__, exc)
        if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
            return UpstreamUnreachable(f"provider '{self.name}' is unreachable", provider=self.name)
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"provider '{self.name}' did not answer in time", provider=self.name)
        return UpstreamUnreachable(f"provider '{self.name}' dropped the connection", provider=self.name)


def _closed_before_sent(exc: BaseException, body: Body | None) -> bool:
    """The request was written to a pooled connection the upstream had already closed, so it never read it whole:
    sending it again on a new connection cannot answer it twice. Two signs: EPIPE (the upstream closed an idle
    keep-alive connection as this request took it) and aiohttp's failure to write the body at all. Only a body
    that can be sent again (bytes) is."""
    if not isinstance(exc, aiohttp.ClientOSError) or isinstance(body, AsyncIterable):
        return False
    return exc.errno == errno.EPIPE or (exc.strerror or "").startswith("Can not write request body")


def stream_interrupted(provider: str, exc: BaseException) -> StreamInterrupted:
    """A transport failure in the middle of a stream, as the StreamInterrupted the stream contract names."""
    cause = "stalled" if isinstance(exc, TimeoutError) else "broke"
    logger.warning("provider %s: stream %s: %s", provider, cause, type(exc).__name__)
    return StreamInterrupted(f"the stream from provider '{provider}' {cause} before it finished", provider=provider)


async def release(response: aiohttp.ClientResponse, finished: bool) -> None:
    """Give a stream's connection back: to the pool once the stream finished, else closed."""
    if not finished:
        response.close()  # an unfinished body cannot be reused: drop the connection
        return
    # Read the body's end (the chunked terminator follows the last event) so the
    # connection goes back to the pool: a TLS connection is costly to reopen.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_DRAIN_SECONDS):
            await response.content.read()
    response.release()
