"""Liveness and readiness endpoints."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from .model_list import json_response
from .router import Router


def health_routes(router: Router) -> APIRouter:
    health = APIRouter(tags=["health"])

    @health.get("/health")
    async def liveness() -> Response:
        """The process is up and serving HTTP."""
        return json_response({"status": "ok"})

    @health.get("/health/ready")
    async def readiness() -> Response:
        """Each provider's state, from the outcome of recent calls (no probe is sent)."""
        providers = {
            name: {
                "state": state.state,
                "successes": state.successes,
                "failures": state.failures,
                "consecutive_failures": state.consecutive_failures,
                "last_success_at": state.last_success_at,
                "last_failure_at": state.last_failure_at,
                "last_error": state.last_error,
            }
            for name, state in router.health.items()
        }
        return json_response({"status": "ready", "providers": providers})

    @health.get("/ping")
    async def ping() -> Response:
        return PlainTextResponse("pong")

    return health
