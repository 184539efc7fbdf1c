"""The adapter against scripted upstreams on real loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import orjson
import pytest

from providers import Endpoint, HostedProviderConfig, UpstreamRequest
from providers.errors import (
    StreamInterrupted,
    UpstreamProtocolError,
    UpstreamRedirected,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from providers.openai_compatible import OpenAICompatibleProvider
from tests.support.fakes.scripted import Answer, DroppingServer, ScriptedUpstream
from tests.support.servers import ServedApp

KEY = "sk-secret-key-42"
MakeProvider = Callable[..., OpenAICompatibleProvider]
SSE = [(b"content-type", b"text/event-stream")]


@pytest.fixture()
def upstream() -> Iterator[tuple[ScriptedUpstream, ServedApp]]:
    scripted = ScriptedUpstream(script=lambda request: Answer(chunks=[b"{}"]))
    with ServedApp(scripted) as served:
        yield scripted, served


@pytest.fixture()
async def make_provider() -> AsyncIterator[MakeProvider]:
    made: list[OpenAICompatibleProvider] = []

    def make(base_url: str, **overrides: object) -> OpenAICompatibleProvider:
        config = HostedProviderConfig(type="custom", base_url=base_url, api_key=KEY, headers={"x-team": "a"}, **overrides)
        made.append(OpenAICompatibleProvider("up", config))
        return made[-1]

    yield make
    for provider in made:
        await provider.aclose()


def chat(**payload: object) -> UpstreamRequest:
    return UpstreamRequest(Endpoint.CHAT, {"model": "m", "messages": [], **payload})


async def test_request_shape_and_passthrough_body(upstream: tuple[ScriptedUpstream, ServedApp], make_provider: MakeProvider) -> None:
    scripted, served = upstream
    scripted.script = lambda request: Answer(chunks=[b'{"id": "x", ', b'"unknown_field": 1}'])
    provider = make_provider(f"{served.url}/v1/")
    response = await provider.send(chat(top_k=3))
    assert response.body == b'{"id": "x", "unknown_field": 1}'
    seen = scripted.seen[0]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == f"Bearer {KEY}"
    assert seen["headers"]["x-team"] == "a"
    assert seen["headers"]["content-type"] == "application/json"
    assert orjson.loads(seen["body"]) == {"model": "m", "messages": [], "top_k": 3}


async def test_unreachable_and_timeout(upstream: tuple[ScriptedUpstream, ServedApp], make_provider: MakeProvider) -> None:
    scripted, served = upstream
    refused = make_provider("http://127.0.0.1:9/v1")
    with pytest.raises(UpstreamUnreachable) as caught:
        await refused.send(chat())
    assert caught.value.provider == "up"

    scripted.script = lambda request: Answer(delay=1.0, chunks=[b"{}"])
    impatient = make_provider(f"{served.url}/v1", timeout=0.2)
    with pytest.raises(UpstreamTimeout):
        await impatient.send(chat())


async def test_dropped_connection_is_unreachable(make_provider: MakeProvider) -> None:
    with DroppingServer() as server:
        provider = make_provider(f"http://127.0.0.1:{server.port}/v1")
        with pytest.raises(UpstreamUnreachable) as caught:
            await provider.send(chat())
        assert "dropped the connection" in caught.value.message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("auth", ["bearer", "api-key"])
async def test_redirects_are_never_followed(
    upstream: tuple[ScriptedUpstream, ServedApp], make_provider: MakeProvider, status: int, auth: str
) -> None:
    """A 3xx is an error naming the redirect; the other origin never hears from us, with a key or without."""
    scripted, served = upstream
    elsewhere = ScriptedUpstream(script=lambda request: Answer(chunks=[b"{}"]))
    with ServedApp(elsewhere) as other:
        location = f"{other.url}/v1/chat/completions?token=abc"
        scripted.script = lambda request: Answer(status=status, headers=[(b"location", location.encode())])
        provider = make_provider(f"{served.url}/v1", auth=auth)
        with pytest.raises(UpstreamRedirected) as sent:
            await provider.send(chat())
        with pytest.raises(UpstreamRedirected) as streamed:
            await provider.open_stream(chat(stream=True))
    assert elsewhere.seen == []
    for caught in (sent, streamed):
        assert caught.value.status_code == 502 and caught.value.code == "upstream_redirect"
        assert f"HTTP {status}, a redirect to {other.url}/v1/chat/completions;" in caught.value.message
        assert "token" not in caught.value.message  # a query may carry a token: not repeated


async def test_stream_yields_events_until_done(upstream: tuple[ScriptedUpstream, ServedApp], make_provider: MakeProvider) -> None:
    scripted, served = upstream
    chunks = [b'data: {"n":1}\n\n: ping\n\ndata: {"n"', b':2}\n\ndata: [DONE]\n\n']
    scripted.script = lambda request: Answer(headers=SSE, chunks=chunks)
    provider = make_provider(f"{served.url}/v1")
    stream = await provider.open_stream(chat(stream=True))
    events = [event async for batch in stream for event in batch]
    assert events == [b'{"n":1}', b'{"n":2}']
    await stream.aclose()
    assert scripted.seen[0]["headers"]["accept"] == "text/event-stream"


async def test_stream_without_done_is_interrupted(upstream: tuple[ScriptedUpstream, ServedApp], make_provider: MakeProvider) -> None:
    scripted, served = upstream
    scripted.script = lambda request: Answer(headers=SSE, chunks=[b'data: {"n":1}\n\n'])
    provider = make_provider(f"{served.url}/v1")
    stream = await provider.open_stream(chat(stream=True))
    events = []
    with pytest.raises(StreamInterrupted):
        async for batch in stream:
            events.extend(batch)
    await stream.aclose()
    assert events == [b'{"n":1}']


async def test_stream_answered_with_json_is_a_protocol_error(upstream: tuple[ScriptedUpstream, ServedApp], make_provider: MakeProvider) -> None:
    scripted, served = upstream
    scripted.script = lambda request: Answer(headers=[(b"content-type", b"application/json")], chunks=[b"{}"])
    provider = make_provider(f"{served.url}/v1")
    with pytest.raises(UpstreamProtocolError):
        await provider.open_stream(chat(stream=True))


async def test_stream_error_status_is_a_plain_error(upstream: tuple[ScriptedUpstream, ServedApp], make_provider: MakeProvider) -> None:
    scripted, served = upstream
    body = orjson.dumps({"error": {"message": "no", "type": "invalid_request_error", "code": "context_length_exceeded"}})
    scripted.script = lambda request: Answer(status=400, headers=[(b"content-type", b"application/json")], chunks=[body])
    provider = make_provider(f"{served.url}/v1")
    with pytest.raises(UpstreamRejected) as caught:
        await provider.open_stream(chat(stream=True))
    assert caught.value.code == "context_length_exceeded"
