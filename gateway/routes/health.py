"""Liveness and readiness endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import PlainTextResponse, Response

from gateway.http.responses import json_response
from gateway.routing.balancer import DeploymentState
from gateway.routing.table import ModelTable
from gateway.telemetry.metrics import GatewayMetrics
from providers import LoadsModel


def deployment_status(state: DeploymentState) -> dict[str, Any]:
    breaker = state.breaker
    provider = state.deployment.provider
    provider_state = provider.state
    status = {
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
    if provider_state == "failed" and isinstance(provider, LoadsModel):
        status["load_error"] = provider.error
    return status


def readiness_status(table: ModelTable) -> str:
    """``ready`` only when every model this process loads is loaded; else ``failed`` or ``loading``.

    A failed model keeps the process unready for good: a probe must not send
    it traffic it would answer with 503s.
    """
    states = {provider.state for provider in table.models_loading_here()}
    if states <= {"ready", "sleeping"}:  # an operator put a model to sleep (POST /sleep): its requests fall back
        return "ready"
    return "failed" if "failed" in states else "loading" if "loading" in states else "stopped"


def health_routes(table: ModelTable, metrics: GatewayMetrics, version: str) -> APIRouter:
    health = APIRouter(tags=["health"])

    @health.get("/health")
    async def liveness() -> Response:
        """The process is up and serving HTTP."""
        return json_response({"status": "ok"})

    @health.get("/health/ready")
    async def readiness() -> Response:
        """200 once every local model is loaded; 503 while one loads or after one failed.

        Also each local model's state (and why it failed), and each deployment's
        state from the outcome of recent calls (no probe is sent).
        """
        local = {
            provider.name: {"state": provider.state, **({"error": provider.error} if provider.state == "failed" else {})}
            for provider in table.models_loading_here()
        }
        models = {
            model: [deployment_status(state) for state in states]
            for model, states in table.deployment_states().items()
        }
        status = readiness_status(table)
        body = {"status": status, "local_models": local, "models": models}
        return json_response(body, status_code=200 if status == "ready" else 503)

    @health.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text format: requests, latency, time to first token, attempts, deployments."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @health.get("/version")
    async def gateway_version() -> Response:
        """The gateway's version, in vLLM's shape: ``{"version": "..."}``; no key needed."""
        return json_response({"version": version})

    @health.get("/ping")
    async def ping() -> Response:
        return PlainTextResponse("pong")

    return health
