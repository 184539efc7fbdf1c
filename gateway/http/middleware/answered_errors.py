"""An error the framework already answered ends there, so the connection serves on.

Starlette's outermost layer answers an unhandled exception with the app's
500 handler (OpenAI's error shape, logged once by it) and then raises it
again "so the server can log it": uvicorn then logs a second traceback and
closes the connection under the client's next request. Around FastAPI
(the routes that read a store: /v1/usage, /v1/responses/{id}), this layer
drops such an exception once its answer has been sent whole; one raised
before or during an answer goes on to the server, which closes the
connection as it must.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AnsweredErrorsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def watch(message: Message) -> None:
            nonlocal answered
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if not answered:
                raise
