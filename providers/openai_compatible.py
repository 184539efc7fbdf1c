"""The adapter for any upstream that speaks OpenAI's HTTP API.

One pooled ``aiohttp.ClientSession`` per provider keeps connections alive
across requests. Bodies are passed through as bytes: the gateway neither
re-encodes an upstream's answer nor drops fields it does not know.

Why aiohttp and not httpx: on the hot path the HTTP client is the largest
single cost. Against the same local upstream, httpx's AsyncClient spent
about 0.9 ms of CPU per request and aiohttp about 0.15 ms (aiohttp parses
HTTP in C, httpx's h11 in Python); the whole gateway's budget is 1 ms. The
gateway measured 1.31 ms per request on httpx and 0.52 ms on aiohttp
(docs/performance.md).

Redirects are never followed (``allow_redirects=False`` on every call):
aiohttp drops ``Authorization`` on a cross-origin redirect but not other
auth headers (Azure's ``api-key``), and a POST turned into a GET by a 302
would come back as someone else's 200. A 3xx is ``UpstreamRedirected``.

Nothing here masks keys: what an upstream echoes (in an error's fields, a
stream event, a 200 body) is masked on its way out of the gateway, in one
place (``gateway/http/middleware/redaction.py``), and in log lines by the log formatter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from providers.base import UpstreamRequest, UpstreamResponse
from providers.config import HostedProviderConfig
from providers.errors import (
    EndpointNotOffered,
    ProviderError,
    StreamInterrupted,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_from_response,
)
from providers.params import adapt, dropped_header
from providers.sse import DONE, SSEDecoder
from providers.usage import answer_texts, count_usage, reported_usage
from providers.wire import Endpoint, RequestTimings, Usage, usage_requested

logger = logging.getLogger(__name__)

# How long to wait for the end of a stream's body after [DONE].
_DRAIN_SECONDS = 0.5
_STREAM_HEADERS = {"accept": "text/event-stream", "accept-encoding": "identity"}
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
# Parameter maps are about generation parameters: chat and completions bodies.
_MAPPED_ENDPOINTS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})


class OpenAICompatibleProvider:
    def __init__(self, name: str, config: HostedProviderConfig) -> None:
        self.name = name
        upstream = config.resolve()
        self._upstream = upstream
        self._preset = upstream.preset
        self._urls = {endpoint: URL(f"{upstream.base_url}/{endpoint.value}") for endpoint in Endpoint}
        self._headers = {"content-type": "application/json", **upstream.headers, **upstream.auth_headers()}
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        # A stream's reads are not timed here: a per-read timer is re-armed on
        # every chunk (about 9% of a stream's CPU), and the gateway watches
        # streams with one timer each (gateway/routing/stream_guard.py).
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout, sock_read=None)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        url, payload, headers = self._prepare(request)
        try:
            async with self._client().post(url, data=orjson.dumps(payload), allow_redirects=False) as response:
                body = await response.read()
        except _TRANSPORT_ERRORS as exc:
            raise self._transport_error(exc) from None
        if response.status >= 300:
            raise error_from_response(response.status, body, response.headers, provider=self.name)
        try:
            answer = orjson.loads(body)  # a 2xx the client's SDK cannot parse is a failure another deployment may not have
        except orjson.JSONDecodeError:
            logger.warning("provider %s: a %d answer whose body is not JSON", self.name, response.status)
            raise UpstreamProtocolError(
                f"provider '{self.name}' answered with a body that is not JSON", provider=self.name
            ) from None
        usage = reported_usage(answer)
        if usage is None and request.endpoint is not Endpoint.MODERATIONS:
            usage = await count_usage(request.endpoint, payload, answer_texts(answer))
        return UpstreamResponse(status=response.status, body=body, headers=headers, usage=usage)

    async def open_stream(self, request: UpstreamRequest) -> EventStream:
        url, payload, headers = self._prepare(request)
        try:
            response = await self._client().post(
                url, data=orjson.dumps(payload), headers=_STREAM_HEADERS, timeout=self._stream_timeout,
                allow_redirects=False,
            )  # fmt: skip
        except _TRANSPORT_ERRORS as exc:
            raise self._transport_error(exc) from None
        try:
            if response.status >= 300:
                body = await response.read()
                raise error_from_response(response.status, body, response.headers, provider=self.name)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise UpstreamProtocolError(
                    f"provider '{self.name}' answered a stream request without an event stream", provider=self.name
                )
        except _TRANSPORT_ERRORS as exc:
            response.close()
            raise self._transport_error(exc) from None
        except BaseException:
            response.close()
            raise
        return EventStream(response, self.name, headers, request.endpoint, payload, usage_requested(request.payload))

    def offers(self, endpoint: Endpoint) -> bool:
        return endpoint in self._preset.endpoints

    def _prepare(self, request: UpstreamRequest) -> tuple[URL, dict[str, Any], dict[str, str]]:
        """Where to send ``request``, its body as this provider takes it, and headers for the client."""
        endpoint = request.endpoint
        if endpoint not in self._preset.endpoints:
            raise EndpointNotOffered(endpoint.value, self.name)
        payload: dict[str, Any] = request.payload
        headers: dict[str, str] = {}
        if self._preset.params and endpoint in _MAPPED_ENDPOINTS:
            payload, dropped = adapt(payload, self._preset.params, request.unsupported_params, self.name)
            headers = dropped_header(dropped)
        if self._upstream.url_style == "azure":
            return self._azure_url(endpoint, str(payload.get("model", ""))), payload, headers
        return self._urls[endpoint], payload, headers

    def _azure_url(self, endpoint: Endpoint, deployment: str) -> URL:
        # Azure names the deployment in the path; the body's model is not used to route.
        path = f"{self._upstream.base_url}/openai/deployments/{quote(deployment, safe='')}/{endpoint.value}"
        return URL(path).with_query({"api-version": self._upstream.api_version or ""})

    state = "ready"  # an HTTP upstream's health is the router's to learn, from its answers

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


class EventStream:
    """An upstream event stream whose status was 2xx; see ``UpstreamStream``."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        provider_name: str,
        headers: dict[str, str],
        endpoint: Endpoint,
        payload: dict[str, Any],
        usage_chunk_wanted: bool,
    ) -> None:
        self.headers = headers
        self._response = response
        self._provider_name = provider_name
        self._finished = False
        self._endpoint = endpoint
        self._payload = payload
        self._reported: Usage | None = None
        self._estimated: Usage | None = None  # counted when the stream ends, if the upstream reported none
        self._usage_chunk_wanted = usage_chunk_wanted  # the client's include_usage (a preset may not forward it)
        self._texts: list[tuple[int, str]] = []  # generated text per choice, for an estimate
        self._identity: tuple[Any, Any, Any] | None = None  # the first event's id, model and object

    @property
    def usage_reported(self) -> bool:
        return self._reported is not None

    timings: tuple[RequestTimings, ...] = ()  # an HTTP upstream's own timings are not ours to know

    def usage_chunk(self) -> bytes | None:
        """A final chunk carrying the estimated usage, in the stream's own shape; None if the upstream sent one."""
        usage = self.usage
        if usage is None or self._reported is not None:
            return None
        chunk_id, model, kind = self._identity or (None, self._payload.get("model"), "chat.completion.chunk")
        return orjson.dumps(
            {"id": chunk_id, "object": kind, "created": int(time.time()), "model": model, "choices": [],
             "usage": usage.to_openai()}
        )  # fmt: skip

    @property
    def usage(self) -> Usage | None:
        return self._reported or self._estimated

    async def _count_usage(self) -> None:
        """Estimate the usage the upstream did not report; a long prompt is counted off the event loop."""
        if self._reported is None and self._estimated is None:
            self._estimated = await count_usage(self._endpoint, self._payload, self._texts)

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        decoder = SSEDecoder()
        try:
            async for chunk in self._response.content.iter_any():
                events = decoder.feed(chunk)
                if DONE in events:
                    self._finished = True
                    if events[0] != DONE:
                        yield self._checked(events[: events.index(DONE)])
                    if self._usage_chunk_wanted:
                        await self._count_usage()  # for usage_chunk(), which goes before [DONE]
                    return
                if events:
                    yield self._checked(events)
        except _TRANSPORT_ERRORS as exc:
            cause = "stalled" if isinstance(exc, TimeoutError) else "broke"
            logger.warning("provider %s: stream %s: %s", self._provider_name, cause, type(exc).__name__)
            raise StreamInterrupted(
                f"the stream from provider '{self._provider_name}' {cause} before it finished",
                provider=self._provider_name,
            ) from None
        raise StreamInterrupted(
            f"provider '{self._provider_name}' ended the stream before [DONE]", provider=self._provider_name
        )

    def _checked(self, events: list[bytes]) -> list[bytes]:
        """``events``, if each is JSON: a client's SDK would choke on a broken one, so the stream ends here instead."""
        for data in events:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                logger.warning("provider %s: stream sent an event that is not JSON", self._provider_name)
                raise StreamInterrupted(
                    f"the stream from provider '{self._provider_name}' sent a malformed event", provider=self._provider_name
                ) from None
            # Usage, from the same parse: the reported chunk, or the text to count.
            if isinstance(event, dict):
                if event.get("usage") is not None:
                    self._reported = reported_usage(event) or self._reported
                if event.get("choices"):
                    self._texts += answer_texts(event)
                if self._identity is None:
                    self._identity = (event.get("id"), event.get("model"), event.get("object"))
        return events

    async def aclose(self) -> None:
        try:
            if not self._finished:
                self._response.close()  # an unfinished body cannot be reused: drop the connection
                return
            # Read the body's end (the chunked terminator follows [DONE]) so the
            # connection goes back to the pool: a TLS connection is costly to reopen.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_DRAIN_SECONDS):
                    await self._response.content.read()
            self._response.release()
        finally:
            # After the client has its last byte. A stream that sent events is counted
            # for what it used, cut short or not; one that failed before any was retried.
            if self._identity is not None:
                await self._count_usage()
