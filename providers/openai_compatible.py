"""The adapter for any upstream that speaks OpenAI's HTTP API.

One pooled ``httpx.AsyncClient`` per provider keeps connections alive across
requests. Bodies are passed through as bytes: the gateway neither re-encodes
an upstream's answer nor drops fields it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import orjson

from .base import Endpoint, UpstreamRequest, UpstreamResponse
from .config import ProviderConfig
from .errors import (
    ProviderError,
    StreamInterrupted,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_from_response,
)
from .redact import redact
from .sse import DONE, SSEDecoder

logger = logging.getLogger(__name__)

# How long to wait for the end of a stream's body after [DONE].
_DRAIN_SECONDS = 0.5
_STREAM_HEADERS = {"accept": "text/event-stream", "accept-encoding": "identity"}


class OpenAICompatibleProvider:
    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        base_url = config.resolved_base_url
        assert base_url is not None  # ProviderConfig guarantees it
        self._urls = {endpoint: httpx.URL(f"{base_url}/{endpoint.value}") for endpoint in Endpoint}
        api_key = config.api_key.get_secret_value() if config.api_key else None
        self._secrets = (api_key,) if api_key else ()
        headers = {"content-type": "application/json", **config.headers}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_keepalive_connections,
            ),
            transport=transport,
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        http_request = self._build(request, headers=None)
        try:
            response = await self._client.send(http_request)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 300:
            raise self._upstream_error(response, response.content)
        return UpstreamResponse(status=response.status_code, body=response.content)

    async def open_stream(self, request: UpstreamRequest) -> EventStream:
        http_request = self._build(request, headers=_STREAM_HEADERS)
        try:
            response = await self._client.send(http_request, stream=True)
            if response.status_code >= 300:
                body = await response.aread()
                await response.aclose()
                raise self._upstream_error(response, body)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamProtocolError(
                f"provider '{self.name}' answered a stream request without an event stream", provider=self.name
            )
        return EventStream(response, self.name)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _build(self, request: UpstreamRequest, headers: dict[str, str] | None) -> httpx.Request:
        return self._client.build_request(
            "POST", self._urls[request.endpoint], content=orjson.dumps(request.payload), headers=headers
        )

    def _upstream_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        error = error_from_response(response.status_code, body, response.headers, provider=self.name)
        error.message = redact(error.message, self._secrets)
        return error

    def _transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        logger.warning("provider %s: %s: %s", self.name, type(exc).__name__, redact(str(exc), self._secrets))
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return UpstreamUnreachable(f"provider '{self.name}' is unreachable", provider=self.name)
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"provider '{self.name}' did not answer in time", provider=self.name)
        return UpstreamUnreachable(f"provider '{self.name}' dropped the connection", provider=self.name)


class EventStream:
    """An upstream event stream whose status was 2xx; see ``UpstreamStream``."""

    def __init__(self, response: httpx.Response, provider_name: str) -> None:
        self._response = response
        self._provider_name = provider_name
        self._chunks = response.aiter_bytes()
        self._finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        decoder = SSEDecoder()
        try:
            async for chunk in self._chunks:
                for data in decoder.feed(chunk):
                    if data == DONE:
                        self._finished = True
                        return
                    yield data
        except httpx.HTTPError as exc:
            cause = "stalled" if isinstance(exc, httpx.TimeoutException) else "broke"
            logger.warning("provider %s: stream %s: %s", self._provider_name, cause, type(exc).__name__)
            raise StreamInterrupted(
                f"the stream from provider '{self._provider_name}' {cause} before it finished",
                provider=self._provider_name,
            ) from None
        raise StreamInterrupted(
            f"provider '{self._provider_name}' ended the stream before [DONE]", provider=self._provider_name
        )

    async def aclose(self) -> None:
        if self._finished:
            # Read the body's end (the chunked terminator follows [DONE]) so the
            # connection goes back to the pool: a TLS connection is costly to reopen.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_DRAIN_SECONDS):
                    async for _ in self._chunks:
                        pass
        await self._response.aclose()
