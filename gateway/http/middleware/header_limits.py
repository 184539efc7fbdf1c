"""A request's head within bounds: ``server.max_header_count`` fields, ``server.max_header_bytes`` in all.

uvicorn's httptools protocol takes a head of any size: 100,000 header
fields, or one of 16 MB, reach the app (its h11 protocol stops at 16 KiB,
the default here too). httptools itself only refuses a URL past 64 KiB,
with a plain 400. This check looks at the parsed head, so it costs about a
microsecond per request and keeps such heads from everything behind it
(headers scanned per request, a path quoted in a 404, a log line). It does
not stop the parse: the server has read and split the head before any ASGI
code runs. A reverse proxy in front, or a check in the server's protocol,
bounds that too (docs/security.md).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import HeadersTooLarge, TargetTooLong
from gateway.http.doors import error_body_for
from gateway.http.responses import send_error


class HeaderLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_count: int, max_bytes: int) -> None:
        self.app = app
        self._max_count = max_count
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self._refusal(scope)
            if error is not None:
                await send_error(send, error, error_body_for(scope["path"]))  # /v1/messages: Anthropic's shape
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> HeadersTooLarge | TargetTooLong | None:
        headers = scope["headers"]
        if len(headers) > self._max_count:  # first, before any work per header
            return HeadersTooLarge(f"more than {self._max_count} header fields (server.max_header_count)")
        target = len(scope["raw_path"]) + len(scope["query_string"])
        if target > self._max_bytes:
            return TargetTooLong(self._max_bytes)
        if target + sum(len(name) + len(value) for name, value in headers) > self._max_bytes:
            return HeadersTooLarge(
                f"more than {self._max_bytes} bytes of URL and header fields (server.max_header_bytes)"
            )
        return None
