"""A provider adapter behind the openai SDK's HTTP: how the in-process client speaks another protocol (anthropic).

``AdapterTransport`` answers the SDK's requests with the gateway's own
adapter (``providers.registry.build_provider``), so a request is translated
once, in one place; ``SyncAdapterTransport`` runs it for the sync SDK on an
event loop of its own.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import orjson

from providers.base import Provider, UnsupportedPolicy, UpstreamRequest, UpstreamStream
from providers.errors import (
    EndpointNotOffered,
    OpenAIError,
    ProviderError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from providers.presets import FORWARDED_HEADERS
from providers.redact import redact
from providers.sse import DONE_EVENT, encode_event
from providers.wire import Endpoint, Header, usage_requested

T = TypeVar("T")


class AdapterTransport(httpx.AsyncBaseTransport):
    """The SDK's HTTP, answered in this process by a provider adapter: how the client speaks another protocol.

    The adapter is the gateway's own (``build_provider``), so the request is
    translated once, in one place. Its answer reaches the SDK as an OpenAI
    server's response would, so the SDK parses, retries and raises as for
    any other provider::

        a chat.completion               the body, 200 (the adapter's headers, such as dropped params)
        a stream                        its events as SSE, then [DONE]; an error after the start
                                        as an error event, as the gateway relays one (the SDK raises APIError)
        UpstreamUnreachable / Timeout   httpx.ConnectError / ReadTimeout: the SDK's APIConnectionError / APITimeoutError
        another ProviderError           its status and OpenAI body: the SDK's class for that status (RateLimitError, ...);
                                        retry-after, and x-should-retry from the error's ``retryable``

    The parameter map ran in ``_Targets.arguments`` already, as for every
    provider (a rejected parameter raises before any I/O); the adapter's own
    pass finds nothing left to change. Keys are masked in every error body and
    message: the client has no gateway's redaction layer around it. The async
    client runs the adapter on the caller's event loop (the first that uses
    it, as the SDK's own connection pool does).
    """

    def __init__(self, provider: Provider, unsupported_params: UnsupportedPolicy, secrets: tuple[str, ...] = ()) -> None:
        self._provider = provider
        self._unsupported_params = unsupported_params
        self._secrets = secrets

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.answer(request, await request.aread())

    async def answer(self, request: httpx.Request, body: bytes) -> httpx.Response:
        payload = orjson.loads(body) if body else {}
        endpoint = _endpoint(request.url.path)
        if endpoint is None:
            return self._error(request, EndpointNotOffered(request.url.path.rsplit("/", 1)[-1], self._provider.name))
        headers = {name: value for name, value in request.headers.items() if name in FORWARDED_HEADERS}
        upstream_request = UpstreamRequest(endpoint, payload, unsupported_params=self._unsupported_params, headers=headers)
        try:
            if payload.get("stream"):
                stream = await self._provider.open_stream(upstream_request)
                frames = _Frames(stream, usage_requested(payload), _read_timeout(request), self._mask)
                return httpx.Response(200, headers={**stream.headers, "content-type": "text/event-stream"}, stream=frames, request=request)
            answer = await self._provider.send(upstream_request)
        except UpstreamUnreachable as error:
            raise httpx.ConnectError(self._mask_text(error.message), request=request) from None
        except UpstreamTimeout as error:
            raise httpx.ReadTimeout(self._mask_text(error.message), request=request) from None
        except ProviderError as error:
            return self._error(request, error)
        return httpx.Response(answer.status, headers={**answer.headers, "content-type": "application/json"}, content=answer.body, request=request)

    async def aclose(self) -> None:
        await self._provider.aclose()

    def _error(self, request: httpx.Request, error: ProviderError) -> httpx.Response:
        headers = {**error.headers, "content-type": "application/json", Header.SHOULD_RETRY: str(error.retryable).lower()}
        if error.retry_after is not None:
            headers[Header.RETRY_AFTER] = f"{error.retry_after:g}"
        return httpx.Response(error.status_code, headers=headers, content=self._mask(error.to_json()), request=request)

    def _mask_text(self, text: str) -> str:
        return redact(text, self._secrets)

    def _mask(self, data: bytes) -> bytes:
        return self._mask_text(data.decode()).encode()


def _endpoint(path: str) -> Endpoint | None:
    # Endpoint lists chat/completions before completions, so a chat path is never taken for a completions one.
    return next((endpoint for endpoint in Endpoint if path.endswith(f"/{endpoint.value}")), None)


def _read_timeout(request: httpx.Request) -> float | None:
    """The SDK's read timeout: an adapter's stream has none of its own (the gateway times streams itself)."""
    timeout = request.extensions.get("timeout")
    return timeout.get("read") if isinstance(timeout, dict) else None


class _Frames(httpx.AsyncByteStream):
    """An adapter's stream as the bytes of server-sent events, framed as the gateway frames them (``OpenAIFraming``).

    ``next_frame()`` gives one read's events, then the end once ([DONE],
    after a usage chunk the adapter estimated, or an error event), then None.
    """

    def __init__(self, stream: UpstreamStream, include_usage: bool, read_timeout: float | None, mask: Callable[[bytes], bytes]) -> None:
        self._stream = stream
        self._events = aiter(stream)
        self._include_usage = include_usage
        self._read_timeout = read_timeout
        self._mask = mask
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (frame := await self.next_frame()) is not None:
            yield frame

    async def next_frame(self) -> bytes | None:
        if self._ended:
            return None
        try:
            async with asyncio.timeout(self._read_timeout):
                events = await anext(self._events, None)
        except TimeoutError:
            self._ended = True
            raise httpx.ReadTimeout(f"the stream sent nothing for {self._read_timeout:g} s") from None
        except OpenAIError as error:
            self._ended = True
            return encode_event(self._mask(error.to_json()))
        if events is not None:
            return b"".join([encode_event(data) for data in events])
        self._ended = True
        usage_chunk = self._stream.usage_chunk() if self._include_usage else None
        return DONE_EVENT if usage_chunk is None else encode_event(usage_chunk) + DONE_EVENT

    async def aclose(self) -> None:
        if isinstance(self._events, AsyncGenerator):  # left suspended when the reader stopped early
            await self._events.aclose()
        await self._stream.aclose()


class SyncAdapterTransport(httpx.BaseTransport):
    """:class:`AdapterTransport` for the sync SDK: the adapter is async, so it runs on an event loop of its own.

    The loop runs on a daemon thread, so the sync client works from any thread,
    and from code that already runs a loop (a notebook). It stops, once the
    adapter's connections are closed, on ``close()`` or when the client is collected.
    """

    def __init__(self, transport: AdapterTransport) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_forever, args=(loop,), name="switchyard-client-adapter", daemon=True)
        thread.start()
        self._transport = transport
        self._loop = loop
        self._stop = weakref.finalize(self, _stop_loop, loop, thread, transport.aclose)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.run(self._transport.answer(request, request.read()))
        if isinstance(response.stream, _Frames):
            return httpx.Response(response.status_code, headers=response.headers, stream=_SyncFrames(response.stream, self), request=request)
        return response

    @property
    def closed(self) -> bool:
        return not self._stop.alive

    def close(self) -> None:
        self._stop()

    def run(self, step: Coroutine[Any, Any, T]) -> T:
        if self.closed:  # the loop is stopping or gone: nothing would ever run this
            step.close()
            raise httpx.ReadError("the client was closed")
        return asyncio.run_coroutine_threadsafe(step, self._loop).result()


class _SyncFrames(httpx.SyncByteStream):
    def __init__(self, frames: _Frames, transport: SyncAdapterTransport) -> None:
        self._frames = frames
        self._transport = transport  # kept alive while a stream is open: its loop serves the stream

    def __iter__(self) -> Iterator[bytes]:
        while (frame := self._transport.run(self._frames.next_frame())) is not None:
            yield frame

    def close(self) -> None:
        if not self._transport.closed:  # else the adapter's connections, this stream's among them, are closed already
            self._transport.run(self._frames.aclose())


# How long closing a sync client waits for its adapter's connections to close.
_STOP_SECONDS = 2.0


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, aclose: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Close the adapter on its loop, then stop the loop; wait for both unless called on that loop's own thread."""
    if loop.is_closed():
        return
    closed = asyncio.run_coroutine_threadsafe(aclose(), loop)
    closed.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))
    if threading.current_thread() is not thread:
        thread.join(_STOP_SECONDS)
