"""The price book: what each answer cost, and the most a request can cost, for each deployment.

Where a deployment's price comes from, first match wins::

    the model's own `price:` (providers.yaml)    source "config"   negotiated rates, private deployments
    type: local                                  source "local"    0.0: the engine in this process
    genai-prices' table                          source "genai-prices <version>"
    none of these                                None: unknown, never zero

Audio and images are billed in their own units (``Usage.unit``: seconds,
characters, images), priced by the model's ``price:`` only
(``per_audio_minute``, ``per_million_characters``, ``per_image``): a usage
in a unit no price names is unknown, never zero (docs/media.md).

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
from gateway.pricing.rates import FREE, ConfigRates, Rates, unit_rates
from providers import LocalProviderConfig
from providers.media import CHARACTERS, IMAGES, SECONDS
from providers.wire import Endpoint, Usage

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
        # Media units' rates: a model's own, else (a deployment reached under another name) the first model's that prices it.
        self._unit_rates = {name: unit_rates(model.price) for name, model in config.models.items() if model.price is not None}
        self._deployment_unit_rates: dict[tuple[str, str], dict[str, float]] = {}
        for name, unit_prices in self._unit_rates.items():
            for d in config.models[name].deployments:
                self._deployment_unit_rates.setdefault((d.provider, d.model), unit_prices)
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
        usd = rates.usd(usage)
        if usage.unit is not None:
            per_unit = self._units(model, deployment).get(usage.unit)
            if per_unit is None and not usage.total_tokens:
                return None  # billed in a unit no price names
            usd += (per_unit or 0.0) * usage.units
        return Cost(usd, rates.source)

    def worst_media_case(
        self, model: str, deployment_candidates: Iterable[Deployment], endpoint: Endpoint, payload: dict[str, object]
    ) -> float | None:
        """The dearest an audio or image request can cost, from what it names: for budget reservations.

        Speech: its ``input``'s characters; images: ``n`` of them (1 when
        unset). A transcription's audio length is known only from its answer:
        nothing is held, the budget is settled with the cost once it is known.
        None when a candidate has no price in the endpoint's unit.
        """
        unit, units = _named_units(endpoint, payload)
        dearest: float | None = None
        for deployment in deployment_candidates:
            per_unit = self._units(model, deployment).get(unit)
            if per_unit is None or self._rates(model, deployment) is None:
                return None
            dearest = max(dearest or 0.0, per_unit * units)
        return dearest

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

    def _units(self, model: str, deployment: Deployment) -> dict[str, float]:
        where = (deployment.provider_name, deployment.model)
        if (model, *where) in self._listed and model in self._unit_rates:
            return self._unit_rates[model]
        return self._deployment_unit_rates.get(where, {})

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


def _named_units(endpoint: Endpoint, payload: dict[str, object]) -> tuple[str, float]:
    """The unit an endpoint is billed in, and how many of it the request itself names."""
    if endpoint is Endpoint.SPEECH:
        text = payload.get("input")
        return CHARACTERS, float(len(text)) if isinstance(text, str) else 0.0
    if endpoint in (Endpoint.IMAGES, Endpoint.IMAGE_EDITS):
        n = payload.get("n", 1)
        count = n if isinstance(n, int) else int(n) if isinstance(n, str) and n.isdigit() else 1
        return IMAGES, float(count)
    return SECONDS, 0.0


def _consistent(usage: Usage) -> bool:
    return (
        usage.cached_tokens + usage.cache_write_tokens <= usage.prompt_tokens
        and usage.reasoning_tokens <= usage.completion_tokens
    )
