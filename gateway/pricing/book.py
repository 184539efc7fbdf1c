"""The price book: what each answer cost, and the most a request can cost, for each deployment.

Where a deployment's price comes from, first match wins::

    the model's own `price:` (providers.yaml)    source "config"   negotiated rates, private deployments
    type: local                                  source "local"    0.0: the engine in this process
    genai-prices' table                          source "genai-prices <version>"
    none of these                                None: unknown, never zero

A model's ``price:`` covers each of its deployments. A deployment reached
under another name (a fallback's answer counted under the requested model,
or ``provider/model``) takes the price of the first model in ``models:``
that lists it with a ``price:``, else its own. Each deployment's rates are
found once (the configured ones when the book is made) and kept, so a
request's cost is a dict lookup and a few multiplications.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import GatewayConfig
from gateway.pricing.genai import VERSION, lookup
from gateway.pricing.rates import FREE, ConfigRates, Rates
from providers import LocalProviderConfig
from providers.wire import Usage

if TYPE_CHECKING:
    from gateway.routing.deployment import Deployment

# Deployments outside `models:` (named by clients as provider/model) whose rates are kept, oldest dropped first.
MAX_UNLISTED_DEPLOYMENTS = 1024


@dataclass(frozen=True, slots=True)
class Cost:
    usd: float  # the request's cost in US dollars
    source: str  # where the price came from: "genai-prices <version>", "config" or "local"


class PriceBook:
    def __init__(self, config: GatewayConfig) -> None:
        self._providers = config.providers
        own: dict[tuple[str, str], Rates | None] = {}  # each configured deployment's own rates, looked up once
        for model in config.models.values():
            for d in model.deployments:
                if (d.provider, d.model) not in own:
                    own[(d.provider, d.model)] = self._found(d.provider, d.model)
        priced = {name: ConfigRates.of(model.price) for name, model in config.models.items() if model.price is not None}
        # (model, provider, upstream model) -> the rates of a deployment listed under that model.
        self._listed: dict[tuple[str, str, str], Rates | None] = {
            (name, d.provider, d.model): priced.get(name) or own[(d.provider, d.model)]
            for name, model in config.models.items()
            for d in model.deployments
        }
        # (provider, upstream model) -> a configured deployment's rates under any other name.
        self._deployments = dict(own)
        for name in reversed(priced):  # reversed: the first model that prices it wins
            for d in config.models[name].deployments:
                self._deployments[(d.provider, d.model)] = priced[name]
        # The same for deployments outside `models:`, named by clients: bounded, oldest dropped first.
        self._unlisted: dict[tuple[str, str], Rates | None] = {}
        self._unpriced = [f"{name} -> {provider}/{upstream}" for (name, provider, upstream), rates in self._listed.items()
                          if rates is None]  # fmt: skip

    @property
    def version(self) -> str:
        """The price table's version, e.g. "genai-prices 0.2.3": prices change with its releases."""
        return VERSION

    def cost(self, model: str, deployment: Deployment, usage: Usage) -> Cost | None:
        """What ``usage`` cost on ``deployment``, answering for ``model``.

        None when no price is known for this deployment (unknown, never zero),
        or when the usage contradicts itself (more cached tokens than prompt
        tokens, more reasoning tokens than completion tokens).
        """
        rates = self._rates(model, deployment)
        if rates is None or not _consistent(usage):
            return None
        return Cost(rates.usd(usage), rates.source)

    def worst_case(
        self, model: str, deployment_candidates: Iterable[Deployment], prompt_tokens: int, max_completion_tokens: int
    ) -> float | None:
        """The dearest a request can cost on any deployment the model may use: for budget reservations.

        On each deployment, the dearest split of these counts (``rates.corners``:
        a cache write can cost more than fresh input, 1.25x at Anthropic).
        None when any candidate has no price (the dearest is unknown), or
        there is no candidate.
        """
        dearest: float | None = None
        for deployment in deployment_candidates:
            rates = self._rates(model, deployment)
            if rates is None:
                return None
            here = rates.dearest(prompt_tokens, max_completion_tokens)
            dearest = here if dearest is None else max(dearest, here)
        return dearest

    def unpriced(self) -> list[str]:
        """'model -> provider/upstream-model' for each configured deployment no price covers (for check-config)."""
        return list(self._unpriced)

    def _rates(self, model: str, deployment: Deployment) -> Rates | None:
        where = (deployment.provider_name, deployment.model)
        listed = (model, *where)
        if listed in self._listed:
            return self._listed[listed]
        if where in self._deployments:
            return self._deployments[where]
        if where in self._unlisted:
            return self._unlisted[where]
        if len(self._unlisted) >= MAX_UNLISTED_DEPLOYMENTS:
            del self._unlisted[next(iter(self._unlisted))]
        rates = self._unlisted[where] = self._found(*where)
        return rates

    def _found(self, provider_name: str, upstream_model: str) -> Rates | None:
        """A deployment's own rates: zero in this process, else genai-prices' (None when it has none)."""
        provider = self._providers.get(provider_name)
        if provider is None:
            return None
        if isinstance(provider, LocalProviderConfig):
            return FREE
        return lookup(provider, upstream_model)


def _consistent(usage: Usage) -> bool:
    return (
        usage.cached_tokens + usage.cache_write_tokens <= usage.prompt_tokens
        and usage.reasoning_tokens <= usage.completion_tokens
    )
