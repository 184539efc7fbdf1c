"""Which of a model's deployments to try first: weighted random, in order, least busy, or lowest latency.

The balancer orders all of a model's deployments; the router takes them in
that order, skipping those cooling down, so the later ones are the model's
own failover.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.config import RoutingStrategy
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.deployment import Deployment
from gateway.routing.window import OutcomeWindow

# Weight of the newest sample in the latency moving average.
LATENCY_SMOOTHING = 0.2


@dataclass(slots=True)
class DeploymentState:
    """A deployment with what the router has learned about it."""

    deployment: Deployment
    weight: float
    breaker: CircuitBreaker
    in_flight: int = 0
    latency: float | None = None  # moving average of seconds to the first byte of the answer
    # Outcome counters since start, shown at /health/ready; ``recent`` counts the last minutes (/status).
    successes: int = 0
    failures: int = 0
    last_error: str | None = field(default=None)
    recent: OutcomeWindow = field(default_factory=OutcomeWindow)

    def observe_latency(self, seconds: float) -> None:
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency += LATENCY_SMOOTHING * (seconds - self.latency)
        self.recent.record_latency(seconds)

    def record_success(self) -> None:
        """It answered, or refused a request for the request's own fault (the deployment is fine)."""
        self.successes += 1
        self.recent.record_success()

    def record_failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.recent.record_failure()


def order(states: Sequence[DeploymentState], strategy: RoutingStrategy, rng: random.Random) -> list[DeploymentState]:
    """``states`` in the order to try them."""
    if len(states) == 1 or strategy == "ordered":  # ordered: the first listed is primary, the rest back it up
        return list(states)
    if strategy == "weighted":
        # Weighted sampling without replacement (Efraimidis-Spirakis): the
        # first is picked with probability weight / total, and so on.
        return sorted(states, key=lambda s: rng.random() ** (1.0 / s.weight), reverse=True)
    shuffled = list(states)
    rng.shuffle(shuffled)  # ties are broken at random, so equal deployments share the load
    if strategy == "least_busy":
        return sorted(shuffled, key=lambda s: s.in_flight)
    # lowest_latency: a deployment never measured goes first, so each gets measured.
    return sorted(shuffled, key=lambda s: -1.0 if s.latency is None else s.latency)
