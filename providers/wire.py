"""The OpenAI wire vocabulary: endpoints, usage, and the headers the gateway adds.

A leaf: it imports nothing of ours, so every package (and every layer of
the gateway) can speak these names without importing anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Endpoint(StrEnum):
    """An OpenAI endpoint, named by its path below ``/v1``."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MODERATIONS = "moderations"
    # Audio and images (docs/media.md): bodies that are not chat, answers that may not be JSON.
    TRANSCRIPTIONS = "audio/transcriptions"
    TRANSLATIONS = "audio/translations"
    SPEECH = "audio/speech"
    IMAGES = "images/generations"
    IMAGE_EDITS = "images/edits"


class Door(StrEnum):
    """A URL that speaks another API, translated to and from one of the endpoints above; named as metrics and the ledger label it."""

    RESPONSES = "responses"  # OpenAI's POST /v1/responses, routed as chat/completions
    MESSAGES = "messages"  # Anthropic's POST /v1/messages, routed as chat/completions


# The field that carries each endpoint's prompt.
PROMPT_FIELDS = {
    Endpoint.CHAT: "messages",
    Endpoint.COMPLETIONS: "prompt",
    Endpoint.EMBEDDINGS: "input",
    Endpoint.MODERATIONS: "input",
    Endpoint.SPEECH: "input",
    Endpoint.IMAGES: "prompt",
    Endpoint.IMAGE_EDITS: "prompt",
    Endpoint.TRANSCRIPTIONS: "prompt",
    Endpoint.TRANSLATIONS: "prompt",
}
# The endpoints of docs/media.md: bodies that are not chat, answers of any type, usage in their own unit.
MEDIA_ENDPOINTS = frozenset({Endpoint.TRANSCRIPTIONS, Endpoint.TRANSLATIONS, Endpoint.SPEECH, Endpoint.IMAGES,
                             Endpoint.IMAGE_EDITS})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one answer: as the upstream reported it, or counted here and marked estimated.

    As OpenAI counts: ``prompt_tokens`` include those read from the cache
    (``cached_tokens``) and those written to it (``cache_write_tokens``,
    Anthropic's cache creation); ``completion_tokens`` include
    ``reasoning_tokens``. Each is priced at its own rate.
    """

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # What a media endpoint is billed in, beside any tokens: "seconds" of audio, "characters" of speech
    # input, "images" made; ``units`` of it (docs/media.md).
    unit: str | None = None
    units: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class RequestTimings:
    """How long one request took inside an inference engine in this process (as vLLM's ``RequestOutput.metrics``).

    Reported beside ``Usage`` by the local provider, one per engine request
    (a batch of prompts is one engine request each); hosted providers report none.
    """

    first_token_seconds: float  # from the request's arrival at the engine to its first token
    between_tokens_seconds: float | None  # the mean time between later tokens; None for a single token
    # The engine's own clock (wall-clock seconds) for tracing: when it took the request, how long it
    # waited for a batch, its prefill (to the first token) and its decode (first token to the last).
    arrived_at: float | None = None
    queued_seconds: float | None = None
    prefill_seconds: float | None = None
    decode_seconds: float | None = None


def usage_requested(payload: dict[str, Any]) -> bool:
    """Whether a stream request asks for a usage chunk (``stream_options.include_usage``)."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class Header:
    """The response and request headers the gateway adds or reads, lower-case as on the wire."""

    REQUEST_ID = "x-request-id"
    PROCESS_TIME = "x-process-time"
    TIMEOUT = "x-switchyard-timeout"  # request: the client's deadline in seconds
    PROVIDER = "x-switchyard-provider"
    MODEL = "x-switchyard-model"
    ATTEMPTS = "x-switchyard-attempts"
    FALLBACK_CHAIN = "x-switchyard-fallback-chain"
    ROUTE_REASON = "x-switchyard-route-reason"  # routing local_first: why the request started where it did
    USAGE_ESTIMATED = "x-switchyard-usage-estimated"
    DROPPED_PARAMS = "x-switchyard-dropped-params"
    BUDGET_REMAINING_TOKENS = "x-switchyard-budget-remaining-tokens"
    COST_USD = "x-switchyard-cost-usd"  # what the answer cost, where a price is known
    CACHE = "x-switchyard-cache"  # a model with a response cache: hit, miss or bypass
    CACHE_SIMILARITY = "x-switchyard-cache-similarity"  # a semantic hit: how close the two questions were
    BUDGET_REMAINING_USD = "x-switchyard-budget-remaining-usd"  # the least any dollar budget of the key has left
    RETRY_AFTER = "retry-after"
    SHOULD_RETRY = "x-should-retry"  # read by the OpenAI SDKs
    LIMIT_REQUESTS = "x-ratelimit-limit-requests"
    REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
    RESET_REQUESTS = "x-ratelimit-reset-requests"
    LIMIT_TOKENS = "x-ratelimit-limit-tokens"
    REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
    RESET_TOKENS = "x-ratelimit-reset-tokens"


# Response headers a browser client may read (CORS hides all others): every one above but the request's own.
EXPOSED_HEADERS = tuple(
    value for name, value in vars(Header).items()
    if name.isupper() and value not in (Header.TIMEOUT, Header.SHOULD_RETRY)
)  # fmt: skip
