"""``GET /status``: a live page of the gateway's state; ``GET /status.json``: the same figures as JSON.

``server.status_page`` says who may read them: ``public`` anyone who can
reach the gateway, ``admin`` (the default) admin keys only, ``off`` nobody
(404, as for any unknown URL). The key is checked as gateway/keys/admin.py
does, a Basic auth password too: the 401 asks the browser for it, and the
browser sends it again with the page's own polls of ``/status.json``.

The page's style and script are inline, allowed by a nonce in its own
Content-Security-Policy, which allows nothing else: no other script, no
frame, no form, requests to this origin only.
"""

from __future__ import annotations

import secrets
from typing import Literal

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from gateway.http.responses import json_response
from gateway.keys.admin import require_admin_key
from gateway.keys.keyring import KeyRing
from gateway.ledger import LedgerWriter
from gateway.routes.status_figures import status_figures
from gateway.routes.status_page import render_page
from gateway.routing.table import ModelTable

POLL_SECONDS = 3.0
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOT_CACHED = {"Cache-Control": "no-store"}
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
