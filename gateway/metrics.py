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

from .ledger import LedgerWriter
from .router import Router

# Seconds: from a cache hit on a local model to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BREAKER_VALUE = {"closed": 1.0, "half_open": 0.5, "open": 0.0}


class GatewayMetrics:
    """The gateway's metrics, in a registry of their own (two apps in one process do not collide)."""

    def __init__(self, router: Router, ledger: LedgerWriter | None = None) -> None:
        self._router = router
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
        self.registry.register(_DeploymentCollector(router))
        if ledger is not None:
            self.registry.register(_LedgerCollector(ledger))

    def model_label(self, model: object) -> str:
        if not isinstance(model, str) or not model:
            return ""
        if self._router.is_public(model):
            return model
        provider, slash, _ = model.partition("/")
        return f"{provider}/*" if slash and provider in self._router.provider_names else "unknown"


class _DeploymentCollector(Collector):
    """Each deployment's breaker state and requests in flight, read when scraped."""

    def __init__(self, router: Router, ledger: LedgerWriter | None = None) -> None:
        self._router = router

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "provider", "deployment"]
        up = GaugeMetricFamily("switchyard_deployment_up", "1 closed, 0.5 half-open (probing), 0 cooling down.", labels=labels)
        in_flight = GaugeMetricFamily("switchyard_deployment_in_flight", "Requests in flight.", labels=labels)
        for model, states in self._router.deployment_states().items():
            if not self._router.is_public(model):
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
