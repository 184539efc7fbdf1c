"""What the status page shows, read from the model table, the local engines and the usage ledger.

Deployments: the breaker state in /health/ready's words (``deployment_status``),
counters since start, and the last minutes from each deployment's
``OutcomeWindow``. Engines: the counters they report, and tokens per second
from the ledger (the engine counts no tokens itself). Usage: the ledger's
``/v1/usage`` sums per key over the last day.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from gateway.ledger import LedgerWriter, UsageQuery
from gateway.routes.health import deployment_status, readiness_status
from gateway.routing.balancer import DeploymentState
from gateway.routing.table import ModelTable
from gateway.routing.window import WINDOW_SECONDS
from providers import LoadsModel, ReportsEngineStats

logger = logging.getLogger(__name__)

# Tokens per second: completion tokens of the requests an engine finished in this last stretch.
TOKENS_WINDOW_SECONDS = 60.0
USAGE_SECONDS = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    model: str
    provider: str
    deployment: str  # the model's name at the provider
    state: str  # as /health/ready: closed, open, half_open; loading or failed for a local model
    cooldown_remaining_s: float
    in_flight: int
    successes: int  # since start, as /health/ready
    failures: int
    latency_ms: float | None  # moving average, as /health/ready
    last_error: str | None
    recent_successes: int  # within the window
    recent_failures: int
    recent_error_rate: float | None  # None: no outcome in the window
    recent_latency_ms: float | None  # mean of the timed answers in the window
    recent_latency_max_ms: float | None


@dataclass(frozen=True, slots=True)
class EngineRow:
    provider: str
    state: str  # loading, ready, failed (a provider that loads no model: ready)
    running: int | None  # None while the engine reports nothing (loading, or an embedder)
    waiting: int | None
    kv_cache_usage: float | None  # share of KV blocks held, 0-1
    tokens_per_s: float | None  # None: no usage ledger to count from


@dataclass(frozen=True, slots=True)
class KeyUsage:
    api_key: str | None  # the key's name; None: requests on an open gateway
    requests: int
    failed_requests: int
    total_tokens: int
    cost_usd: float  # of the requests whose price is known
    unpriced_requests: int


@dataclass(frozen=True, slots=True)
class StatusFigures:
    status: str  # readiness, as /health/ready
    time: float  # unix seconds
    window_s: float
    tokens_window_s: float
    deployments: list[DeploymentRow]
    engines: list[EngineRow]
    ledger: Literal["on", "off", "unavailable"]
    usage: list[KeyUsage]  # the last USAGE_SECONDS, per key; empty unless the ledger is on
    usage_since: float


async def status_figures(table: ModelTable, ledger: LedgerWriter | None) -> StatusFigures:
    """Everything the page shows, now; the ledger's part is left out (and said so) when it cannot be read."""
    now = time.time()
    usage: list[KeyUsage] = []
    completion_tokens: dict[str, int] | None = None  # per provider, over TOKENS_WINDOW_SECONDS
    ledger_state: Literal["on", "off", "unavailable"] = "off"
    if ledger is not None:
        try:
            per_key = await ledger.summarize(UsageQuery(start_time=now - USAGE_SECONDS, group_by=("api_key",)))
            per_provider = await ledger.summarize(
                UsageQuery(start_time=now - TOKENS_WINDOW_SECONDS, group_by=("provider",))
            )
        except Exception as error:  # the database is down: the page must still show the rest
            logger.warning("status page: the usage ledger could not be read: %s", error)
            ledger_state = "unavailable"
        else:
            ledger_state = "on"
            usage = [_key_usage(row) for row in per_key]
            completion_tokens = {row["provider"]: row["completion_tokens"] for row in per_provider if row["provider"]}
    return StatusFigures(
        status=readiness_status(table),
        time=now,
        window_s=WINDOW_SECONDS,
        tokens_window_s=TOKENS_WINDOW_SECONDS,
        deployments=[
            _deployment_row(model, state) for model, states in table.deployment_states().items() for state in states
        ],
        engines=[_engine_row(engine, completion_tokens) for engine in table.engines_here()],
        ledger=ledger_state,
        usage=usage,
        usage_since=now - USAGE_SECONDS,
    )


def _deployment_row(model: str, state: DeploymentState) -> DeploymentRow:
    health = deployment_status(state)
    recent = state.recent.read()
    return DeploymentRow(
        model=model,
        provider=health["provider"],
        deployment=health["model"],
        state=health["state"],
        cooldown_remaining_s=health["cooldown_remaining_s"],
        in_flight=health["in_flight"],
        successes=health["successes"],
        failures=health["failures"],
        latency_ms=health["latency_ms"],
        last_error=health["last_error"],
        recent_successes=recent.successes,
        recent_failures=recent.failures,
        recent_error_rate=None if recent.error_rate is None else round(recent.error_rate, 4),
        recent_latency_ms=_ms(recent.latency_mean),
        recent_latency_max_ms=_ms(recent.latency_max),
    )


def _engine_row(engine: ReportsEngineStats, completion_tokens: dict[str, int] | None) -> EngineRow:
    stats = engine.engine_stats()
    tokens = None
    if completion_tokens is not None:
        tokens = round(completion_tokens.get(engine.name, 0) / TOKENS_WINDOW_SECONDS, 2)
    return EngineRow(
        provider=engine.name,
        state=engine.state if isinstance(engine, LoadsModel) else "ready",
        running=None if stats is None else stats.running,
        waiting=None if stats is None else stats.waiting,
        kv_cache_usage=None if stats is None else round(stats.kv_cache_usage, 4),
        tokens_per_s=tokens,
    )


def _key_usage(row: dict[str, Any]) -> KeyUsage:
    """A ``/v1/usage`` row grouped by api_key."""
    return KeyUsage(
        api_key=row["api_key"],
        requests=int(row["requests"]),
        failed_requests=int(row["failed_requests"]),
        total_tokens=int(row["total_tokens"]),
        cost_usd=float(row["cost_usd"]),
        unpriced_requests=int(row["unpriced_requests"]),
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
