"""``x-request-id`` on every response: the client's own, or a new one."""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.telemetry.logs import REQUEST_ID
from providers.wire import Header

_REQUEST_ID = Header.REQUEST_ID.encode()

# A client's id is echoed only when it is short and plain, so it can go into
# logs and headers as it is.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")



class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_id = next((value for name, value in scope["headers"] if name == _REQUEST_ID), None)
        if raw_id is None or not _CLIENT_ID.fullmatch(raw_id):
            raw_id = os.urandom(16).hex().encode()
        request_id = raw_id.decode()
        scope.setdefault("state", {})["request_id"] = request_id
        REQUEST_ID.set(request_id)  # each request runs in its own task, so its own context
        header = (_REQUEST_ID, raw_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
