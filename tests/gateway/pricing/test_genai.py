"""genai-prices as the price book reads it: which provider a preset is, and rates that agree with its own sums."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import types as gp
from genai_prices.data import providers as TABLE

from gateway.pricing import genai
from gateway.pricing.genai import PROVIDER_IDS, billed_by, genai_usage, lookup
from providers import PRESETS
from providers.config import HostedProviderConfig, provider_config
from providers.wire import Usage

M = 1_000_000


def test_every_preset_has_a_place_in_the_table() -> None:
    # A new preset must say which genai-prices provider it is (or None); local costs nothing.
    assert set(PROVIDER_IDS) | {"local"} == set(PRESETS)
    known = {provider.id for provider in TABLE}
    assert {pid for pid in PROVIDER_IDS.values() if pid is not None} <= known


@pytest.mark.parametrize(
    ("entry", "billed"),
    [({"type": "openai"}, "openai"),
     ({"type": "together"}, "together"),  # the preset's api.together.ai is not genai-prices' api.together.xyz
     ({"type": "gemini"}, "google"),
     ({"type": "azure", "base_url": "https://my-resource.openai.azure.com"}, "azure"),
     ({"type": "openai", "base_url": "https://api.groq.com/openai/v1"}, "groq"),  # the URL says who serves
     ({"type": "openai", "base_url": "https://llm-proxy.example.internal/v1"}, "openai"),  # else the preset
     ({"type": "custom", "base_url": "https://api.together.xyz/v1"}, "together"),
     ({"type": "custom", "base_url": "http://127.0.0.1:8001/v1"}, None),
     ({"type": "anyscale"}, None)],
)  # fmt: skip
def test_the_provider_that_bills_a_deployment(entry: dict[str, str], billed: str | None) -> None:
    config = provider_config(entry)
    assert isinstance(config, HostedProviderConfig)
    assert billed_by(config) == billed


# Usages unlike the card's own probes: odd counts, a prompt between and beyond the tiers (128K, 200K, 272K).
USAGES = [
    Usage(1, 1),
    Usage(12_345, 678, cached_tokens=9_999, cache_write_tokens=1_001, reasoning_tokens=77),
    Usage(150_001, 3_000, cached_tokens=150_001, reasoning_tokens=3_000),
    Usage(300_000, 40_000, cache_write_tokens=299_999),
]


def _prices() -> list[tuple[str, gp.ModelPrice]]:
    every = []
    for provider in TABLE:
        for model in provider.models:
            periods = [model.prices] if isinstance(model.prices, gp.ModelPrice) else [c.prices for c in model.prices]
            every += [(f"{provider.id}/{model.id}", price) for price in periods if genai._countable(price)]
    return every


def _at_the_tiers(price: gp.ModelPrice) -> list[Usage]:
    """A prompt exactly at each tier's start (its base rate) and one token past it (the tier's rate)."""
    starts = {tier.start for value in vars(price).values() if isinstance(value, gp.TieredPrices) for tier in value.tiers}
    return [Usage(prompt, 10, cached_tokens=prompt // 3) for start in starts for prompt in (start, start + 1)]


def test_the_card_agrees_with_genai_prices_on_every_price_in_the_table() -> None:
    prices = _prices()
    assert len(prices) > 2000  # the whole pinned table, not a sample
    disagree = []
    for name, price in prices:
        card = genai._card(price)
        for usage in USAGES + _at_the_tiers(price):
            try:
                theirs = price.calc_price(genai_usage(usage))["total_price"]
            except ValueError:
                continue  # a usage this price refuses (none in 0.2.3); the card is then never used for it
            if card(usage) != theirs:
                disagree.append((name, usage))
    assert not disagree


def test_no_price_in_the_table_needs_genai_prices_on_every_call() -> None:
    # Each price's card passes its own check, so every request is priced at the card's speed (bench/pricing.py).
    assert [name for name, price in _prices() if genai._checked_card(price) is None] == []


def test_a_price_the_card_cannot_reproduce_is_left_to_genai_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong_card(price: gp.ModelPrice) -> genai._Card:
        return genai._Card(Decimal(1), None, None, None, None, Decimal(0))

    monkeypatch.setattr(genai, "_card", wrong_card)
    rates = lookup(provider_config({"type": "openai"}), "gpt-4o")
    assert rates is not None
    usage = Usage(10_000, 500, cached_tokens=8_192)
    # https://platform.openai.com/docs/pricing: gpt-4o input $2.50, cached input $1.25, output $10.00.
    assert rates.usd(usage) == pytest.approx((1_808 * 2.50 + 8_192 * 1.25 + 500 * 10.00) / M, rel=1e-12)
    assert rates.dearest(1_000, 500) == pytest.approx((1_000 * 2.50 + 500 * 10.00) / M, rel=1e-12)


def test_a_price_change_applies_from_its_date() -> None:
    # OpenAI cut o3's price by 80% on 2025-06-10 (https://platform.openai.com/docs/pricing, and its changelog
    # https://platform.openai.com/docs/changelog): $10 input / $40 output before, $2 / $8 since.
    usage = Usage(1_000, 1_000)
    before = lookup(provider_config({"type": "openai"}), "o3", now=lambda: datetime(2025, 6, 1, tzinfo=UTC))
    since = lookup(provider_config({"type": "openai"}), "o3", now=lambda: datetime(2025, 6, 11, tzinfo=UTC))
    assert before is not None and before.usd(usage) == pytest.approx((1_000 * 10 + 1_000 * 40) / M, rel=1e-12)
    assert since is not None and since.usd(usage) == pytest.approx((1_000 * 2 + 1_000 * 8) / M, rel=1e-12)


@pytest.mark.parametrize("hour", [3, 20])  # DeepSeek's standard hours (00:30-16:30 UTC), then its off-peak ones
def test_a_price_by_the_hour_is_the_one_genai_prices_picks_for_that_hour(hour: int) -> None:
    when = datetime(2026, 11, 2, hour, 0, tzinfo=UTC)
    rates = lookup(provider_config({"type": "deepseek"}), "deepseek-chat", now=lambda: when)
    usage = Usage(4_000, 900, cached_tokens=2_048)
    theirs = genai_prices.calc_price(genai_usage(usage), "deepseek-chat", provider_id="deepseek",
                                     genai_request_timestamp=when).total_price  # fmt: skip
    assert rates is not None and rates.usd(usage) == float(theirs)
    other = 20 if hour == 3 else 3
    assert rates.usd(usage) != lookup(provider_config({"type": "deepseek"}), "deepseek-chat",
                                      now=lambda: when.replace(hour=other)).usd(usage)  # type: ignore[union-attr]  # fmt: skip


def test_a_free_model_is_priced_at_zero_not_unknown() -> None:
    # OpenRouter's ":free" variants cost nothing (https://openrouter.ai/models?max_price=0).
    rates = lookup(provider_config({"type": "openrouter"}), "meta-llama/llama-3.3-70b-instruct:free")
    assert rates is not None and rates.usd(Usage(1_000, 1_000)) == 0.0


def test_a_per_request_fee_is_charged_once() -> None:
    # Perplexity Sonar: $1 input, $1 output per 1M tokens, and a request fee per 1,000 requests of $5, $8 or $12
    # by search context size; genai-prices 0.2.3 takes the $12 (Perplexity's last published Sonar rates, per its
    # note: https://docs.perplexity.ai/docs/agent-api/migrate-from-sonar/overview).
    rates = lookup(provider_config({"type": "perplexity"}), "sonar")
    assert rates is not None
    assert rates.usd(Usage(1_000, 500)) == pytest.approx((1_000 * 1 + 500 * 1) / M + 12 / 1_000, rel=1e-12)
    assert rates.usd(Usage(0, 0)) == pytest.approx(12 / 1_000, rel=1e-12)


@pytest.mark.parametrize(
    ("entry", "model"),
    [({"type": "custom", "base_url": "http://127.0.0.1:8001/v1"}, "gpt-4o"),  # a URL genai-prices does not know
     ({"type": "anyscale"}, "meta-llama/Llama-3-8b-chat-hf"),
     ({"type": "openai"}, "whisper-1"),  # priced per audio hour
     ({"type": "local"}, "SmolLM2-135M-Instruct")],
)  # fmt: skip
def test_what_genai_prices_cannot_price(entry: dict[str, str], model: str) -> None:
    assert lookup(provider_config(entry), model) is None
