"""Liveness and readiness endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .balancer import DeploymentState
from .metrics import GatewayMetrics
from .model_list import json_response
from .router import Router


def deployment_status(state: DeploymentState) -> dict[str, Any]:
    breaker = state.breaker
    provider_state = state.deployment.provider.state
    return {
        "provider": state.deployment.provider_name,
        "model": state.deployment.model,
        # loading or failed (a local model), else the breaker's: closed, open (cooling down), half_open (probing)
        "state": breaker.state if provider_state == "ready" else provider_state,
        "cooldown_remaining_s": round(breaker.seconds_until_probe(), 3),
        "in_flight": state.in_flight,
        "latency_ms": None if state.latency is None else round(state.latency * 1000, 1),
        "successes": state.successes,
        "failures": state.failures,
        "last_error": state.last_error,
    }


def health_routes(router: Router, metrics: GatewayMetrics) -> APIRouter:
    health = APIRouter(tags=["health"])

    @health.get("/health")
    async def liveness() -> Response:
        """The process is up and serving HTTP."""
        return json_response({"status": "ok"})

    @health.get("/health/ready")
    async def readiness() -> Response:
        """Each deployment's state, from the outcome of recent calls (no probe is sent)."""
        models = {
            model: [deployment_status(state) for state in states]
            for model, states in router.deployment_states().items()
        }
        loading = any(d["state"] == "loading" for deployments in models.values() for d in deployments)
        # 503 while a local model loads: a load balancer's readiness probe then waits for it.
        if loading:
            return json_response({"status": "loading", "models": models}, status_code=503)
        return json_response({"status": "ready", "models": models})

    @health.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text format: requests, latency, time to first token, attempts, deployments."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @health.get("/ping")
    async def ping() -> Response:
        return PlainTextResponse("pong")

    return health
