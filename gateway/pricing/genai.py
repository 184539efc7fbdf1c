"""Prices from genai-prices (the pydantic team's table): which of its providers a deployment is, and its rates.

Which provider bills a deployment: the one whose API its ``base_url`` is
(genai-prices matches each provider's URL, so ``type: openai`` with Groq's
base_url gets Groq's prices, and ``type: custom`` pointing at
api.together.xyz gets Together's), else the one its preset names
(``PROVIDER_IDS``: a proxy in front of OpenAI keeps OpenAI's prices). A
``custom`` provider names none, so a URL genai-prices does not know leaves
it unpriced. The model name alone is never used to guess: a vLLM on
127.0.0.1 serving Llama bills nobody per token, and some host's list price
for Llama would be a wrong number where the truth is "unknown".

The rates: genai-prices' ``calc_price`` takes 110-160 µs a call (it
checks the price's units and decomposes the usage generically each time),
too slow for once per request on the event loop. So each of a model's
prices is read once into a ``_Card`` of the five rates our usage reports
(input, cache read, cache write, output, reasoning; each flat or tiered on
the prompt's size, as genai-prices tiers them) and a per-request fee, and
the card is checked against genai-prices' own calculation on probe usages
(tier edges included) before it is used. A price the card does not
reproduce exactly is computed by genai-prices on every call instead
(``_Exact``); tests/gateway/pricing/test_genai.py holds every price in the
pinned table to the card.

A price in units our usage does not count (characters, audio hours,
pages, messages) and none that it does is no price: the cost would read
zero where it is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

import genai_prices
from genai_prices import types as gp
from genai_prices.data_snapshot import get_snapshot

from gateway.pricing.rates import MTOK, Rates, corners
from providers import LocalProviderConfig
from providers.config import HostedProviderConfig
from providers.wire import Usage

VERSION = f"genai-prices {genai_prices.__version__}"

# Each hosted preset's provider in genai-prices (its ``id``), for a base_url genai-prices does not know;
# None: no prices but by URL. (`local` costs nothing: the price book never asks.)
PROVIDER_IDS: Mapping[str, str | None] = {
    "openai": "openai",
    "azure": "azure",  # deployment names that match a model's name (gpt-4o) get OpenAI's, Anthropic's... prices
    "anthropic": "anthropic",
    "groq": "groq",
    "together": "together",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "perplexity": "perplexity",
    "xai": "x-ai",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "gemini": "google",
    "anyscale": None,
    "custom": None,
}

# The price keys of the units our usage reports (each per million tokens), and the per-request fee.
_TOKEN_KEYS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok", "output_reasoning_mtok")
_REQUEST_KEY = "requests_kcount"  # US dollars per thousand requests
_MTOK = Decimal(MTOK)
_KILO = Decimal(1000)
_ZERO = Decimal(0)

# A rate: flat, or tiered as genai-prices tiers it: the highest tier whose start the prompt exceeds
# applies to all tokens (``tiers`` highest start first).
_Rate = Decimal | tuple[Decimal, tuple[tuple[int, Decimal], ...]] | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def lookup(
    provider: HostedProviderConfig | LocalProviderConfig, model: str, now: Callable[[], datetime] = _utc_now
) -> Rates | None:
    """genai-prices' rates for ``model`` at ``provider``; None when it prices neither, or not in units we count.

    ``now``: the clock that picks a price by date or hour (DeepSeek's off-peak), for models that have several.
    """
    if isinstance(provider, LocalProviderConfig):
        return None
    provider_id = billed_by(provider)
    if provider_id is None:
        return None
    try:
        # A zero usage: the public way to ask which model a name matches at that provider.
        found = genai_prices.calc_price(genai_prices.Usage(), model, provider_id=provider_id)
    except (LookupError, ValueError):  # LookupError: no such model there; ValueError: a price it cannot use
        return None
    return _rates_of(found.model, now)


def billed_by(provider: HostedProviderConfig) -> str | None:
    """The genai-prices provider whose API ``provider``'s base_url is, else the one its preset names (or None)."""
    try:
        return get_snapshot().find_provider(None, None, provider.resolved_base_url).id
    except LookupError:
        return PROVIDER_IDS.get(provider.type)


class _Price(Protocol):
    """One of a model's prices, evaluated: a ``_Card``, or genai-prices itself (``_Exact``)."""

    def __call__(self, usage: Usage) -> Decimal: ...

    def dearest(self, prompt_tokens: int, completion_tokens: int) -> Decimal: ...


def _rates_of(model: gp.ModelInfo, now: Callable[[], datetime]) -> Rates | None:
    periods = [model.prices] if isinstance(model.prices, gp.ModelPrice) else [c.prices for c in model.prices]
    if not all(_countable(price) for price in periods):
        return None
    prices: dict[int, _Price] = {id(price): _checked_card(price) or _Exact(price) for price in periods}
    if len(periods) == 1:
        return _Single(prices[id(model.prices)])
    return _Periods(model, prices, now)


def _countable(price: gp.ModelPrice) -> bool:
    """Whether our usage can be priced by it: a free model (no price at all), or one with a token or request rate."""
    keys = {key for key, value in vars(price).items() if value is not None}
    return not keys or any(key in keys for key in (*_TOKEN_KEYS, _REQUEST_KEY))


@dataclass(frozen=True, slots=True)
class _Single:
    """A model with one price for all time."""

    price: _Price
    source: str = VERSION

    def usd(self, usage: Usage) -> float:
        return float(self.price(usage))

    def dearest(self, prompt_tokens: int, completion_tokens: int) -> float:
        return float(self.price.dearest(prompt_tokens, completion_tokens))


@dataclass(frozen=True, slots=True)
class _Periods:
    """A model whose price depends on when it is called (a new price from a date, DeepSeek's off-peak hours)."""

    model: gp.ModelInfo
    by_price: Mapping[int, _Price]  # id() of each of the model's ModelPrice objects
    now: Callable[[], datetime]
    source: str = VERSION

    def usd(self, usage: Usage) -> float:
        return float(self._now()(usage))

    def dearest(self, prompt_tokens: int, completion_tokens: int) -> float:
        return float(self._now().dearest(prompt_tokens, completion_tokens))

    def _now(self) -> _Price:
        # get_prices picks the period as genai-prices does; it returns one of the objects keyed here.
        return self.by_price[id(self.model.get_prices(self.now()))]


@dataclass(frozen=True, slots=True)
class _Card:
    """One genai-prices ``ModelPrice``, read into the rates our usage reports (per million tokens)."""

    input: _Rate
    cache_read: _Rate
    cache_write: _Rate
    output: _Rate
    reasoning: _Rate
    per_request: Decimal

    def __call__(self, usage: Usage) -> Decimal:
        # As genai-prices decomposes a usage: a more specific count (cache read, reasoning) is taken
        # out of its parent (input, output) only when the model prices it; else it stays at the parent's rate.
        prompt = usage.prompt_tokens
        fresh, output = prompt, usage.completion_tokens
        total = self.per_request
        if self.cache_read is not None:
            fresh -= usage.cached_tokens
            total += _at(self.cache_read, prompt) * usage.cached_tokens
        if self.cache_write is not None:
            fresh -= usage.cache_write_tokens
            total += _at(self.cache_write, prompt) * usage.cache_write_tokens
        if self.reasoning is not None:
            output -= usage.reasoning_tokens
            total += _at(self.reasoning, prompt) * usage.reasoning_tokens
        if self.input is not None:
            total += _at(self.input, prompt) * fresh
        if self.output is not None:
            total += _at(self.output, prompt) * output
        return total

    def dearest(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """The prompt all at its dearest input rate, the completion all at its dearest output rate."""
        prompt_rates = [_at(r, prompt_tokens) for r in (self.input, self.cache_read, self.cache_write) if r is not None]
        output_rates = [_at(r, prompt_tokens) for r in (self.output, self.reasoning) if r is not None]
        return (
            self.per_request
            + max(prompt_rates, default=_ZERO) * prompt_tokens
            + max(output_rates, default=_ZERO) * completion_tokens
        )


def _at(rate: Decimal | tuple[Decimal, tuple[tuple[int, Decimal], ...]], prompt_tokens: int) -> Decimal:
    """US dollars per token of ``rate`` for a prompt this long."""
    if isinstance(rate, Decimal):
        return rate
    base, tiers = rate
    for start, price in tiers:
        if prompt_tokens > start:
            return price
    return base


def _card(price: gp.ModelPrice) -> _Card:
    def rate(key: str) -> _Rate:
        value = getattr(price, key)
        if value is None:
            return None
        if isinstance(value, gp.TieredPrices):
            tiers = sorted(((tier.start, tier.price / _MTOK) for tier in value.tiers), reverse=True)
            return value.base / _MTOK, tuple(tiers)
        return value / _MTOK

    fee = getattr(price, _REQUEST_KEY)  # a tiered fee is not read: the check then fails, and genai-prices computes it
    per_request = fee / _KILO if isinstance(fee, Decimal) else _ZERO
    return _Card(input=rate("input_mtok"), cache_read=rate("cache_read_mtok"), cache_write=rate("cache_write_mtok"),
                 output=rate("output_mtok"), reasoning=rate("output_reasoning_mtok"), per_request=per_request)  # fmt: skip


def _checked_card(price: gp.ModelPrice) -> _Card | None:
    """The card of ``price`` if it reproduces genai-prices' own total on every probe, else None."""
    card = _card(price)
    try:
        for usage in _probes(price):
            if card(usage) != price.calc_price(genai_usage(usage))["total_price"]:
                return None
    except ValueError:  # genai-prices refuses the probe: a price shape the card does not know
        return None
    return card


def _probes(price: gp.ModelPrice) -> list[Usage]:
    """Usages that exercise each rate: every count non-zero, each side of every tier's start, and none at all."""
    starts = {tier.start for value in vars(price).values() if isinstance(value, gp.TieredPrices) for tier in value.tiers}
    prompts = sorted({1000, *starts, *(start + 1 for start in starts)})
    probes = [Usage(0, 0), Usage(7, 3)]
    for prompt in prompts:
        probes.append(Usage(prompt, 700, cached_tokens=prompt * 3 // 10, cache_write_tokens=prompt // 5,
                            reasoning_tokens=200))  # fmt: skip
    return probes


@dataclass(frozen=True, slots=True)
class _Exact:
    """genai-prices computing the cost itself, every call (slow: for prices the card cannot reproduce)."""

    price: gp.ModelPrice

    def __call__(self, usage: Usage) -> Decimal:
        return self.price.calc_price(genai_usage(usage))["total_price"]

    def dearest(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return max(self(usage) for usage in corners(prompt_tokens, completion_tokens))


def genai_usage(usage: Usage) -> genai_prices.Usage:
    """Our usage in genai-prices' words; both count as OpenAI does (the prompt includes the cache counts,
    the output includes reasoning)."""
    return genai_prices.Usage(
        input_tokens=usage.prompt_tokens,
        cache_read_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.completion_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
    )
