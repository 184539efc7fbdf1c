"""No configured key leaves the gateway: every response is masked on its way out.

The outermost layer (``gateway/app.py``) wraps ``send``, so one mechanism
covers every byte any layer writes: header values, JSON bodies,
error fields of every kind, each event of a stream, FastAPI's answers.
What is masked is ``GatewayConfig.secrets`` (provider keys, client and
admin keys, database and Redis URLs), in the forms ``SecretMask`` knows,
all but those too short to be secrets (``MIN_MASKED_LENGTH``).

Masks keep the length (``[redacted]****``), so ``Content-Length`` needs no
rewrite: ``http.response.start`` goes out as soon as it is sent, and a
sized body (or a HEAD answer, with its length and no body) stays true.

A key split across two writes is caught by holding back, until the next
write, the end of a write that could begin one. The gateway's own writes
end in ``}`` or a blank line, so in practice nothing is held.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from providers.redact import SecretMask


class RedactSecretsMiddleware:
    def __init__(self, app: ASGIApp, mask: SecretMask) -> None:
        self.app = app
        self._mask = mask

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mask = self._mask
        held = b""  # the end of the last write, while it may be the start of a secret

        async def send_masked(message: Message) -> None:
            nonlocal held
            kind = message["type"]
            if kind == "http.response.body":
                body = mask.mask(held + message.get("body", b""))
                if message.get("more_body", False):
                    keep = mask.unsafe_tail(body)
                    body, held = (body[:-keep], body[-keep:]) if keep else (body, b"")
                else:
                    held = b""
                message["body"] = body
            elif kind == "http.response.start":
                message["headers"] = _masked_headers(mask, message.get("headers", ()))
            await send(message)

        await self.app(scope, receive, send_masked)


def _masked_headers(mask: SecretMask, headers: Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[bytes, bytes]]:
    # Values only: every header name is the gateway's own, never an upstream's words. One scan over
    # all values, since a header almost never holds a key; a match across two (joined by "\n", which no
    # header holds) would only take the slow path for nothing.
    if not mask.finds(b"\n".join([value for _, value in headers])):
        return headers
    return [(name, mask.mask(value)) for name, value in headers]
