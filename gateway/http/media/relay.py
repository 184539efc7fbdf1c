"""The media URLs (``routes.MEDIA_ROUTES``) through the same router, limits and accounting as chat.

For one request::

    read the body (forms.py: a JSON object, or a form with its files spooled; 413 past max_body_bytes)
    check its fields (400 naming the field), admit the key (models, rpm, tpm), hold its dollar budgets
    route it: Router.send, or Router.open_stream for what is relayed as it arrives (the router's
        fallbacks, retries, cooldowns and deadline, as for chat; a spool is sent again on each attempt)
    write the answer with the upstream's content type (JSON, text, audio), or relay its bytes as they come
    count it (Accounting.finish: metrics, the key's limits, the ledger's record in its unit, the webhooks)

Anything else goes to ``fallback``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import (
    InternalError,
    InvalidApiKey,
    InvalidRequest,
    MethodNotAllowed,
)
from gateway.http.media.forms import FormReader, body_chunks, multipart_boundary
from gateway.http.media.routes import MEDIA_ROUTES, MediaRoute
from gateway.http.relay import ESTIMATED_HEADER, routed_headers, usd_text
from gateway.http.responses import send_error
from gateway.http.validation import BodyLimits, check_payload, decode_body
from gateway.keys.accounting import CLIENT_CLOSED_REQUEST, Accounting, Outcome
from gateway.keys.keyring import api_key_of, presented_key
from gateway.routing.deadline import request_timeout
from gateway.routing.router import Router
from providers import OpenAIError, ProviderError
from providers.media import Upload
from providers.wire import Header

if TYPE_CHECKING:
    from gateway.telemetry.tracing import Tracing

logger = logging.getLogger(__name__)

_PROCESS_TIME, _COST = Header.PROCESS_TIME.encode(), Header.COST_USD.encode()


class MediaRelay:
    """POSTs to the media URLs, routed and counted; every other request to ``fallback``."""

    def __init__(
        self, router: Router, accounting: Accounting, limits: BodyLimits, spool_dir: Path, fallback: ASGIApp,
        tracing: Tracing | None = None,
    ) -> None:  # fmt: skip
        self._tracing = tracing
        self._router = router
        self._accounting = accounting
        self._limits = limits
        self._spool_dir = spool_dir
        self._fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = MEDIA_ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self._fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            await send_error(send, MethodNotAllowed(scope["method"], scope["path"], "POST"))
            return
        started = time.perf_counter()
        outcome = Outcome(scope["state"]["request_id"], api_key_of(scope))
        if self._tracing is not None:
            outcome.span = self._tracing.start(scope["headers"], "POST", scope["path"])
        uploads: list[Upload] = []
        try:
            await self._answer(scope, receive, send, route, started, outcome, uploads)
        except asyncio.CancelledError:
            outcome.status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            for upload in uploads:
                upload.close()
            self._accounting.finish(route.endpoint, outcome, started)
            if outcome.span is not None:
                outcome.span.finish(outcome)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, route: MediaRoute, started: float, outcome: Outcome,
        uploads: list[Upload],
    ) -> None:  # fmt: skip
        limit_headers: list[tuple[bytes, bytes]] = []
        try:
            payload = await self._read(scope, receive, route, uploads)
            outcome.model = payload["model"]
            outcome.payload = {name: value for name, value in payload.items() if not isinstance(value, Upload)}
            if outcome.span is not None:
                outcome.span.read(route.endpoint, outcome.payload)
            if outcome.key is not None:
                limit_headers = await self._accounting.admit(outcome.key, payload["model"], outcome.request_id)
                limit_headers += await self._accounting.reserve(outcome, route.endpoint, payload)
            deadline = self._router.deadline(request_timeout(scope["headers"], self._router.default_timeout))
            if route.streams(payload):
                outcome.stream = True
                stream = await self._router.open_stream(route.endpoint, payload, deadline, outcome.request_id, outcome.trace)
                outcome.routed(stream, 200)
                first = time.perf_counter() - started
                self._accounting.first_event(outcome, first)
                headers = routed_headers(stream) + limit_headers + [_process_time(first)]
                try:
                    await _relay_bytes(stream.answer, headers, send, outcome)
                finally:  # a stream cut short is counted for what it used
                    outcome.usage = stream.answer.usage
                return
            routed = await self._router.send(route.endpoint, payload, deadline, outcome.request_id, outcome.trace)
            outcome.routed(routed, routed.answer.status)
            outcome.usage = routed.answer.usage
        except Exception as error:  # _relay_bytes never raises once the answer started, so none has
            outcome.status = await _refuse(send, error, scope["path"])
            return
        headers = routed_headers(routed) + limit_headers + [_process_time(time.perf_counter() - started)]
        if outcome.usage is not None and outcome.usage.estimated:
            headers.append(ESTIMATED_HEADER)
        if (cost := self._accounting.cost(outcome, outcome.usage)) is not None:
            headers.append((_COST, usd_text(cost.usd)))
        body = routed.answer.body
        await send({"type": "http.response.start", "status": routed.answer.status,
                    "headers": [(b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def _read(self, scope: Scope, receive: Receive, route: MediaRoute, uploads: list[Upload]) -> dict[str, Any]:
        """The request's fields, checked: a JSON object, or a form whose files are Uploads (kept in ``uploads``)."""
        chunks = body_chunks(scope, receive, self._limits.max_bytes)
        if not route.multipart:
            payload = decode_body(b"".join([chunk async for chunk in chunks]), self._limits)
            return check_payload(payload, route.request_model)
        if presented_key(scope["headers"]) is None:
            # A web page may POST a form to any origin without a preflight (docs/security.md): a form
            # carries no key header, which a page can send cross-origin only after one. So even an open
            # gateway takes a multipart body only with a key header (any value when no keys are configured).
            raise InvalidApiKey(presented=False)
        boundary = multipart_boundary(scope)
        if boundary is None:
            raise InvalidRequest(
                f"POST {scope['path']} takes a multipart/form-data body (with a boundary).", status_code=415,
                code="unsupported_media_type",
            )  # fmt: skip
        reader = FormReader(boundary, self._limits, self._spool_dir)
        try:
            async for chunk in chunks:
                reader.feed(chunk)
            payload = reader.finish()
        finally:
            uploads += reader.uploads
            reader.close_partial()
        check_payload(payload, route.request_model)
        for name in (*route.files_one_of, *route.files):
            if name in payload and not all(isinstance(v, Upload) for v in _listed(payload[name])):
                raise InvalidRequest(f"'{name}' must be a file part (with a filename), not a text field.", param=name)
        if route.files_one_of and not any(name in payload for name in route.files_one_of):
            raise InvalidRequest(f"Missing required parameter: '{route.files_one_of[0]}'.", param=route.files_one_of[0])
        return payload


def _listed(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


async def _relay_bytes(stream: Any, headers: list[tuple[bytes, bytes]], send: Send, outcome: Outcome) -> None:
    """The upstream's bytes to the client as each read brings them; the stream closed however it ends.

    A stream that breaks once the answer started cannot say so in audio: the
    response is left unfinished (its chunked body never terminated), so the
    client's read fails rather than taking half an answer as whole.
    """
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for chunks in stream:
                for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (OpenAIError, ProviderError) as error:
            logger.warning("media stream broke after its answer started: %s", error.message)
            outcome.status = error.status_code
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await stream.aclose()


async def _refuse(send: Send, error: Exception, path: str) -> int:
    """Answer ``error`` in OpenAI's shape (anything but an OpenAIError is a bug: logged, a 500); its status."""
    if not isinstance(error, OpenAIError):
        logger.error("unexpected error on POST %s", path, exc_info=error)
        error = InternalError()
    await send_error(send, error)
    return error.status_code


def _process_time(seconds: float) -> tuple[bytes, bytes]:
    return (_PROCESS_TIME, f"{seconds:.4f}".encode())
