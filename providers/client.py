"""One interface to every provider, in-process: ``OpenAICompatibleAPI(config).chat(messages)``.

Built on the official ``openai`` SDK, so answers are the SDK's objects and
errors the SDK's exception classes. The provider presets (``presets.py``)
supply the base URL, the key's environment variable, the auth style and the
parameter map, exactly as the gateway applies them::

    api = OpenAICompatibleAPI({"provider": "groq", "default_model": "llama-3.1-8b-instant"})
    print(api.chat([{"role": "user", "content": "Hi"}]))
    for piece in api.chat(messages, stream=True):
        print(piece, end="")

``fallback`` lists more provider configs, tried in order when a call fails
with an error another provider may not have (connection, timeout, 429, 5xx,
a rejected key). ``AsyncOpenAICompatibleAPI`` is the same with ``await``:
both sides share :class:`_Targets`, which does everything but the I/O.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from openai.types import CreateEmbeddingResponse, Moderation
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion import Completion

from providers.wire import Endpoint
from providers.base import UnsupportedPolicy
from providers.params import adapt
from providers.presets import PRESETS, ProviderPreset
from providers.tokens import count_messages, count_text

T = TypeVar("T")
Messages = Sequence[Mapping[str, Any]]

# Errors another provider may not have: the next config in `fallback` is tried.
FALLBACK_ERRORS = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
    openai.AuthenticationError,
    openai.PermissionDeniedError,
)
# What a bad key looks like (xAI answers one with a 400).
_BAD_KEY_ERRORS = (openai.AuthenticationError, openai.PermissionDeniedError, openai.BadRequestError)


class MissingAPIKey(ValueError):
    """The provider needs a key and none was given: names the environment variable to set."""


class NotOffered(ValueError):
    """The provider has no such endpoint (embeddings at Groq, moderations at most)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One provider config, resolved: where to call, with which key, and its preset."""

    provider: str
    preset: ProviderPreset
    base_url: str
    api_key: str | None
    default_model: str | None
    timeout: float
    max_retries: int
    headers: Mapping[str, str]
    api_version: str | None
    unsupported_params: UnsupportedPolicy
    auth: str  # "bearer" or "api-key"

    def sdk_options(self) -> dict[str, Any]:
        """Keyword arguments for the SDK's client classes (OpenAI / AzureOpenAI and their async twins)."""
        options: dict[str, Any] = {"timeout": self.timeout, "max_retries": self.max_retries}
        headers = dict(self.headers)
        if self.preset.url_style == "azure":
            # An Entra ID token goes as a Bearer token, a key in the api-key header.
            credential = {"azure_ad_token": self.api_key} if self.auth == "bearer" else {"api_key": self.api_key}
            return {**options, **credential, "azure_endpoint": self.base_url, "api_version": self.api_version,
                    "default_headers": headers}  # fmt: skip
        # The SDK insists on a key; a server that needs none ignores the header.
        return {**options, "base_url": self.base_url, "api_key": self.api_key or "none", "default_headers": headers}


def resolve(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Target:
    """A config dict (or a ``providers.yaml`` entry) as a :class:`Target`; raises on what cannot work."""
    environ = os.environ if environ is None else environ
    provider = config.get("provider") or config.get("type") or "openai"
    preset = PRESETS.get(provider)
    if preset is None:
        raise ValueError(f"unknown provider {provider!r}; expected one of: {', '.join(PRESETS)}")
    api_key = config.get("api_key") or (environ.get(preset.api_key_env) if preset.api_key_env else None)
    if not api_key and preset.requires_api_key:
        raise MissingAPIKey(f"provider {provider!r} needs an API key: set {preset.api_key_env} or pass api_key")
    base_url = config.get("base_url") or preset.base_url
    if not base_url:
        raise ValueError(f"provider {provider!r} needs base_url")
    return Target(
        provider=provider,
        preset=preset,
        base_url=str(base_url).rstrip("/"),
        api_key=api_key or None,
        default_model=config.get("default_model") or config.get("model"),
        timeout=float(config.get("timeout", 600.0)),
        max_retries=int(config.get("max_retries", 2)),
        headers=dict(config.get("headers", {})),
        api_version=config.get("api_version") or preset.api_version,
        unsupported_params=config.get("unsupported_params", "drop"),
        auth=config.get("auth") or preset.auth,
    )


class _Targets:
    """What the sync and async clients share: the configs in fallback order, and each request's arguments."""

    def __init__(self, config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
        self.targets = [resolve(config, environ)] + [resolve(extra, environ) for extra in config.get("fallback", ())]
        self.first = self.targets[0]

    def model(self, target: Target, model: str | None) -> str:
        # An explicit model is for the first provider; fallbacks answer with their own default.
        chosen = model if (model and target is self.first) else target.default_model or model
        if not chosen:
            raise ValueError(f"no model: pass model= or set default_model for provider {target.provider!r}")
        return chosen

    def arguments(self, target: Target, endpoint: Endpoint, model: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """``create()`` keyword arguments: the body adapted to the provider, unknown fields via ``extra_body``."""
        if endpoint not in target.preset.endpoints:
            raise NotOffered(f"provider {target.provider!r} does not offer /v1/{endpoint.value}")
        if endpoint is Endpoint.MODERATIONS:  # the provider picks its moderation model when none is named
            return {**body, **({"model": model} if model else {})}
        body = {**body, "model": self.model(target, model)}
        if endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS):
            body, _ = adapt(body, target.preset.params, target.unsupported_params, target.provider)
        fixed = {key: body.pop(key) for key in ("model", "messages", "prompt", "input", "stream") if key in body}
        return {**fixed, "extra_body": body} if body else fixed


def reply_text(completion: ChatCompletion) -> str:
    return completion.choices[0].message.content or ""


def chunk_text(chunk: ChatCompletionChunk) -> str:
    return (chunk.choices[0].delta.content or "") if chunk.choices else ""


def count_tokens(text_or_messages: str | Messages, model: str | None = None) -> int:
    """Tokens in a text, or in chat messages as a prompt (with OpenAI's per-message overhead)."""
    if isinstance(text_or_messages, str):
        return count_text(text_or_messages, model)
    return count_messages(text_or_messages, model)  # type: ignore[arg-type]


def _sdk_client(target: Target, asynchronous: bool) -> Any:
    if target.preset.url_style == "azure":
        cls = openai.AsyncAzureOpenAI if asynchronous else openai.AzureOpenAI
    else:
        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(**target.sdk_options())


class OpenAICompatibleAPI:
    """Chat, completions, embeddings, moderations and token counts for any preset, with fallbacks."""

    def __init__(self, config: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> None:
        self._targets = _Targets(config, environ)
        self._clients = [_sdk_client(target, asynchronous=False) for target in self._targets.targets]

    def chat(self, messages: Messages, model: str | None = None, stream: bool = False, **params: Any) -> str | Iterator[str]:
        """The reply's text; with ``stream=True``, an iterator of its pieces as they arrive."""
        if stream:
            chunks = self.chat_completion(messages, model, stream=True, **params)
            return (text for chunk in chunks if (text := chunk_text(chunk)))
        return reply_text(self.chat_completion(messages, model, **params))

    def chat_completion(self, messages: Messages, model: str | None = None, stream: bool = False, **params: Any) -> Any:
        """The SDK's ChatCompletion (or, with ``stream=True``, its Stream of chunks)."""
        body = {"messages": list(messages), **({"stream": True} if stream else {}), **params}
        return self._first_answer(Endpoint.CHAT, model, body, lambda c, kw: c.chat.completions.create(**kw))

    def complete(self, prompt: str | list[str], model: str | None = None, **params: Any) -> Completion:
        return self._first_answer(Endpoint.COMPLETIONS, model, {"prompt": prompt, **params}, lambda c, kw: c.completions.create(**kw))

    def create_embedding(self, text_or_list: str | list[str], model: str | None = None, **params: Any) -> CreateEmbeddingResponse:
        body = {"input": text_or_list, **params}
        return self._first_answer(Endpoint.EMBEDDINGS, model, body, lambda c, kw: c.embeddings.create(**kw))

    def moderate(self, text: str | list[str], model: str | None = None) -> list[Moderation]:
        """Moderation results, one per input (providers that offer it: openai, mistral, custom)."""
        answer = self._first_answer(Endpoint.MODERATIONS, model, {"input": text}, lambda c, kw: c.moderations.create(**kw))
        return list(answer.results)

    def count_tokens(self, text_or_messages: str | Messages, model: str | None = None) -> int:
        return count_tokens(text_or_messages, model or self._targets.first.default_model)

    def validate_credentials(self) -> bool:
        """Whether the first provider accepts the key (one cheap authenticated call); False, not an exception, if not."""
        try:
            self._clients[0].models.list()
        except _BAD_KEY_ERRORS:
            return False
        return True

    def list_models(self) -> list[str]:
        return [model.id for model in self._clients[0].models.list()]

    def _first_answer(
        self, endpoint: Endpoint, model: str | None, body: dict[str, Any], call: Callable[[Any, dict[str, Any]], T]
    ) -> T:
        error: Exception | None = None
        for target, client in zip(self._targets.targets, self._clients):
            try:
                return call(client, self._targets.arguments(target, endpoint, model, body))
            except (NotOffered, *FALLBACK_ERRORS) as failure:
                error = failure
        assert error is not None
        raise error


class AsyncOpenAICompatibleAPI:
    """:class:`OpenAICompatibleAPI` with ``await``; the same configs, arguments and fallbacks."""

    def __init__(self, config: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> None:
        self._targets = _Targets(config, environ)
        self._clients = [_sdk_client(target, asynchronous=True) for target in self._targets.targets]

    async def chat(
        self, messages: Messages, model: str | None = None, stream: bool = False, **params: Any
    ) -> str | AsyncIterator[str]:
        if stream:
            chunks = await self.chat_completion(messages, model, stream=True, **params)
            return (text async for chunk in chunks if (text := chunk_text(chunk)))
        return reply_text(await self.chat_completion(messages, model, **params))

    async def chat_completion(self, messages: Messages, model: str | None = None, stream: bool = False, **params: Any) -> Any:
        body = {"messages": list(messages), **({"stream": True} if stream else {}), **params}
        return await self._first_answer(Endpoint.CHAT, model, body, lambda c, kw: c.chat.completions.create(**kw))

    async def complete(self, prompt: str | list[str], model: str | None = None, **params: Any) -> Completion:
        return await self._first_answer(Endpoint.COMPLETIONS, model, {"prompt": prompt, **params}, lambda c, kw: c.completions.create(**kw))

    async def create_embedding(self, text_or_list: str | list[str], model: str | None = None, **params: Any) -> CreateEmbeddingResponse:
        body = {"input": text_or_list, **params}
        return await self._first_answer(Endpoint.EMBEDDINGS, model, body, lambda c, kw: c.embeddings.create(**kw))

    async def moderate(self, text: str | list[str], model: str | None = None) -> list[Moderation]:
        answer = await self._first_answer(Endpoint.MODERATIONS, model, {"input": text}, lambda c, kw: c.moderations.create(**kw))
        return list(answer.results)

    def count_tokens(self, text_or_messages: str | Messages, model: str | None = None) -> int:
        return count_tokens(text_or_messages, model or self._targets.first.default_model)

    async def validate_credentials(self) -> bool:
        try:
            await self._clients[0].models.list()
        except _BAD_KEY_ERRORS:
            return False
        return True

    async def list_models(self) -> list[str]:
        return [model.id async for model in self._clients[0].models.list()]

    async def _first_answer(
        self,
        endpoint: Endpoint,
        model: str | None,
        body: dict[str, Any],
        call: Callable[[Any, dict[str, Any]], Awaitable[T]],
    ) -> T:
        error: Exception | None = None
        for target, client in zip(self._targets.targets, self._clients):
            try:
                return await call(client, self._targets.arguments(target, endpoint, model, body))
            except (NotOffered, *FALLBACK_ERRORS) as failure:
                error = failure
        assert error is not None
        raise error
