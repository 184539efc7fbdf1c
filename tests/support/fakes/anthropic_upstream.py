"""A fake of Anthropic's Messages API, served for real on 127.0.0.1 by the tests.

It answers as Anthropic documents (docs.anthropic.com, "Messages", "Streaming
Messages", "Errors"): ``POST /v1/messages`` only; ``x-api-key`` and
``anthropic-version`` required; ``max_tokens`` required; errors as
``{"type": "error", "error": {"type", "message"}, "request_id"}``; a
stream as ``event:`` + ``data:`` pairs, from ``message_start`` to
``message_stop``, with a ``ping`` after the first. Every request is
recorded. A test scripts the answers, one per request, in order::

    fake.script(Reply.error(429, "rate_limit_error", retry_after="0"), Reply.text("hi"))

With nothing scripted, a request gets a text answer quoting its last user message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .asgi import read_request, serve_lifespan

VERSION = "2023-06-01"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: content blocks with a stop reason and usage, or an error status."""

    blocks: tuple[dict[str, Any], ...] = ()
    stop_reason: str = "end_turn"
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 12, "output_tokens": 5})
    status: int = 200
    error_type: str | None = None
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    # Streaming only: an `error` event in place of the events after this many, or the connection dropped there.
    stream_error_after: int | None = None
    stream_break_after: int | None = None

    @staticmethod
    def text(text: str, **fields: Any) -> Reply:
        return Reply(blocks=({"type": "text", "text": text},), **fields)

    @staticmethod
    def tool_use(name: str, tool_input: dict[str, Any], tool_id: str = "toolu_01A", text: str | None = None, **fields: Any) -> Reply:
        blocks = ({"type": "text", "text": text},) if text else ()
        blocks += ({"type": "tool_use", "id": tool_id, "name": name, "input": tool_input},)
        return Reply(blocks=blocks, stop_reason="tool_use", **fields)

    @staticmethod
    def error(status: int, error_type: str, message: str = "", retry_after: str | None = None) -> Reply:
        headers = (("retry-after", retry_after),) if retry_after is not None else ()
        return Reply(status=status, error_type=error_type, message=message or error_type, headers=headers)


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_fake"}


@dataclass
class FakeAnthropic:
    key: str = "sk-ant-test"
    requests: list[dict[str, Any]] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        headers, raw = await read_request(scope, receive)
        body = json.loads(raw) if raw else {}
        self.requests.append({"path": scope["path"], "headers": headers, "body": body})
        refusal = self._refusal(scope, headers, body)
        if refusal is not None:
            await _json(send, *refusal)
            return
        reply = self.replies.pop(0) if self.replies else Reply.text(f"You said: {_last_user_text(body)}")
        if reply.error_type is not None:
            await _json(send, reply.status, error_body(reply.error_type, reply.message), reply.headers)
            return
        message = {
            "id": "msg_fake01", "type": "message", "role": "assistant", "model": body["model"],
            "content": list(reply.blocks), "stop_reason": reply.stop_reason, "stop_sequence": None,
            "usage": reply.usage,
        }  # fmt: skip
        if body.get("stream"):
            await _stream(send, message, reply)
        else:
            await _json(send, 200, message)

    def _refusal(self, scope: dict[str, Any], headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if (scope["method"], scope["path"]) != ("POST", "/v1/messages"):
            return 404, error_body("not_found_error", f"Not found: {scope['method']} {scope['path']}")
        if headers.get("x-api-key") != self.key:
            return 401, error_body("authentication_error", "invalid x-api-key")
        if "anthropic-version" not in headers:
            return 400, error_body("invalid_request_error", "anthropic-version: header is required")
        if not isinstance(body.get("max_tokens"), int):
            return 400, error_body("invalid_request_error", "max_tokens: Field required")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            return 400, error_body("invalid_request_error", f"{unknown[0]}: Extra inputs are not permitted")
        return None


# The request fields of the Messages API (the SDK's MessageCreateParams).
_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p", "top_k",
    "metadata", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers", "context_management",
})  # fmt: skip


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            return " ".join(block.get("text", "") for block in content if block.get("type") == "text")
    return ""


def _events(message: dict[str, Any], reply: Reply) -> list[tuple[str, dict[str, Any]]]:
    """The stream Anthropic sends for ``message``: text in word-sized deltas, tool input in JSON fragments."""
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**reply.usage, "output_tokens": 1}}  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start}), ("ping", {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}))
            words = block["text"].split(" ")
            pieces = [word + " " for word in words[:-1]] + [words[-1]]
            events += [("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "text_delta", "text": piece}}) for piece in pieces]  # fmt: skip
        else:
            opening = {**block, "input": {}}
            events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}))
            encoded = json.dumps(block["input"])
            fragments = [encoded[i : i + 7] for i in range(0, len(encoded), 7)]
            events += [("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "input_json_delta", "partial_json": piece}}) for piece in ["", *fragments]]  # fmt: skip
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta_usage = {"output_tokens": reply.usage["output_tokens"]}
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                                     "usage": delta_usage}))  # fmt: skip
    events.append(("message_stop", {"type": "message_stop"}))
    return events


async def _stream(send: Any, message: dict[str, Any], reply: Reply) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"request-id", b"req_fake")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for position, (name, data) in enumerate(_events(message, reply)):
        if position == reply.stream_break_after:
            raise ConnectionResetError("fake Anthropic drops the stream")  # uvicorn closes the socket
        if position == reply.stream_error_after:
            name, data = "error", error_body("overloaded_error", "Overloaded")
            await send({"type": "http.response.body", "body": _frame(name, data), "more_body": False})
            return
        await send({"type": "http.response.body", "body": _frame(name, data), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _json(send: Any, status: int, content: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
    encoded = [(name.encode(), value.encode()) for name, value in headers]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"request-id", b"req_fake"), *encoded]})  # fmt: skip
    await send({"type": "http.response.body", "body": json.dumps(content).encode()})
