"""Maps a model name to deployments and sends a request to the first that answers.

A model is addressed by its public name from ``models:``, or directly as
``provider/upstream-model`` for any configured provider. The router's one
loop walks a model's deployments in order and moves on only when the error
class allows a fallback (``ProviderError.fallback_allowed``); an error that
would fail the same way anywhere (a 400) is returned at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from providers import Endpoint, Provider, ProviderError, UpstreamRequest, UpstreamResponse, UpstreamStream

from .config import ModelConfig
from .errors import ModelNotFound

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deployment:
    provider_name: str
    model: str  # the model's name at the provider
    provider: Provider


@dataclass(slots=True)
class ProviderHealth:
    """What the last calls to one provider said; shown at ``/health/ready``."""

    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_error: str | None = None

    @property
    def state(self) -> str:
        if self.successes == 0 and self.failures == 0:
            return "unknown"
        return "failing" if self.consecutive_failures else "ok"

    def record_ok(self) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        self.last_success_at = time.time()

    def record_failure(self, error: ProviderError) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_failure_at = time.time()
        self.last_error = f"{error.status_code} {error.message}"


@dataclass(frozen=True, slots=True)
class Routed(Generic[T]):
    """An upstream's answer and the deployment that gave it."""

    deployment: Deployment
    answer: T


class Router:
    def __init__(self, models: Mapping[str, ModelConfig], providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)
        self._routes = {
            name: tuple(Deployment(d.provider, d.model, self._providers[d.provider]) for d in model.deployments)
            for name, model in models.items()
        }
        self.health = {name: ProviderHealth() for name in self._providers}

    @property
    def model_names(self) -> list[str]:
        return list(self._routes)

    def is_public(self, model: str) -> bool:
        """True for a name under ``models:``, False for ``provider/model`` and unknown names."""
        return model in self._routes

    def deployments_for(self, model: str) -> tuple[Deployment, ...]:
        """The deployments serving ``model``, in the order they are tried."""
        deployments = self._routes.get(model)
        if deployments is not None:
            return deployments
        provider_name, slash, upstream_model = model.partition("/")
        provider = self._providers.get(provider_name) if slash and upstream_model else None
        if provider is None:
            raise ModelNotFound(model)
        return (Deployment(provider_name, upstream_model, provider),)

    async def send(
        self, endpoint: Endpoint, payload: dict[str, Any], request_id: str | None = None
    ) -> Routed[UpstreamResponse]:
        return await self._first_answer(
            endpoint, payload, request_id, lambda provider, request: provider.send(request)
        )

    async def open_stream(
        self, endpoint: Endpoint, payload: dict[str, Any], request_id: str | None = None
    ) -> Routed[UpstreamStream]:
        return await self._first_answer(
            endpoint, payload, request_id, lambda provider, request: provider.open_stream(request)
        )

    async def _first_answer(
        self,
        endpoint: Endpoint,
        payload: dict[str, Any],
        request_id: str | None,
        call: Callable[[Provider, UpstreamRequest], Awaitable[T]],
    ) -> Routed[T]:
        deployments = self.deployments_for(payload["model"])
        last_error: ProviderError | None = None
        for deployment in deployments:
            request = UpstreamRequest(endpoint, {**payload, "model": deployment.model}, request_id)
            health = self.health[deployment.provider_name]
            try:
                answer = await call(deployment.provider, request)
            except ProviderError as error:
                if not error.fallback_allowed:
                    health.record_ok()  # the provider is fine; the request is at fault
                    raise
                health.record_failure(error)
                last_error = error
                continue
            health.record_ok()
            return Routed(deployment, answer)
        assert last_error is not None  # a model always has at least one deployment
        raise last_error
