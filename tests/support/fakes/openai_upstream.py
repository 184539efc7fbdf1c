"""A fake OpenAI-compatible upstream, served for real on 127.0.0.1 by the tests.

It answers like OpenAI's API (URL shape, Bearer auth, error bodies, SSE
framing ending in ``data: [DONE]``) and records what it received. The model
name in a request chooses a behaviour, so a test picks one through the
gateway's config:

    any name            a normal answer that quotes the last user message
    status-<code>       that HTTP status with OpenAI's error body
    plain-<code>        that HTTP status with a text/plain body
    retry-after-<s>     429 with ``Retry-After: <s>``
    slow-<seconds>      waits, then answers (a disconnect while waiting is recorded)
    endless-stream      streams a chunk every 50 ms until the client leaves
    broken-stream       streams two chunks, then drops the connection
    json-for-stream     answers a stream request with plain JSON
    tool-caller         with ``tools``, after a user turn: calls the first tool with {"city": <the user's text>}

``POST /v1/responses`` answers as OpenAI's Responses API does (a Response
quoting the last user text; a stream of typed events with ``event:`` lines,
ending with ``response.completed`` and no ``[DONE]``); ``status-<code>`` works there too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .asgi import read_request, serve_lifespan

Scope = dict[str, Any]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client_port: int


@dataclass
class FakeOpenAI:
    api_key: str | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    # time.monotonic() of each client disconnect seen by a streaming answer
    disconnects: list[float] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        headers, body = await read_request(scope, receive)
        payload = orjson.loads(body) if body else None
        self.requests.append(RecordedRequest(scope["method"], scope["path"], headers, payload, scope["client"][1]))

        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            given = headers.get("authorization", "").removeprefix("Bearer ")
            # Echo the key it was given, as careless upstreams do: the gateway must mask it.
            await _json(send, 401, _error(f"Incorrect API key provided: {given}.", "invalid_request_error", "invalid_api_key"))
            return
        route = (scope["method"], scope["path"])
        if route == ("GET", "/v1/models"):
            await _json(send, 200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]})
        elif route == ("POST", "/v1/chat/completions"):
            await self._completion(payload, send, receive, chat=True)
        elif route == ("POST", "/v1/completions"):
            await self._completion(payload, send, receive, chat=False)
        elif route == ("POST", "/v1/embeddings"):
            await _json(send, 200, _embeddings(payload))
        elif route == ("POST", "/v1/moderations"):
            await _json(send, 200, _moderation(payload))
        elif route == ("POST", "/v1/responses"):
            await _responses(payload, send)
        else:
            await _json(send, 404, _error(f"Invalid URL ({scope['method']} {scope['path']})", "invalid_request_error"))

    async def _completion(self, payload: dict[str, Any], send: Any, receive: Any, *, chat: bool) -> None:
        model = payload["model"]
        kind, _, argument = model.partition("-")
        if kind == "status":
            status = int(argument)
            code = "context_length_exceeded" if status == 400 and "long" in str(payload) else None
            await _json(send, status, _error(f"fake upstream error {status}", "invalid_request_error", code, param="messages"))
            return
        if kind == "plain":
            await _raw(send, int(argument), b"upstream exploded", b"text/plain")
            return
        if kind == "retry" and argument.startswith("after-"):
            retry_after = argument.removeprefix("after-")
            await _raw(send, 429, orjson.dumps(_error("slow down", "rate_limit_error")), b"application/json", [(b"retry-after", retry_after.encode())])
            return
        if kind == "slow":
            if await self._client_left_within(float(argument), receive):
                return
        if model == "tool-caller" and chat and payload.get("tools") and payload["messages"][-1].get("role") == "user":
            await _tool_call(payload, send)
            return
        text = _reply_text(payload, chat)
        if not payload.get("stream"):
            answer = _full_response(model, text, chat)
            if model == "no-usage":  # an upstream that reports no usage: the gateway counts
                del answer["usage"]
            await _json(send, 200, answer)
            return
        if model == "json-for-stream":
            await _json(send, 200, _full_response(model, text, chat))
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        if model == "endless-stream":
            await self._stream_until_disconnect(send, receive, model, chat)
            return
        chunks = _stream_chunks(model, text, chat)
        include_usage = (payload.get("stream_options") or {}).get("include_usage")
        if model == "broken-stream":
            for chunk in chunks[:2]:
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True})
            raise ConnectionResetError("fake upstream drops the stream")  # uvicorn closes the socket
        if include_usage and model != "no-usage":
            chunks.append(_usage_chunk(model, text, chat))
        for chunk in chunks:
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _client_left_within(self, seconds: float, receive: Any) -> bool:
        """Wait up to ``seconds``; True (and recorded) if the client disconnected first."""
        try:
            async with asyncio.timeout(seconds):
                while (await receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            return False
        self.disconnects.append(time.monotonic())
        return True

    async def _stream_until_disconnect(self, send: Any, receive: Any, model: str, chat: bool) -> None:
        async def write_forever() -> None:
            index = 0
            while True:
                chunk = _stream_chunks(model, f"tick{index} ", chat)[1]
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True})
                index += 1
                await asyncio.sleep(0.05)

        writer = asyncio.ensure_future(write_forever())
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnects.append(time.monotonic())
        finally:
            writer.cancel()


async def _tool_call(payload: dict[str, Any], send: Any) -> None:
    name = payload["tools"][0]["function"]["name"]
    arguments = orjson.dumps({"city": payload["messages"][-1].get("content")}).decode()
    call = {"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": arguments}}
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    if not payload.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                  "logprobs": None, "finish_reason": "tool_calls"}
        await _json(send, 200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000,
                                "model": "tool-caller", "choices": [choice], "usage": usage})
        return

    def chunk(delta: dict[str, Any] | None, finish: str | None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                "model": "tool-caller", "choices": choices, **extra}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    half = len(arguments) // 2
    opening = {**call, "index": 0, "function": {"name": name, "arguments": ""}}
    events = [
        chunk({"role": "assistant", "content": None}, None),
        chunk({"tool_calls": [opening]}, None),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]}, None),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}, None),
        chunk({}, "tool_calls"),
    ]
    if (payload.get("stream_options") or {}).get("include_usage"):
        events.append(chunk(None, None, usage=usage))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b"".join(events) + b"data: [DONE]\n\n"})


def _reply_text(payload: dict[str, Any], chat: bool) -> str:
    if chat:
        last = payload["messages"][-1].get("content")
        said = last if isinstance(last, str) else "..."
    else:
        prompt = payload.get("prompt")
        said = prompt if isinstance(prompt, str) else "..."
    return f"You said: {said}"


def _moderation(payload: dict[str, Any]) -> dict[str, Any]:
    """One result per input; anything mentioning "attack" is flagged as violence."""
    inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
    names = ["harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
             "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
             "violence/graphic"]  # fmt: skip

    def result(text: Any) -> dict[str, Any]:
        violent = "attack" in str(text)
        categories = {name: violent and name == "violence" for name in names}
        return {
            "flagged": violent,
            "categories": categories,
            "category_scores": {name: 0.9 if flagged else 0.01 for name, flagged in categories.items()},
            "category_applied_input_types": {name: ["text"] for name in names},
        }

    return {"id": "modr-fake", "model": payload.get("model", "omni-moderation-latest"), "results": [result(t) for t in inputs]}


def _usage(text: str) -> dict[str, int]:
    completion = len(text.split())
    return {"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion}


def _full_response(model: str, text: str, chat: bool) -> dict[str, Any]:
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": model,
                "choices": [choice], "usage": _usage(text), "system_fingerprint": "fp_fake"}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
    return {"id": "cmpl-fake", "object": "text_completion", "created": 1700000000, "model": model,
            "choices": [choice], "usage": _usage(text)}


def _stream_chunks(model: str, text: str, chat: bool) -> list[dict[str, Any]]:
    pieces = [word + " " for word in text.split(" ")]
    pieces[-1] = pieces[-1].rstrip()
    if chat:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return ([chunk({"role": "assistant", "content": ""}, None)]
                + [chunk({"content": piece}, None) for piece in pieces]
                + [chunk({}, "stop")])

    def text_chunk(piece: str, finish: str | None) -> dict[str, Any]:
        return {"id": "cmpl-fake", "object": "text_completion", "created": 1700000000, "model": model,
                "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]}
    return [text_chunk("", None)] + [text_chunk(piece, None) for piece in pieces] + [text_chunk("", "stop")]


def _usage_chunk(model: str, text: str, chat: bool) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1700000000, "model": model, "choices": [], "usage": _usage(text)}


def _embeddings(payload: dict[str, Any]) -> dict[str, Any]:
    inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": [float(len(str(text))), float(i), 0.5, -0.5]}
        for i, text in enumerate(inputs)
    ]
    return {"object": "list", "data": data, "model": payload["model"],
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}


def _error(message: str, error_type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


async def _json(send: Any, status: int, content: Any) -> None:
    await _raw(send, status, orjson.dumps(content), b"application/json")


async def _raw(send: Any, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _responses(payload: dict[str, Any], send: Any) -> Any:
    """OpenAI's Responses API, as its docs show the answer and the stream."""
    kind, _, argument = payload["model"].partition("-")
    if kind == "status":
        return _json(send, int(argument), _error(f"fake upstream error {argument}", "invalid_request_error"))
    items = payload["input"] if isinstance(payload["input"], list) else [{"role": "user", "content": payload["input"]}]
    said = next(item["content"] for item in reversed(items) if item.get("role") == "user")
    text = f"You said: {said if isinstance(said, str) else said[0]['text']}"
    usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
             "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 13}
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = {"id": "msg_fake", "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    response = {"id": "resp_fake_upstream", "object": "response", "created_at": 1, "status": "completed", "error": None,
                "incomplete_details": None, "instructions": payload.get("instructions"), "model": payload["model"],
                "output": [item], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": 1.0,
                "top_p": 1.0, "metadata": {}, "usage": usage}
    if not payload.get("stream"):
        return _json(send, 200, response)

    async def stream() -> None:
        at = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        events = [
            ("response.created", {"response": {**response, "status": "in_progress", "output": [], "usage": None}}),
            ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
            ("response.content_part.added", {**at, "part": {**part, "text": ""}}),
            ("response.output_text.delta", {**at, "delta": text, "logprobs": []}),
            ("response.output_text.done", {**at, "text": text, "logprobs": []}),
            ("response.content_part.done", {**at, "part": part}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": response}),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for number, (name, data) in enumerate(events):
            body = orjson.dumps({"type": name, "sequence_number": number, **data})
            await send({"type": "http.response.body", "body": b"event: " + name.encode() + b"\ndata: " + body + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return stream()
