"""Loopback servers whose every answer a test scripts: for the adapter's edge cases."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .asgi import read_request, serve_lifespan


@dataclass
class Answer:
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    delay: float = 0.0  # seconds before the status line


@dataclass
class ScriptedUpstream:
    """An ASGI app answering each request with ``script(request_dict)``."""

    script: Callable[[dict[str, Any]], Answer]
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        headers, body = await read_request(scope, receive)
        request = {"path": scope["path"], "headers": headers, "body": body}
        self.seen.append(request)
        answer = self.script(request)
        await asyncio.sleep(answer.delay)
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        for chunk in answer.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class DroppingServer:
    """Accepts a connection, reads the request, and closes without answering."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)

    def __enter__(self) -> DroppingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()


