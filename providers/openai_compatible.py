"""The adapter for any upstream that speaks OpenAI's HTTP API.

Bodies are passed through as bytes: the gateway neither re-encodes an
upstream's answer nor drops fields it does not know. The session, the
timeouts, redirects refused and transport failures are the HTTP layer's
(``providers/http_upstream.py``), shared with the Anthropic adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from providers.base import UpstreamRequest, UpstreamResponse
from providers.batch_api import UpstreamBatches
from providers.config import HostedProviderConfig
from providers.errors import (
    EndpointNotOffered,
    StreamInterrupted,
    UpstreamProtocolError,
)
from providers.http_upstream import (
    TRANSPORT_ERRORS,
    Body,
    HTTPUpstream,
    release,
    stream_interrupted,
)
from providers.media import (
    MediaStream,
    MultipartBody,
    is_multipart,
    media_usage,
    requested_usage,
)
from providers.params import adapt, dropped_header
from providers.sse import DONE, SSEDecoder
from providers.usage import answer_texts, count_usage, reported_usage, responses_usage
from providers.wire import (
    MEDIA_ENDPOINTS,
    Door,
    Endpoint,
    RequestTimings,
    Usage,
    usage_requested,
)

logger = logging.getLogger(__name__)

# Parameter maps are about generation parameters: chat and completions bodies.
_MAPPED_ENDPOINTS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})
# A Responses stream sends no [DONE]: one of these events, carrying the whole response, is its last.
RESPONSES_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAICompatibleProvider(HTTPUpstream):
    def __init__(self, name: str, config: HostedProviderConfig) -> None:
        super().__init__(name, config)
        upstream = self._upstream
        self._preset = upstream.preset
        self._urls = {endpoint: URL(f"{upstream.base_url}/{endpoint.value}") for endpoint in Endpoint}
        self._responses_url = URL(f"{upstream.base_url}/responses")

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if request.endpoint in MEDIA_ENDPOINTS:
            return await self._send_media(request)
        url, payload, headers = self._prepare(request)
        response, body = await self.post(url, orjson.dumps(payload), request.propagated or None)
        try:
            answer = orjson.loads(body)  # a 2xx the client's SDK cannot parse is a failure another deployment may not have
        except orjson.JSONDecodeError:
            logger.warning("provider %s: a %d answer whose body is not JSON", self.name, response.status)
            raise UpstreamProtocolError(
                f"provider '{self.name}' answered with a body that is not JSON", provider=self.name
            ) from None
        if request.door is Door.RESPONSES:  # the client's own Responses request: its answer goes back as it is
            return UpstreamResponse(status=response.status, body=body, headers=headers, usage=responses_usage(answer))
        usage = reported_usage(answer)
        if usage is None and request.endpoint is not Endpoint.MODERATIONS:
            usage = await count_usage(request.endpoint, payload, answer_texts(answer))
        return UpstreamResponse(status=response.status, body=body, headers=headers, usage=usage)

    async def open_stream(self, request: UpstreamRequest) -> EventStream | MediaStream:
        if request.endpoint in MEDIA_ENDPOINTS:
            return await self._open_media(request)
        url, payload, headers = self._prepare(request)
        response = await self.open(url, orjson.dumps(payload), request.propagated or None)
        native = request.door is Door.RESPONSES
        return EventStream(
            response, self.name, headers, request.endpoint, payload, usage_requested(request.payload),
            final_events=RESPONSES_FINAL_EVENTS if native else frozenset(),
        )  # fmt: skip

    def offers(self, endpoint: Endpoint) -> bool:
        return endpoint in self._preset.endpoints

    async def _send_media(self, request: UpstreamRequest) -> UpstreamResponse:
        """Audio or images: the answer is JSON, text or binary, passed on with its content type (docs/media.md)."""
        url, payload, headers = self._prepare(request)
        body, sent = _media_body(payload, request.propagated)
        response, answer = await self.post(url, body, sent)
        content_type = response.headers.get("content-type", "application/octet-stream")
        usage = media_usage(request.endpoint, payload, answer, content_type)
        return UpstreamResponse(response.status, answer, {**headers, "content-type": content_type}, usage)

    async def _open_media(self, request: UpstreamRequest) -> MediaStream:
        """Speech audio, or a transcription's events, relayed as they arrive."""
        url, payload, headers = self._prepare(request)
        body, sent = _media_body(payload, request.propagated)
        response = await self.open(url, body, sent, event_stream=False)
        content_type = response.headers.get("content-type", "application/octet-stream")
        return MediaStream(
            response, self.name, {**headers, "content-type": content_type}, requested_usage(request.endpoint, payload),
            events=content_type.startswith("text/event-stream"),
        )  # fmt: skip

    def speaks(self, door: Door) -> bool:
        return door in self._preset.native_doors

    def batches(self) -> UpstreamBatches | None:
        """Its own Batch API, where its preset has one (``batch: {mode: native}``, docs/batches.md)."""
        if self._preset.batch_discount is None:
            return None
        upstream = self._upstream
        return UpstreamBatches(self, upstream.base_url, upstream.api_version if upstream.url_style == "azure" else None)

    def _prepare(self, request: UpstreamRequest) -> tuple[URL, dict[str, Any], dict[str, str]]:
        """Where to send ``request``, its body as this provider takes it, and headers for the client."""
        endpoint = request.endpoint
        if endpoint not in self._preset.endpoints:
            raise EndpointNotOffered(endpoint.value, self.name)
        payload: dict[str, Any] = request.payload
        if request.door is Door.RESPONSES:
            return self._responses_url, payload, {}
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


def _media_body(payload: dict[str, Any], propagated: Mapping[str, str]) -> tuple[Body, dict[str, str]]:
    """A media request's body and its headers: multipart/form-data when it carries a file, else JSON."""
    if is_multipart(payload):
        form = MultipartBody(payload)
        return form, {**propagated, **form.headers}
    return orjson.dumps(payload), dict(propagated)


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
        final_events: frozenset[str] = frozenset(),
    ) -> None:
        self.headers = headers
        self._final_events = final_events  # a stream in an API without [DONE] ends with one of these
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
                    if self._finished:
                        return
        except TRANSPORT_ERRORS as exc:
            raise stream_interrupted(self._provider_name, exc) from None
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
            if isinstance(event, dict) and event.get("type") in self._final_events:
                self._finished = True
                self._reported = responses_usage(event.get("response"))
            # Usage, from the same parse: the reported chunk, or the text to count (chat and completions only).
            elif isinstance(event, dict) and not self._final_events:
                if event.get("usage") is not None:
                    self._reported = reported_usage(event) or self._reported
                if event.get("choices"):
                    self._texts += answer_texts(event)
                if self._identity is None:
                    self._identity = (event.get("id"), event.get("model"), event.get("object"))
        return events

    async def aclose(self) -> None:
        try:
            await release(self._response, self._finished)
        finally:
            # After the client has its last byte. A stream that sent events is counted
            # for what it used, cut short or not; one that failed before any was retried.
            if self._identity is not None:
                await self._count_usage()
