"""The adapter's translation, with httpx.MockTransport standing in for the network."""

from __future__ import annotations

import httpx
import orjson
import pytest

from providers import Endpoint, ProviderConfig, UpstreamRequest
from providers.errors import StreamInterrupted, UpstreamProtocolError, UpstreamRejected, UpstreamTimeout, UpstreamUnreachable
from providers.openai_compatible import OpenAICompatibleProvider

KEY = "sk-secret-key-42"


def make_provider(handler) -> OpenAICompatibleProvider:  # type: ignore[no-untyped-def]
    config = ProviderConfig(type="custom", base_url="http://upstream.test/v1/", api_key=KEY, headers={"x-team": "a"})
    return OpenAICompatibleProvider("up", config, transport=httpx.MockTransport(handler))


def chat(**payload) -> UpstreamRequest:  # type: ignore[no-untyped-def]
    return UpstreamRequest(Endpoint.CHAT, {"model": "m", "messages": [], **payload})


async def test_request_shape_and_passthrough_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b'{"id": "x", "unknown_field": 1}')

    provider = make_provider(handler)
    response = await provider.send(chat(top_k=3))
    assert response.body == b'{"id": "x", "unknown_field": 1}'
    request = seen[0]
    assert str(request.url) == "http://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-team"] == "a"
    assert orjson.loads(request.content) == {"model": "m", "messages": [], "top_k": 3}


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ConnectError("refused"), UpstreamUnreachable),
        (httpx.ConnectTimeout("slow connect"), UpstreamUnreachable),
        (httpx.ReadTimeout("slow read"), UpstreamTimeout),
        (httpx.RemoteProtocolError("peer closed"), UpstreamUnreachable),
    ],
)
async def test_transport_failures(exc: Exception, cls: type) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(cls) as caught:
        await make_provider(handler).send(chat())
    assert caught.value.provider == "up"


async def test_echoed_key_is_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": f"bad key {KEY} given"}})

    with pytest.raises(UpstreamRejected) as caught:
        await make_provider(handler).send(chat())
    assert KEY not in caught.value.message
    assert caught.value.message == "bad key [redacted] given"


async def test_stream_yields_events_until_done() -> None:
    body = b'data: {"n":1}\n\n: ping\n\ndata: {"n":2}\n\ndata: [DONE]\n\n'

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "text/event-stream"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    stream = await make_provider(handler).open_stream(chat(stream=True))
    assert [event async for event in stream] == [b'{"n":1}', b'{"n":2}']
    await stream.aclose()


async def test_stream_without_done_is_interrupted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b'data: {"n":1}\n\n')

    stream = await make_provider(handler).open_stream(chat(stream=True))
    events = []
    with pytest.raises(StreamInterrupted):
        async for event in stream:
            events.append(event)
    assert events == [b'{"n":1}']


async def test_stream_answered_with_json_is_a_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "not a stream"})

    with pytest.raises(UpstreamProtocolError):
        await make_provider(handler).open_stream(chat(stream=True))
