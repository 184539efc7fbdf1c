"""The adapter for Anthropic's Messages API: chat completions in, ``POST /v1/messages``, chat completions out.

The HTTP side (pooled session, timeouts, redirects refused, transport
failures) is ``HTTPUpstream``'s, as for every hosted provider; the
translation is ``translate.py``'s pure functions. What is left here is
order: the parameter map, the request translated, the answer translated,
and a stream's events translated one by one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
from yarl import URL

from providers.anthropic.translate import (
    ChunkTranslator,
    anthropic_error,
    chat_completion,
    messages_request,
    usage_of,
)
from providers.base import UpstreamRequest, UpstreamResponse
from providers.config import HostedProviderConfig
from providers.errors import (
    EndpointNotOffered,
    ProviderError,
    StreamInterrupted,
    UpstreamProtocolError,
    UpstreamRejected,
)  # fmt: skip
from providers.http_upstream import (
    TRANSPORT_ERRORS,
    HTTPUpstream,
    release,
    stream_interrupted,
)
from providers.params import adapt, dropped_header
from providers.sse import SSEDecoder
from providers.wire import Door, Endpoint, RequestTimings, Usage, usage_requested

logger = logging.getLogger(__name__)


class AnthropicProvider(HTTPUpstream):
    def __init__(self, name: str, config: HostedProviderConfig) -> None:
        super().__init__(name, config)
        self._preset = self._upstream.preset
        self._url = URL(f"{self._upstream.base_url}/v1/messages")

    def offers(self, endpoint: Endpoint) -> bool:
        return endpoint in self._preset.endpoints

    def speaks(self, door: Door) -> bool:
        return door in self._preset.native_doors

    def error_from_response(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        return anthropic_error(status, body, headers, provider=self.name)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        body, headers, upstream_headers = self._prepare(request)
        body.pop("stream", None)
        _, answer = await self.post(self._url, orjson.dumps(body), upstream_headers)
        try:
            message = orjson.loads(answer)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            logger.warning("provider %s: a 2xx answer that is not a Messages API object", self.name)
            raise UpstreamProtocolError(f"provider '{self.name}' answered with a body that is not a message", provider=self.name)
        if request.door is Door.MESSAGES:  # the client's own Messages request: its answer goes back as it is
            return UpstreamResponse(status=200, body=answer, headers=headers, usage=_usage(message.get("usage")))
        completion = chat_completion(message)
        return UpstreamResponse(status=200, body=orjson.dumps(completion), headers=headers, usage=_usage(message.get("usage")))

    async def open_stream(self, request: UpstreamRequest) -> MessageStream:
        body, headers, upstream_headers = self._prepare(request)
        body["stream"] = True
        response = await self.open(self._url, orjson.dumps(body), upstream_headers)
        translator = ChunkTranslator(body.get("model"), usage_requested(request.payload))
        return MessageStream(response, self.name, headers, translator, native=request.door is Door.MESSAGES)

    def _prepare(self, request: UpstreamRequest) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
        """The Messages API body, the headers for the client, and the headers to send upstream.

        Those are the client's forwarded ones and the gateway's trace context.
        """
        if request.endpoint not in self._preset.endpoints:
            raise EndpointNotOffered(request.endpoint.value, self.name)
        forwarded = {name: request.headers[name] for name in self._preset.forwarded_headers if name in request.headers}
        forwarded.update(request.propagated)
        if request.door is Door.MESSAGES:
            return dict(request.payload), {}, forwarded
        payload, dropped = adapt(request.payload, self._preset.params, request.unsupported_params, self.name)
        try:
            body = messages_request(payload)
        except UpstreamRejected as error:
            error.provider = self.name
            raise
        return body, dropped_header(dropped), forwarded


def _usage(reported: Any) -> Usage | None:
    """Anthropic's usage as the gateway counts it (cache reads and writes are prompt tokens)."""
    if not isinstance(reported, dict) or "input_tokens" not in reported:
        return None
    usage = usage_of(reported)
    written = reported.get("cache_creation_input_tokens")
    return Usage(
        usage["prompt_tokens"], usage["completion_tokens"], cached_tokens=usage["prompt_tokens_details"]["cached_tokens"],
        cache_write_tokens=written if isinstance(written, int) else 0,
    )  # fmt: skip


class MessageStream:
    """A Messages API event stream, relayed as chat.completion.chunk events; see ``UpstreamStream``.

    Anthropic reports usage in the stream itself (``message_start`` and
    ``message_delta``): a client that asked for it gets it in a last chunk
    made from those, never an estimate. ``native``: the client spoke the
    Messages API, so its events go out as they came (still read for usage).
    """

    timings: tuple[RequestTimings, ...] = ()

    def __init__(
        self, response: aiohttp.ClientResponse, provider_name: str, headers: dict[str, str], translator: ChunkTranslator,
        *, native: bool = False,
    ) -> None:  # fmt: skip
        self.headers = headers
        self._response = response
        self._provider_name = provider_name
        self._translator = translator
        self._native = native

    @property
    def usage(self) -> Usage | None:
        return _usage(self._translator.usage)

    @property
    def usage_reported(self) -> bool:
        return "input_tokens" in self._translator.usage

    def usage_chunk(self) -> bytes | None:
        return None  # the usage chunk is translated from the stream, before it ends

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        decoder = SSEDecoder()
        translator = self._translator
        try:
            async for data in self._response.content.iter_any():
                chunks: list[bytes] = []
                failure: ProviderError | None = None
                for event in decoder.feed(data):
                    try:
                        translated = self._translated(event)
                        chunks += [event] if self._native else [orjson.dumps(chunk) for chunk in translated]
                    except ProviderError as error:  # what came before the error is relayed first
                        failure = error
                        break
                if chunks:
                    yield chunks
                if failure is not None:
                    raise failure
                if translator.finished:
                    return
        except TRANSPORT_ERRORS as exc:
            raise stream_interrupted(self._provider_name, exc) from None
        raise StreamInterrupted(
            f"provider '{self._provider_name}' ended the stream before message_stop", provider=self._provider_name
        )

    def _translated(self, data: bytes) -> list[dict[str, Any]]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            logger.warning("provider %s: stream sent an event that is not a JSON object", self._provider_name)
            raise StreamInterrupted(
                f"the stream from provider '{self._provider_name}' sent a malformed event", provider=self._provider_name
            )
        try:
            return self._translator.feed(event)
        except StreamInterrupted as error:
            error.provider = self._provider_name
            logger.warning("provider %s: %s", self._provider_name, error.message)
            raise

    async def aclose(self) -> None:
        await release(self._response, self._translator.finished)
