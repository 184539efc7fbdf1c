"""An upstream that echoes the key it was sent everywhere a client could read it, and a server that records visitors.

:class:`LeakyUpstream` (ASGI, served on 127.0.0.1) takes the key from
``Authorization: Bearer`` or ``api-key`` (Azure's style) and puts it, for
every answer, in an ``x-echo-key`` response header and, by model name:

    error-401, error-400   an error whose message, type, param and code all hold the key
    echo                   a 200 that holds the key (in a stream: in every event)
    error-event            a stream whose second event is an error event holding the key
    redirect-302, -307     a redirect to :class:`Doorstep` on another port, the key in the query

Chat completions and embeddings answer alike (embeddings never stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .asgi import read_request, serve_lifespan


@dataclass
class Doorstep:
    """Answers every request with a chat completion and records its headers: whoever comes here was redirected."""

    visits: list[dict[str, str]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        headers, _ = await read_request(scope, receive)
        self.visits.append(headers)
        await _send(send, 200, _completion("followed a redirect"), [])


@dataclass
class LeakyUpstream:
    redirect_to: str = ""  # the Doorstep's URL

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        headers, body = await read_request(scope, receive)
        key = headers.get("api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        payload = orjson.loads(body)
        model, stream = payload["model"], payload.get("stream") is True
        echo = [(b"x-echo-key", key.encode())]
        if model.startswith("error-") and model != "error-event":
            leak = {"message": f"Incorrect API key provided: {key}", "type": key, "param": key, "code": key}
            await _send(send, int(model.removeprefix("error-")), {"error": leak}, echo)
        elif model.startswith("redirect-"):
            location = f"{self.redirect_to}{scope['path']}?key={key}".encode()
            await _send(send, int(model.removeprefix("redirect-")), {}, [*echo, (b"location", location)])
        elif scope["path"].endswith("/embeddings"):
            await _send(send, 200, _embeddings(key), echo)
        elif not stream:
            await _send(send, 200, _completion(f"the key is {key}"), echo)
        else:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), *echo]})  # fmt: skip
            events = [_chunk(f"the key is {key}"), _chunk(key)]
            if model == "error-event":
                events[1] = {"error": {"message": f"upstream failed for key {key}", "type": key, "param": key, "code": key}}
            for event in events:
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(event) + b"\n\n", "more_body": True})
            ending = b"" if model == "error-event" else b"data: [DONE]\n\n"  # an upstream that errs stops there
            await send({"type": "http.response.body", "body": ending})


def _completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-leaky", "object": "chat.completion", "created": 1700000000, "model": "leaky",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }  # fmt: skip


def _chunk(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-leaky", "object": "chat.completion.chunk", "created": 1700000000, "model": "leaky",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }  # fmt: skip


def _embeddings(key: str) -> dict[str, Any]:
    return {"object": "list", "model": key, "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}}  # fmt: skip


async def _send(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": orjson.dumps(body)})
