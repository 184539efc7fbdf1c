"""What every fake upstream does the same way: lifespan, and reading a request."""

from __future__ import annotations

from typing import Any


async def serve_lifespan(receive: Any, send: Any) -> None:
    """Answer startup and shutdown at once: the fakes hold no resources."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def read_request(scope: dict[str, Any], receive: Any) -> tuple[dict[str, str], bytes]:
    """The request's headers (lower-case names) and its whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return {k.decode(): v.decode() for k, v in scope["headers"]}, body
