"""Every whole JSON response the gateway writes: answers and OpenAI-shaped errors.

``send_json``/``send_error`` write on a plain ASGI ``send`` (the relay and
the middleware); ``json_response``/``error_response`` are the same bodies
as Starlette responses, for the FastAPI routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Send

from providers import OpenAIError

JSON_CONTENT_TYPE = (b"content-type", b"application/json")


async def send_error(send: Send, error: OpenAIError, render: Callable[[OpenAIError], bytes] = OpenAIError.to_json) -> None:
    """``error`` with its status and headers; ``render`` writes its body (another API's door has its own shape)."""
    extra = [(name.encode(), value.encode()) for name, value in error.headers.items()]
    await send_json(send, error.status_code, render(error), extra)


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    # content-length, not chunked: clients and proxies handle a sized body best.
    start = [JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, headers=headers, media_type="application/json")


def error_response(error: OpenAIError, body: Callable[[OpenAIError], bytes] = OpenAIError.to_json) -> Response:
    """``error`` as an answer; ``body``: how it is written (OpenAI's shape, or a door's: ``error_body_for``)."""
    return Response(body(error), status_code=error.status_code, headers=error.headers, media_type="application/json")
