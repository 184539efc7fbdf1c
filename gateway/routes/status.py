"""``GET /status``: a live page of the gateway's state; ``GET /status.json``: the same figures as JSON.

``server.status_page`` says who may read them: ``public`` anyone who can
reach the gateway, ``admin`` (the default) admin keys only, ``off`` nobody
(404, as for any unknown URL). They are not under ``/v1/``, so the key is
checked here. A browser opening a page sends no Bearer header, so the admin
key is also taken as the password of HTTP Basic auth (any user name): the
401 asks the browser for it, and the browser sends it again with the page's
own polls of ``/status.json``.

The page's style and script are inline, allowed by a nonce in its own
Content-Security-Policy, which allows nothing else: no other script, no
frame, no form, requests to this origin only.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Iterable
from typing import Literal

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from gateway.errors import AdminKeyRequired, InvalidApiKey
from gateway.http.responses import json_response
from gateway.keys.keyring import KeyRing, presented_key
from gateway.ledger import LedgerWriter
from gateway.routes.status_figures import status_figures
from gateway.routes.status_page import render_page
from gateway.routing.table import ModelTable
from providers import OpenAIError

POLL_SECONDS = 3.0
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOT_CACHED = {"Cache-Control": "no-store"}
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Switchyard status"'}
NO_ADMIN_KEYS = (
    "The status page needs an admin key and none is configured: set `server.admin_keys`, "
    "or `server.status_page: public` to show it to anyone who can reach the gateway."
)


def status_routes(
    table: ModelTable, ledger: LedgerWriter | None, keys: KeyRing, access: Literal["public", "admin", "off"]
) -> APIRouter:
    """The two routes, or none when ``access`` is ``off``."""
    status = APIRouter(tags=["status"], include_in_schema=False)  # a page for people, not part of the API
    if access == "off":
        return status

    @status.get("/status")
    async def status_page(request: Request) -> Response:
        if access == "admin":
            require_admin_key(keys, request.scope["headers"], NO_ADMIN_KEYS)
        nonce = secrets.token_urlsafe(16)
        page = render_page(await status_figures(table, ledger), nonce, POLL_SECONDS)
        headers = {
            **NOT_CACHED,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY.format(nonce=nonce),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        return HTMLResponse(page, headers=headers)

    @status.get("/status.json")
    async def status_json(request: Request) -> Response:
        if access == "admin":
            require_admin_key(keys, request.scope["headers"], NO_ADMIN_KEYS)
        return json_response(await status_figures(table, ledger), headers=NOT_CACHED)

    return status


def require_admin_key(keys: KeyRing, headers: Iterable[tuple[bytes, bytes]], none_configured: str | None = None) -> None:
    """Raise unless an admin key is presented: as the API takes keys, or as a Basic auth password.

    401 (with a Basic challenge) for no key or an unknown one, 403 for
    another key, and 403 when no admin key is configured at all (``none_configured`` says what to do then).
    """
    if not keys.has_admin_keys:
        if none_configured is None:
            raise AdminKeyRequired(configured=False)
        raise OpenAIError(
            none_configured, status_code=AdminKeyRequired.status_code, error_type=AdminKeyRequired.error_type,
            code=AdminKeyRequired.code,
        )  # fmt: skip
    headers = list(headers)
    token = presented_key(headers) or basic_password(headers)
    try:
        if token is None:
            raise InvalidApiKey(presented=False)
        # identify() reads a header as a client sent it (latin-1, as presented_key decoded it).
        key = keys.identify([(b"authorization", b"Bearer " + token.encode("latin-1"))])
        if key is None:  # an open gateway: an unknown key is no error on /v1/, but it is no admin key
            raise InvalidApiKey(presented=True)
    except InvalidApiKey as error:
        error.headers = {**error.headers, **BASIC_CHALLENGE}
        raise
    if not key.admin:
        raise AdminKeyRequired(configured=True)


def basic_password(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The password of an ``Authorization: Basic`` header (latin-1, as other keys are read), if there is one."""
    for name, value in headers:
        if name != b"authorization":
            continue
        scheme, _, encoded = value.partition(b" ")
        if scheme.lower() != b"basic":
            continue
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("latin-1")
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None
