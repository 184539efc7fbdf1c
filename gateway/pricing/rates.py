"""What a deployment charges for one answer's tokens: the shape every price source takes.

A ``Rates`` turns a ``Usage`` into US dollars. Three kinds exist: the
model's own ``price:`` from ``providers.yaml`` (``ConfigRates``, here), a
local model's zero (``FREE``, here), and genai-prices' table
(``gateway/pricing/genai.py``). The price book picks one per deployment
once; each request then costs one call.

Every ``Usage`` given here is consistent (the price book checks):
``cached_tokens + cache_write_tokens <= prompt_tokens`` and
``reasoning_tokens <= completion_tokens``, OpenAI's counting, where the
prompt includes both cache counts and the completion includes reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.config import ModelPrice
from providers.media import CHARACTERS, IMAGES, SECONDS
from providers.wire import Usage

MTOK = 1_000_000


class Rates(Protocol):
    @property
    def source(self) -> str:
        """What the ledger records as the price's origin: "config", "local", "genai-prices <version>"."""
        ...

    def usd(self, usage: Usage) -> float:
        """What ``usage`` costs, in US dollars."""
        ...

    def dearest(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The most these counts can cost, however they split: the largest ``usd`` of ``corners``."""
        ...


def corners(prompt_tokens: int, completion_tokens: int) -> tuple[Usage, ...]:
    """Every extreme split of these counts: the prompt all uncached, all read from a cache or all written to
    one; the completion all output or all reasoning. The cost is linear in the split (the prompt's size,
    which picks a tier, is fixed), so the dearest split is one of these."""
    return tuple(
        Usage(prompt_tokens, completion_tokens, cached_tokens=cached, cache_write_tokens=written, reasoning_tokens=reasoning)
        for cached, written in ((0, 0), (prompt_tokens, 0), (0, prompt_tokens))
        for reasoning in (0, completion_tokens)
    )


@dataclass(frozen=True, slots=True)
class Free:
    """A model that costs nothing to call: the engine in this process."""

    source: str

    def usd(self, usage: Usage) -> float:
        return 0.0

    def dearest(self, prompt_tokens: int, completion_tokens: int) -> float:
        return 0.0


FREE = Free("local")


def unit_rates(price: ModelPrice) -> dict[str, float]:
    """A ``price:``'s rates per media unit (``Usage.unit``), in US dollars."""
    per_unit = {
        SECONDS: None if price.per_audio_minute is None else price.per_audio_minute / 60,
        CHARACTERS: None if price.per_million_characters is None else price.per_million_characters / MTOK,
        IMAGES: price.per_image,
    }
    return {unit: rate for unit, rate in per_unit.items() if rate is not None}


@dataclass(frozen=True, slots=True)
class ConfigRates:
    """A model's own ``price:``: the operator's rates (negotiated, or a private deployment's), per million tokens.

    Reasoning tokens are completion tokens and cost the output rate, as
    OpenAI and Anthropic bill them; so no rate of their own.
    """

    input: float
    cached_input: float
    cache_write: float
    output: float
    source: str = "config"

    @classmethod
    def of(cls, price: ModelPrice) -> ConfigRates:
        """The rates of a ``price:`` entry: an unset cache rate is the input rate."""
        input_rate = price.input_per_mtok
        cached = price.cached_input_per_mtok
        written = price.cache_write_per_mtok
        return cls(
            input=input_rate,
            cached_input=input_rate if cached is None else cached,
            cache_write=input_rate if written is None else written,
            output=price.output_per_mtok,
        )

    def usd(self, usage: Usage) -> float:
        cached, written = usage.cached_tokens, usage.cache_write_tokens
        fresh = usage.prompt_tokens - cached - written
        total = (
            fresh * self.input
            + cached * self.cached_input
            + written * self.cache_write
            + usage.completion_tokens * self.output
        )
        return total / MTOK

    def dearest(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * max(self.input, self.cached_input, self.cache_write) + completion_tokens * self.output) / MTOK
