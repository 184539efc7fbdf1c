"""Around each relayed request: the key's limits before it, its usage counted after it.

Before: the key may use the model and has room under its rpm, tpm and
budget (``rate_limit.py``), or the request ends in a 403 or 429.
After, once the answer has gone out: its cost from the price book
(``gateway.pricing``), the Prometheus metrics, the usage ledger record and
the key's token charge. None of it waits on I/O: the
ledger is written in batches on its own thread and a Redis charge is sent
in the background.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.errors import BudgetExhausted, RateLimitReached
from gateway.keys.keyring import ApiKey
from gateway.keys.limits import KeyLimits
from gateway.ledger import LedgerWriter, UsageRecord
from gateway.pricing import Cost, PriceBook
from gateway.routing.deployment import Deployment
from gateway.routing.router import Routed, Trace
from gateway.telemetry.metrics import GatewayMetrics
from providers import Endpoint, UpstreamResponse, UpstreamStream
from providers.wire import Door, RequestTimings, Usage


class Outcome:
    """What one request came to, filled in as it goes."""

    __slots__ = (
        "answer", "answered_by", "deployment", "key", "model", "provider", "request_id", "status", "stream", "trace",
        "usage",
    )  # fmt: skip

    def __init__(self, request_id: str, key: ApiKey | None) -> None:
        self.request_id = request_id
        self.key = key
        self.model: object = None
        self.provider = ""
        self.deployment: str | None = None
        self.status = 500
        self.stream = False
        self.trace = Trace()  # filled in by the router, answered or not
        self.usage: Usage | None = None
        self.answer: UpstreamResponse | UpstreamStream | None = None  # its timings are read once it finished
        self.answered_by: Deployment | None = None

    def routed(self, routed: Routed[Any], status: int) -> None:
        self.answered_by = routed.deployment
        self.provider = routed.deployment.provider_name
        self.deployment = routed.deployment.model
        self.status = status
        self.answer = routed.answer

    @property
    def timings(self) -> tuple[RequestTimings, ...]:
        """An engine in this process: how long it took (beside ``usage``); () for an HTTP upstream."""
        return () if self.answer is None else self.answer.timings


class Accounting:
    def __init__(self, metrics: GatewayMetrics, limits: KeyLimits, ledger: LedgerWriter | None, prices: PriceBook) -> None:
        self._metrics = metrics
        self._limits = limits
        self._ledger = ledger
        self._prices = prices

    def cost(self, outcome: Outcome, usage: Usage | None) -> Cost | None:
        """What ``usage`` cost on the deployment that answered; None when no price is known (or nothing answered)."""
        if usage is None or outcome.answered_by is None or not isinstance(outcome.model, str):
            return None
        return self._prices.cost(outcome.model, outcome.answered_by, usage)

    async def admit(self, key: ApiKey, model: str) -> list[tuple[bytes, bytes]]:
        """Raise unless ``key`` may call ``model`` now; the rate-limit headers for the answer."""
        key.require(model)
        if not key.limits.limited:
            return []
        admission = await self._limits.admit(key.limits)
        if admission.refused_by == "budget":
            raise BudgetExhausted(key.limits)
        if not admission.allowed:
            raise RateLimitReached(key.limits, admission)
        return admission.raw_headers()

    def first_event(self, outcome: Outcome, seconds: float) -> None:
        """A stream's first event went out ``seconds`` after the request came in."""
        self._metrics.first_token.labels(self._metrics.model_label(outcome.model)).observe(seconds)

    def finish(self, endpoint: Endpoint | Door, outcome: Outcome, started: float) -> None:
        """Count the finished request under ``endpoint``: an OpenAI endpoint, or the door it came through (``messages``)."""
        elapsed = time.perf_counter() - started
        self._observe(endpoint, outcome, elapsed)
        usage = outcome.usage
        key = outcome.key
        cost = self.cost(outcome, usage)
        if cost is not None and cost.usd:
            key_name = "" if key is None else key.name
            self._metrics.cost.labels(self._metrics.model_label(outcome.model), outcome.provider, key_name).inc(cost.usd)
        if usage is not None and key is not None and key.limits.limited:
            self._limits.charge(key.limits, usage.total_tokens)
        if self._ledger is not None:
            self._ledger.record(_record(endpoint, outcome, elapsed, cost))

    def _observe(self, endpoint: Endpoint | Door, outcome: Outcome, elapsed: float) -> None:
        metrics = self._metrics
        model = metrics.model_label(outcome.model)
        metrics.requests.labels(endpoint.value, model, outcome.provider, str(outcome.status)).inc()
        metrics.duration.labels(endpoint.value, model).observe(elapsed)
        if outcome.trace.attempts:
            metrics.attempts.labels(model).inc(outcome.trace.attempts)
        if len(outcome.trace.models) > 1:
            metrics.fallbacks.labels(model).inc()
        usage = outcome.usage
        if usage is not None:
            estimated = "true" if usage.estimated else "false"
            metrics.tokens.labels(model, "prompt", estimated).inc(usage.prompt_tokens)
            metrics.tokens.labels(model, "completion", estimated).inc(usage.completion_tokens)
        metrics.observe_engine_timings(outcome.provider, outcome.timings)


def _record(endpoint: Endpoint | Door, outcome: Outcome, elapsed: float, cost: Cost | None) -> UsageRecord:
    usage = outcome.usage
    return UsageRecord(
        time=time.time(),
        request_id=outcome.request_id,
        api_key=None if outcome.key is None else outcome.key.name,
        endpoint=endpoint.value,
        model=outcome.model if isinstance(outcome.model, str) else "",
        provider=outcome.provider or None,
        deployment=outcome.deployment,
        status=outcome.status,
        stream=outcome.stream,
        prompt_tokens=0 if usage is None else usage.prompt_tokens,
        completion_tokens=0 if usage is None else usage.completion_tokens,
        total_tokens=0 if usage is None else usage.total_tokens,
        estimated=False if usage is None else usage.estimated,
        latency_ms=round(elapsed * 1000, 3),
        cached_tokens=0 if usage is None else usage.cached_tokens,
        cache_write_tokens=0 if usage is None else usage.cache_write_tokens,
        reasoning_tokens=0 if usage is None else usage.reasoning_tokens,
        # Nothing used costs nothing; something used at no known price is unknown, never 0.
        cost_usd=0.0 if usage is None else None if cost is None else cost.usd,
        price_source=None if cost is None else cost.source,
    )
