"""What the gateway knows about each provider ``type:`` before reading config.

A preset is data: where the provider lives, how it takes its key, which
environment variable the key is read from when the config names none, which
endpoints it offers, and its parameter map (``providers.params``). Quirks
belong here, not in ``if provider == ...`` branches. docs/providers.md cites
the provider's documentation for each entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from providers.params import Rule, Translate, Unsupported
from providers.wire import Door, Endpoint

CHAT_ONLY = frozenset({Endpoint.CHAT})


@dataclass(frozen=True, slots=True)
class ProviderPreset:
    base_url: str | None
    api_key_env: str | None
    # A custom server (vLLM, llama.cpp, another Switchyard) often needs no key.
    requires_api_key: bool = True
    # How the key is sent: "Authorization: Bearer <key>", Azure's "api-key: <key>", or Anthropic's "x-api-key: <key>".
    auth: Literal["bearer", "api-key", "x-api-key"] = "bearer"
    # Where requests go: "{base_url}/{endpoint}", or Azure's per-deployment URLs.
    url_style: Literal["openai", "azure"] = "openai"
    # The wire protocol, and so the adapter (providers/registry.py): OpenAI's, or Anthropic's Messages API.
    protocol: Literal["openai", "anthropic"] = "openai"
    # Headers on every request, under the config's own `headers:` (which override them).
    headers: Mapping[str, str] = field(default_factory=dict)
    # Client request headers passed on to the upstream when the client sends them (lower-case).
    forwarded_headers: frozenset[str] = frozenset()
    api_version: str | None = None  # Azure's api-version query parameter
    endpoints: frozenset[Endpoint] = frozenset(Endpoint)
    # Rules for chat and completions parameters; a parameter not listed is forwarded.
    params: Mapping[str, Rule] = field(default_factory=dict)
    # The bundled engine in this process instead of an HTTP upstream (providers/local/).
    local: bool = False
    # The other APIs the upstream speaks itself: a request through that door is passed through untranslated.
    native_doors: frozenset[Door] = frozenset()
    # It serves OpenAI's Files and Batch APIs (/files, /batches), billed at this share off the ordinary price:
    # a model's `batch: {mode: native}` may use them (docs/batches.md cites each). None: no batch API.
    batch_discount: float | None = None

    def key_from(self, environ: Mapping[str, str]) -> str | None:
        """The key in the preset's environment variable, when it has one and it is set (empty is not set)."""
        return (environ.get(self.api_key_env) or None) if self.api_key_env else None


CHAT_AND_COMPLETIONS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})
OPENAI_ENDPOINTS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS})
CHAT_EMBEDDINGS_MODERATIONS = frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.MODERATIONS})
# Audio and images in OpenAI's shape, where the provider documents them (docs/media.md cites each).
WHISPER = frozenset({Endpoint.TRANSCRIPTIONS, Endpoint.TRANSLATIONS})
MEDIA = WHISPER | {Endpoint.SPEECH, Endpoint.IMAGES, Endpoint.IMAGE_EDITS}

# OpenAI renamed max_tokens to max_completion_tokens; providers that kept the old name get it translated.
_MAX_TOKENS = {"max_completion_tokens": Translate("max_tokens")}
_NO_LOGPROBS = {"logprobs": Unsupported(allowed=(False,)), "top_logprobs": Unsupported()}

PRESETS: dict[str, ProviderPreset] = {
    "openai": ProviderPreset(
        base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY", native_doors=frozenset({Door.RESPONSES}),
        batch_discount=0.5,
    ),
    "groq": ProviderPreset(
        base_url="https://api.groq.com/openai/v1",
        api_key_env="GROQ_API_KEY",
        endpoints=CHAT_ONLY | WHISPER,
        params={**_NO_LOGPROBS, "logit_bias": Unsupported(), "n": Unsupported(allowed=(1,))},
        batch_discount=0.25,
    ),
    "together": ProviderPreset(
        base_url="https://api.together.ai/v1",
        api_key_env="TOGETHER_API_KEY",
        endpoints=OPENAI_ENDPOINTS | {Endpoint.IMAGES},
        # Together's logprobs is a count with its own answer shape, not OpenAI's flag.
        params={**_MAX_TOKENS, **_NO_LOGPROBS},
    ),
    "mistral": ProviderPreset(
        base_url="https://api.mistral.ai/v1",
        api_key_env="MISTRAL_API_KEY",
        endpoints=CHAT_EMBEDDINGS_MODERATIONS,
        # Mistral answers 422 to any field outside its schema.
        params={
            **_MAX_TOKENS,
            **_NO_LOGPROBS,
            "seed": Translate("random_seed"),
            "logit_bias": Unsupported(),
            "user": Unsupported(),
            "stream_options": Unsupported(),
        },
    ),
    "deepseek": ProviderPreset(
        base_url="https://api.deepseek.com/v1",
        api_key_env="DEEPSEEK_API_KEY",
        endpoints=CHAT_ONLY,
        params=_MAX_TOKENS,
    ),
    "perplexity": ProviderPreset(
        base_url="https://api.perplexity.ai",
        api_key_env="PERPLEXITY_API_KEY",
        endpoints=CHAT_ONLY,
        params={
            **_MAX_TOKENS,
            **_NO_LOGPROBS,
            "tools": Unsupported(),
            "tool_choice": Unsupported(),
            "parallel_tool_calls": Unsupported(),
            "logit_bias": Unsupported(),
            "seed": Unsupported(),
        },
    ),
    "xai": ProviderPreset(
        base_url="https://api.x.ai/v1",
        api_key_env="XAI_API_KEY",
        endpoints=CHAT_AND_COMPLETIONS,
        params={"logit_bias": Unsupported()},
    ),
    # Fireworks' image models answer at their own URLs (.../workflows/{model}/text_to_image) with their own
    # body, and its Whisper at another host: not OpenAI's endpoints, so none is offered here (docs/media.md).
    "fireworks": ProviderPreset(
        base_url="https://api.fireworks.ai/inference/v1",
        api_key_env="FIREWORKS_API_KEY",
        endpoints=OPENAI_ENDPOINTS,
        params=_MAX_TOKENS,
    ),
    # OpenRouter drops what the routed model does not take by itself; app attribution
    # (HTTP-Referer, X-OpenRouter-Title / X-Title) goes in the provider's `headers:`.
    "openrouter": ProviderPreset(
        base_url="https://openrouter.ai/api/v1", api_key_env="OPENROUTER_API_KEY", endpoints=OPENAI_ENDPOINTS
    ),
    # Anyscale's public multi-tenant endpoint closed on 2024-08-01; the preset serves hosted deployments.
    "anyscale": ProviderPreset(
        base_url="https://api.endpoints.anyscale.com/v1", api_key_env="ANYSCALE_API_KEY", endpoints=OPENAI_ENDPOINTS
    ),
    # base_url is the resource endpoint, https://{resource}.openai.azure.com; models are deployment names.
    "azure": ProviderPreset(
        base_url=None,
        api_key_env="AZURE_OPENAI_API_KEY",
        auth="api-key",
        url_style="azure",
        api_version="2024-10-21",
        endpoints=OPENAI_ENDPOINTS | MEDIA,
        batch_discount=0.5,  # on a Global Batch deployment
    ),
    # Google's OpenAI-compatible endpoint (a beta, by Google's word). Fields its schema lacks are a 400
    # "Unknown name ...: Cannot find field" (docs/providers.md has the reports); its error body is a
    # list around Google's status object, which providers/errors.py reads.
    "gemini": ProviderPreset(
        base_url="https://generativelanguage.googleapis.com/v1beta/openai",
        api_key_env="GEMINI_API_KEY",
        endpoints=frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS}),
        params={"frequency_penalty": Unsupported(), "presence_penalty": Unsupported(), "seed": Unsupported()},
    ),
    # Anthropic's Messages API, translated to and from chat completions (providers/anthropic/). What the
    # translation cannot carry is in the map; max_completion_tokens is Anthropic's required max_tokens.
    "anthropic": ProviderPreset(
        base_url="https://api.anthropic.com",
        api_key_env="ANTHROPIC_API_KEY",
        auth="x-api-key",
        protocol="anthropic",
        endpoints=CHAT_ONLY,
        native_doors=frozenset({Door.MESSAGES}),
        headers={"anthropic-version": "2023-06-01"},
        forwarded_headers=frozenset({"anthropic-beta"}),
        params={
            **_MAX_TOKENS,
            **_NO_LOGPROBS,
            "n": Unsupported(allowed=(1,)),
            "logit_bias": Unsupported(),
            "presence_penalty": Unsupported(),
            "frequency_penalty": Unsupported(),
            "seed": Unsupported(),
            "response_format": Unsupported(allowed=({"type": "text"},)),
            **{name: Unsupported() for name in ("functions", "function_call", "audio", "prediction", "web_search_options",
                                                "reasoning_effort", "store", "metadata", "service_tier")},
            "modalities": Unsupported(allowed=(["text"],)),
        },
    ),
    # A custom server may serve OpenAI's Batch API (another Switchyard does; one that does not answers 404),
    # at no discount unless the model's `batch: {discount: ...}` says.
    "custom": ProviderPreset(base_url=None, api_key_env=None, requires_api_key=False, batch_discount=0.0),
    # The local engine: chat and completions for a causal LM, embeddings for a sentence encoder
    # (each local provider offers the ones its model's kind can serve: providers/local/).
    "local": ProviderPreset(
        base_url=None,
        api_key_env=None,
        requires_api_key=False,
        endpoints=OPENAI_ENDPOINTS,
        params={
            # tools, tool_choice, parallel_tool_calls, response_format and vLLM's structured_outputs / guided_*
            # are taken: constrained decoding enforces them (providers/local/constraints.py).
            **{name: Unsupported() for name in ("functions", "function_call", "audio", "prediction",
                                                "web_search_options", "reasoning_effort")},
            "modalities": Unsupported(allowed=(["text"],)),
            "suffix": Unsupported(),  # completions: no fill-in-the-middle
            "best_of": Unsupported(allowed=(1,)),
        },
        local=True,
    ),
}

# Every client header some preset forwards: the relay reads only these from a request.
FORWARDED_HEADERS = frozenset().union(*(preset.forwarded_headers for preset in PRESETS.values()))
