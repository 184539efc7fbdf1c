"""Cancel a request's work the moment its client goes away.

Once the request body has been read, a watcher waits for the client's
``http.disconnect``. If it comes before the response is complete, the task
running the request is cancelled, and the cancellation runs through the
upstream call (aiohttp closes that connection) wherever it is waiting: for
a non-streamed answer, for the first event, or between two events.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class CancelOnDisconnectMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_task = asyncio.current_task()
        assert request_task is not None
        watcher: asyncio.Task[Message] | None = None
        response_complete = False
        client_gone = False

        async def wait_for_disconnect() -> Message:
            nonlocal client_gone
            message = await receive()
            # The server also answers receive() with a disconnect once the
            # response is complete; only an early one means the client left.
            if message["type"] == "http.disconnect" and not response_complete:
                client_gone = True
                request_task.cancel()
            return message

        async def receive_then_watch() -> Message:
            nonlocal watcher
            if watcher is not None:
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.get_running_loop().create_task(wait_for_disconnect())
            return message

        async def send_tracking_completion(message: Message) -> None:
            nonlocal response_complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_complete = True
            await send(message)

        try:
            await self.app(scope, receive_then_watch, send_tracking_completion)
        except asyncio.CancelledError:
            # Swallow only our own cancellation; a shutdown's must go on.
            if not client_gone or request_task.uncancel() > 0:
                raise
            logger.info("client disconnected; request %s cancelled", scope.get("state", {}).get("request_id"))
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
