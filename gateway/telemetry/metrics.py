"""Prometheus metrics at ``GET /metrics``.

Counted by the relay for every request on the model endpoints, and read from
the router's deployment state when scraped. Labels never carry a key or a
client's free text: a ``provider/model`` name a client made up is reported
as ``provider/*``, an unknown model as ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.ledger import LedgerWriter
from gateway.routing.table import ModelTable
from gateway.webhooks import WebhookSender
from providers.base import ReportsEngineStats
from providers.wire import RequestTimings

# Seconds: from a cache hit on a local model to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
BREAKER_VALUE = {"closed": 1.0, "half_open": 0.5, "open": 0.0}


class GatewayMetrics:
    """The gateway's metrics, in a registry of their own (two apps in one process do not collide)."""

    def __init__(self, ledger: LedgerWriter | None = None) -> None:
        self.serving: ModelTable | None = None  # the table read, given by ``serve``
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "switchyard_requests", "Requests on the model endpoints, by outcome.",
            ["endpoint", "model", "provider", "status"], registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "switchyard_request_duration_seconds", "Time from the request to the end of its answer.",
            ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.first_token = Histogram(
            "switchyard_time_to_first_token_seconds", "Streams: time from the request to its first event.",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.attempts = Counter(
            "switchyard_upstream_attempts", "Upstream calls made, retries and failovers included.",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.fallbacks = Counter(
            "switchyard_fallbacks", "Requests answered (or failed) after moving to another model.",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(
            "switchyard_tokens", "Tokens of finished requests: as the upstream reported, or estimated by the gateway.",
            ["model", "kind", "estimated"], registry=self.registry,
        )  # fmt: skip
        self.route_reasons = Counter(
            "switchyard_route_decisions", "routing local_first: requests by where they started and why "
            "(local, local_queued, local_full, local_kv_full, local_not_ready).",
            ["model", "reason"], registry=self.registry,
        )  # fmt: skip
        self.shadow_requests = Counter(
            "switchyard_shadow_requests", "Shadow copies of requests sent to another model, by outcome.",
            ["model", "status"], registry=self.registry,
        )  # fmt: skip
        self.shadow_skipped = Counter(
            "switchyard_shadow_skipped", "Shadow copies not sent: too many were in flight.",
            ["model"], registry=self.registry,
        )  # fmt: skip
        self.shadow_cost = Counter(
            "switchyard_shadow_cost_usd", "US dollars shadow copies cost (apart from switchyard_cost_usd).",
            ["model", "provider"], registry=self.registry,
        )  # fmt: skip
        self.cost = Counter(
            "switchyard_cost_usd", "US dollars finished requests cost, where a price is known (gateway.pricing).",
            ["model", "provider", "key"], registry=self.registry,
        )  # fmt: skip
        self.registry.register(_DeploymentCollector(self))
        if ledger is not None:
            self.registry.register(_LedgerCollector(ledger))
        self._engine_timings: tuple[Histogram, Histogram] | None = None

    @property
    def table(self) -> ModelTable:
        assert self.serving is not None, "serve(table) first"
        return self.serving

    def serve(self, table: ModelTable) -> None:
        """Read ``table`` from now on: at start, and when a configuration reload swaps it in (the counters stay)."""
        self.serving = table
        engines = table.engines_here()
        if engines:
            self._watch_engines(engines)

    def watch_webhooks(self, sender: WebhookSender) -> None:
        """The webhook sender's counts, read when scraped."""
        self.registry.register(_WebhookCollector(sender))

    def _watch_engines(self, engines: list[ReportsEngineStats]) -> None:
        """The local engines' state when scraped, and the histograms their requests' timings go to."""
        if self._engine_timings is None:
            self.registry.register(_EngineCollector(self))
            self._engine_timings = self._engine_histograms()
        for engine in engines:  # each engine's series is there from the start, at zero
            for histogram in self._engine_timings:
                histogram.labels(engine.name)

    def _engine_histograms(self) -> tuple[Histogram, Histogram]:
        first_token = Histogram(
            "switchyard_engine_time_to_first_token_seconds", "Local engine: from a request's arrival to its first token.",
            ["provider"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        per_token = Histogram(
            "switchyard_engine_time_per_output_token_seconds", "Local engine: mean time between a request's tokens.",
            ["provider"], buckets=TOKEN_BUCKETS, registry=self.registry,
        )  # fmt: skip
        return first_token, per_token

    def observe_engine_timings(self, provider: str, timings: tuple[RequestTimings, ...]) -> None:
        """A finished answer's engine timings (a local provider's), beside its usage."""
        if not timings or self._engine_timings is None:
            return
        first_token, per_token = self._engine_timings
        for timing in timings:
            first_token.labels(provider).observe(timing.first_token_seconds)
            if timing.between_tokens_seconds is not None:
                per_token.labels(provider).observe(timing.between_tokens_seconds)

    def model_label(self, model: object) -> str:
        if not isinstance(model, str) or not model:
            return ""
        if self.table.is_public(model):
            return model
        provider, slash, _ = model.partition("/")
        return f"{provider}/*" if slash and provider in self.table.provider_names else "unknown"


class _DeploymentCollector(Collector):
    """Each deployment's breaker state and requests in flight, read when scraped."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics  # its table: the one serving now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        table = self._metrics.serving
        labels = ["model", "provider", "deployment"]
        up = GaugeMetricFamily("switchyard_deployment_up", "1 closed, 0.5 half-open (probing), 0 cooling down.", labels=labels)
        in_flight = GaugeMetricFamily("switchyard_deployment_in_flight", "Requests in flight.", labels=labels)
        for model, states in table.deployment_states().items() if table is not None else ():
            if not table.is_public(model):
                continue  # direct provider/model names are the clients' to choose
            for state in states:
                values = [model, state.deployment.provider_name, state.deployment.model]
                up.add_metric(values, BREAKER_VALUE[state.breaker.state])
                in_flight.add_metric(values, state.in_flight)
        yield up
        yield in_flight


class _LedgerCollector(Collector):
    """The usage ledger's records: written, waiting for the next batch, dropped."""

    def __init__(self, ledger: LedgerWriter) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ledger = self._ledger
        yield CounterMetricFamily("switchyard_ledger_records_written", "Usage records written.", value=ledger.written)
        yield GaugeMetricFamily("switchyard_ledger_records_pending", "Usage records not written yet.", value=ledger.pending)
        yield CounterMetricFamily(
            "switchyard_ledger_records_dropped", "Usage records dropped: the store was down too long.", value=ledger.dropped
        )


class _WebhookCollector(Collector):
    """Webhook events: delivered, retried, given up on, dropped (the queue was full), waiting."""

    def __init__(self, sender: WebhookSender) -> None:
        self._sender = sender

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        sender = self._sender
        yield CounterMetricFamily("switchyard_webhook_events_delivered", "Webhook events delivered.", value=sender.delivered)
        yield CounterMetricFamily("switchyard_webhook_attempts_retried", "Webhook attempts after a failed one.", value=sender.retried)
        yield CounterMetricFamily(
            "switchyard_webhook_events_failed", "Webhook events given up on: attempts used up or refused.", value=sender.failed
        )
        yield CounterMetricFamily(
            "switchyard_webhook_events_dropped", "Webhook events dropped: the endpoint's queue was full.", value=sender.dropped
        )
        yield GaugeMetricFamily("switchyard_webhook_events_pending", "Webhook events waiting to be sent.", value=sender.pending)


class _EngineCollector(Collector):
    """Each local engine's queue, KV cache and prefix cache, read when scraped."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics  # the engines of its table: the one serving now

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["provider"]
        running = GaugeMetricFamily("switchyard_engine_requests_running", "Sequences being decoded.", labels=labels)
        waiting = GaugeMetricFamily("switchyard_engine_requests_waiting", "Sequences waiting for room.", labels=labels)
        kv = GaugeMetricFamily("switchyard_engine_kv_cache_usage_ratio", "Share of KV blocks held.", labels=labels)
        hit = GaugeMetricFamily(
            "switchyard_engine_prefix_cache_hit_ratio", "Prompt blocks found in the prefix cache, since start.", labels=labels
        )
        preempted = CounterMetricFamily("switchyard_engine_preemptions", "Sequences preempted for room.", labels=labels)
        table = self._metrics.serving
        for engine in table.engines_here() if table is not None else ():
            stats = engine.engine_stats()
            if stats is None:  # still loading, or an embedding model
                continue
            name = [engine.name]
            running.add_metric(name, stats.running)
            waiting.add_metric(name, stats.waiting)
            kv.add_metric(name, stats.kv_cache_usage)
            queries = stats.prefix_cache_queries
            hit.add_metric(name, stats.prefix_cache_hits / queries if queries else 0.0)
            preempted.add_metric(name, stats.preemptions)
        yield from (running, waiting, kv, hit, preempted)
