"""Around each relayed request: the key's limits before it, its usage counted after it.

Before: the key may use the model and has room under its rpm, tpm and
budget (``rate_limit.py``), or the request ends in a 403 or 429.
After, once the answer has gone out: its cost from the price book
(``gateway.pricing``), the Prometheus metrics, the usage ledger record and
the key's token charge and the settling of its dollar budgets, and the
webhooks' request.completed or request.failed (budget.exceeded when a
budget refuses). None of it waits on I/O: the ledger is written in batches
on its own thread, a Redis charge or settlement is sent in the background
and webhook events are queued for their own workers (``gateway.webhooks``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from gateway.cache import CACHE_PROVIDER, CachedAnswer
from gateway.errors import (
    BudgetExhausted,
    DollarBudgetSpent,
    ModelNotPriced,
    RateLimitReached,
)
from gateway.keys.budgets import BudgetBook, Refusal, Reservation, charge, reset_time
from gateway.keys.keyring import ApiKey
from gateway.keys.limits import KeyLimits
from gateway.ledger import LedgerWriter, UsageRecord
from gateway.pricing import Cost, PriceBook
from gateway.routing.deployment import Deployment
from gateway.routing.router import Routed, Trace
from gateway.routing.table import ModelTable
from gateway.telemetry.metrics import GatewayMetrics
from gateway.webhooks import BudgetExceeded, Content, Event, RequestFinished, WebhookSender
from providers import Endpoint, UpstreamResponse, UpstreamStream
from providers.tokens import tokens_needed
from providers.wire import MEDIA_ENDPOINTS, Door, Header, RequestTimings, Usage

if TYPE_CHECKING:
    from gateway.telemetry.tracing import RequestSpan

_BUDGET_REMAINING_USD = Header.BUDGET_REMAINING_USD.encode()
# A reservation counts the prompt with tiktoken, which can undercount another tokenizer's tokens: a margin.
PROMPT_MARGIN = 1.25
# Recorded for a request whose client went away before its answer ended (nginx's code; never sent).
CLIENT_CLOSED_REQUEST = 499


class Outcome:
    """What one request came to, filled in as it goes."""

    __slots__ = (
        "answer", "answered_by", "cache", "deployment", "discount", "key", "model", "payload", "priced", "provider", "request_id",
        "reservation", "saved", "shadow_of", "similarity", "span", "status", "stream", "trace", "usage",
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
        self.reservation: Reservation | None = None  # what the request holds of its key's dollar budgets
        self.priced: tuple[Usage, Cost | None] | None = None  # the last usage priced, and its cost
        self.cache: str | None = None  # a model with a response cache: hit, miss or bypass
        self.saved: Usage | None = None  # a cache hit: what the kept answer used when it was fresh
        self.shadow_of: str | None = None  # a shadow copy: the real request's id
        self.similarity: float | None = None  # a shadow copy: its answer's similarity to the real one
        self.span: RequestSpan | None = None  # its trace, when tracing is on
        self.payload: dict[str, Any] | None = None  # the request as routed, for webhooks with include_content
        self.discount = 0.0  # the share off its price: a line of a batch run by the provider's Batch API

    def routed(self, routed: Routed[Any], status: int) -> None:
        self.answered_by = routed.deployment
        self.provider = routed.deployment.provider_name
        self.deployment = routed.deployment.model
        self.status = status
        self.answer = routed.answer

    def from_cache(self, hit: CachedAnswer) -> None:
        """Answered by the response cache: nothing used, the kept answer's usage saved."""
        self.provider, self.deployment, self.status = CACHE_PROVIDER, hit.deployment, 200
        self.saved = hit.usage

    @property
    def timings(self) -> tuple[RequestTimings, ...]:
        """An engine in this process: how long it took (beside ``usage``); () for an HTTP upstream."""
        return () if self.answer is None else self.answer.timings


class Accounting:
    def __init__(
        self, metrics: GatewayMetrics, limits: KeyLimits, ledger: LedgerWriter | None, prices: PriceBook,
        budgets: BudgetBook, table: ModelTable, reserve_max_tokens: int, webhooks: WebhookSender | None = None,
    ) -> None:  # fmt: skip
        self._metrics = metrics
        self._limits = limits
        self._ledger = ledger
        self._prices = prices
        self._budgets = budgets
        self._table = table
        self._reserve_max_tokens = reserve_max_tokens
        self._webhooks = webhooks

    async def reserve(self, outcome: Outcome, endpoint: Endpoint, payload: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        """Hold the request's worst case on its key's dollar budgets, or raise (429, or 403 for an unpriced model).

        The worst case: the prompt (counted, with ``PROMPT_MARGIN``) and the
        request's max_tokens (else ``server.reserve_max_tokens``) at the dearest
        deployment of the model; for audio and images, the units the request
        names (docs/media.md). The header for the answer: what is left.
        """
        key, model = outcome.key, payload["model"]
        budgets = () if key is None else key.budgets_for(model)
        if not budgets:
            return []
        assert key is not None
        if endpoint in MEDIA_ENDPOINTS:
            worst = self._prices.worst_media_case(model, self._table.deployments_for(model), endpoint, payload)
        else:
            worst = await self._worst_tokens_case(endpoint, payload)
        if worst is None:
            raise ModelNotPriced(key.name, model)
        held = await self._budgets.reserve(budgets, worst)
        if isinstance(held, Refusal):
            self._refuse(held, key, model, outcome.request_id)
        outcome.reservation = held
        if math.isinf(held.remaining_usd):  # let through unheld (Redis unreachable): nothing known is left
            return []
        return [(_BUDGET_REMAINING_USD, f"{max(held.remaining_usd, 0.0):.8f}".encode())]

    async def _worst_tokens_case(self, endpoint: Endpoint, payload: dict[str, Any]) -> float | None:
        """The dearest a token-billed request can cost: its prompt, with a margin, and its max_tokens."""
        model = payload["model"]
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        completion = limit if isinstance(limit, int) else 0
        prompt = await tokens_needed(endpoint, payload) - completion
        if endpoint is not Endpoint.EMBEDDINGS and not completion:
            completion = self._reserve_max_tokens
        deployments = self._table.deployments_for(model)
        return self._prices.worst_case(model, deployments, math.ceil(prompt * PROMPT_MARGIN), completion)

    def cost(self, outcome: Outcome, usage: Usage | None) -> Cost | None:
        """What ``usage`` cost on the deployment that answered; None when no price is known (or nothing answered)."""
        if usage is None or outcome.answered_by is None or not isinstance(outcome.model, str):
            return None
        if outcome.priced is not None and outcome.priced[0] is usage:  # the answer's header priced it already
            return outcome.priced[1]
        cost = self._prices.cost(outcome.model, outcome.answered_by, usage)
        if cost is not None and outcome.discount:
            cost = Cost(cost.usd * (1.0 - outcome.discount), f"{cost.source}, batch {outcome.discount:.0%} off")
        outcome.priced = (usage, cost)
        return cost

    async def refuse_if_spent(self, key: ApiKey, model: str) -> None:
        """Raise the 429 of a spent dollar budget of ``key`` for ``model`` (a native batch, billed only at its end),
        or the 403 of a model with no known price, which a budget cannot count."""
        budgets = key.budgets_for(model)
        if not budgets:
            return
        if self._prices.worst_case(model, self._table.deployments_for(model), 1, 1) is None:
            raise ModelNotPriced(key.name, model)
        held = await self._budgets.reserve(budgets, 0.0)
        if isinstance(held, Refusal):
            self._refuse(held, key, model, None)
        self._budgets.settle(held, 0.0)

    def _refuse(self, refusal: Refusal, key: ApiKey, model: str, request_id: str | None) -> NoReturn:
        """budget.exceeded sent, and the 429 raised."""
        resets_at = reset_time(refusal, self._budgets.timezone)
        self._budget_exceeded(BudgetExceeded(
            request_id, key.name, model, refusal.budget.described, None if resets_at is None else resets_at.isoformat()
        ))  # fmt: skip
        raise DollarBudgetSpent(refusal.budget.described, resets_at)

    async def finish_answered(self, endpoint: Endpoint | Door, outcome: Outcome) -> None:
        """Count a request answered outside the relay (a line of a batch the provider's Batch API ran): its
        cost is charged to its key's budgets as spent, never held before (nothing here admitted it); how long
        it took is not known."""
        key = outcome.key
        budgets = () if key is None or not isinstance(outcome.model, str) else key.budgets_for(outcome.model)
        cost = self.cost(outcome, outcome.usage)
        if budgets:
            await charge(self._budgets, budgets, 0.0 if cost is None else cost.usd)
        self.finish(endpoint, outcome, None)

    async def admit(self, key: ApiKey, model: str, request_id: str | None = None) -> list[tuple[bytes, bytes]]:
        """Raise unless ``key`` may call ``model`` now; the rate-limit headers for the answer."""
        key.require(model)
        if not key.limits.limited:
            return []
        admission = await self._limits.admit(key.limits)
        if admission.refused_by == "budget":
            budget = f"token budget of {key.limits.budget_tokens} tokens of key {key.name!r}"
            self._budget_exceeded(BudgetExceeded(request_id, key.name, model, budget, None))
            raise BudgetExhausted(key.limits)
        if not admission.allowed:
            raise RateLimitReached(key.limits, admission)
        return admission.raw_headers()

    def first_event(self, outcome: Outcome, seconds: float) -> None:
        """A stream's first event went out ``seconds`` after the request came in."""
        self._metrics.first_token.labels(self._metrics.model_label(outcome.model)).observe(seconds)

    def finish(self, endpoint: Endpoint | Door, outcome: Outcome, started: float | None) -> None:
        """Count the finished request under ``endpoint``: an OpenAI endpoint, or the door it came through (``messages``).

        ``started``: its perf_counter at the start; None when how long it took is not known (a line of a batch the
        provider ran: its hours in the provider's queue are no request's latency), recorded as 0 and not observed.
        """
        elapsed = 0.0 if started is None else time.perf_counter() - started
        self._observe(endpoint, outcome, None if started is None else elapsed)
        usage = outcome.usage
        key = outcome.key
        cost = self.cost(outcome, usage)
        if outcome.reservation is not None:
            # Unknown after all (a usage that contradicts itself): the reservation is what it may have cost.
            spent = 0.0 if usage is None else outcome.reservation.usd if cost is None else cost.usd
            self._budgets.settle(outcome.reservation, spent)
        if cost is not None and cost.usd:
            key_name = "" if key is None else key.name
            self._metrics.cost.labels(self._metrics.model_label(outcome.model), outcome.provider, key_name).inc(cost.usd)
        if usage is not None and key is not None and key.limits.limited:
            self._limits.charge(key.limits, usage.total_tokens)
        if self._ledger is None and self._webhooks is None:
            return
        record = _record(endpoint, outcome, elapsed, cost)
        if self._ledger is not None:
            self._ledger.record(record)
        if self._webhooks is not None:
            self._request_finished(outcome, record)

    def _request_finished(self, outcome: Outcome, record: UsageRecord) -> None:
        assert self._webhooks is not None
        kind = "request.completed" if outcome.status < 400 else "request.failed"
        if self._webhooks.subscribed(kind):
            content = _content(outcome) if self._webhooks.wants_content else None
            self._webhooks.emit(Event(kind, _finished(record, content), outcome.request_id))

    def _budget_exceeded(self, refusal: BudgetExceeded) -> None:
        if self._webhooks is not None and self._webhooks.subscribed("budget.exceeded"):
            self._webhooks.emit(Event("budget.exceeded", refusal, refusal.request_id or refusal.key))

    def finish_shadow(self, outcome: Outcome, started: float) -> None:
        """Count a shadow copy apart: in the ledger (marked) and its own metrics, never in the key's limits or budgets."""
        cost = self.cost(outcome, outcome.usage)
        model = self._metrics.model_label(outcome.model)
        self._metrics.shadow_requests.labels(model, str(outcome.status)).inc()
        if cost is not None and cost.usd:
            self._metrics.shadow_cost.labels(model, outcome.provider).inc(cost.usd)
        if self._ledger is not None:
            self._ledger.record(_record(Endpoint.CHAT, outcome, time.perf_counter() - started, cost))

    def shadow_skipped(self, model: str) -> None:
        """A shadow copy not sent: too many were in flight."""
        self._metrics.shadow_skipped.labels(self._metrics.model_label(model)).inc()

    def _observe(self, endpoint: Endpoint | Door, outcome: Outcome, elapsed: float | None) -> None:
        metrics = self._metrics
        model = metrics.model_label(outcome.model)
        metrics.requests.labels(endpoint.value, model, outcome.provider, str(outcome.status)).inc()
        if elapsed is not None:
            metrics.duration.labels(endpoint.value, model).observe(elapsed)
        if outcome.trace.attempts:
            metrics.attempts.labels(model).inc(outcome.trace.attempts)
        if len(outcome.trace.models) > 1:
            metrics.fallbacks.labels(model).inc()
        if outcome.trace.route_reason is not None:
            metrics.route_reasons.labels(model, outcome.trace.route_reason).inc()
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
        # Nothing used costs nothing; something used at no known price is unknown, never 0 (so is a media
        # answer that does not say what it used: a transcript as plain text).
        cost_usd=None if cost is None and (usage is not None or _unmeasured(endpoint, outcome)) else 0.0 if cost is None else cost.usd,
        price_source=None if cost is None else cost.source,
        cache=outcome.cache,
        saved_tokens=0 if outcome.saved is None else outcome.saved.total_tokens,
        shadow_of=outcome.shadow_of,
        similarity=outcome.similarity,
        unit=None if usage is None else usage.unit,
        units=0.0 if usage is None else usage.units,
    )


def _unmeasured(endpoint: Endpoint | Door, outcome: Outcome) -> bool:
    """An answered media request whose answer did not say what it used."""
    return endpoint in MEDIA_ENDPOINTS and outcome.status < 400 and outcome.usage is None


def _finished(record: UsageRecord, content: Content | None) -> RequestFinished:
    return RequestFinished(
        request_id=record.request_id, endpoint=record.endpoint, model=record.model, provider=record.provider,
        deployment=record.deployment, status=record.status, key=record.api_key, stream=record.stream,
        prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens, total_tokens=record.total_tokens,
        cached_tokens=record.cached_tokens, reasoning_tokens=record.reasoning_tokens, estimated=record.estimated,
        cost_usd=record.cost_usd, latency_ms=record.latency_ms, cache=record.cache, content=content,
    )  # fmt: skip


def _content(outcome: Outcome) -> Content:
    """The prompt as the relay kept it, and the text of a whole (not streamed) chat or completions answer."""
    payload = outcome.payload or {}
    prompt = next((payload[name] for name in ("messages", "prompt", "input") if name in payload), None)
    answer = outcome.answer
    return Content(prompt, _answer_text(answer.body) if isinstance(answer, UpstreamResponse) else None)


def _answer_text(body: bytes) -> str | None:
    try:
        choice = orjson.loads(body)["choices"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(choice, dict):
        return None
    text = choice.get("message", {}).get("content") if isinstance(choice.get("message"), dict) else choice.get("text")
    return text if isinstance(text, str) else None
