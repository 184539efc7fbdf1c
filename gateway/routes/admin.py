"""``POST /admin/reload``: read providers.yaml again and serve it, without a restart (gateway/reload/)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.http.responses import json_response
from gateway.keys.admin import require_admin_key
from gateway.keys.keyring import KeyRing
from gateway.reload.generation import Reload

NO_ADMIN_KEY = (
    "Reloading the configuration over HTTP needs an admin key, and none is configured: set `server.admin_keys` "
    "(or send the process SIGHUP)."
)


def admin_routes(keys: KeyRing, reload: Reload) -> APIRouter:
    admin = APIRouter(tags=["admin"])

    @admin.post("/admin/reload")
    async def reload_config(request: Request) -> Response:
        """Read the config file again, validate it, and swap it in; requests in flight finish on the old one."""
        require_admin_key(keys, request.scope["headers"], none_configured=NO_ADMIN_KEY)
        return json_response(await reload())

    return admin
