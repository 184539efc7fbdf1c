"""Writing a whole JSON response on a plain ASGI ``send``: answers and OpenAI-shaped errors."""

from __future__ import annotations

from starlette.types import Send

from providers import OpenAIError

JSON_CONTENT_TYPE = (b"content-type", b"application/json")


async def send_error(send: Send, error: OpenAIError) -> None:
    extra = [(name.encode(), value.encode()) for name, value in error.headers.items()]
    await send_json(send, error.status_code, error.to_json(), extra)


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    # content-length, not chunked: clients and proxies handle a sized body best.
    start = [JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
