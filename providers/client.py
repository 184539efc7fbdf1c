"""One interface to every provider, in-process: ``OpenAICompatibleAPI(config).chat(messages)``.

Built on the official ``openai`` SDK, so answers are the SDK's objects and
errors the SDK's exception classes. A config is a :class:`ClientConfig` (a
mapping is validated into one: a wrong field raises pydantic's
ValidationError naming it); it resolves over its preset exactly as the
gateway's providers do (``HostedProviderConfig.resolve``): the base URL, the
key or its environment variable, the auth style, and the parameter map::

    api = OpenAICompatibleAPI({"provider": "groq", "default_model": "llama-3.1-8b-instant"})
    print(api.chat([{"role": "user", "content": "Hi"}]))
    for piece in api.chat(messages, stream=True):
        print(piece, end="")

``fallback`` lists more provider configs, tried in order when a call fails
with an error another provider may not have (connection, timeout, 429, 5xx,
a rejected key). ``AsyncOpenAICompatibleAPI`` is the same with ``await``:
both sides share :class:`_Targets`, which does everything but the I/O.

A preset of another protocol (``anthropic``) is the SDK over the gateway's
own adapter for it (``providers/registry.py``), run in this process by
:class:`AdapterTransport`: the SDK sends OpenAI's request, the adapter
translates it both ways, and the SDK parses, retries and raises exactly as
for an OpenAI server. Chat only: what the preset does not offer is NotOffered.
"""

from __future__ import annotations

import os
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar, overload

import httpx
import openai
from openai import AsyncStream, Stream
from openai.types import CreateEmbeddingResponse, Moderation
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion import Completion
from pydantic import AliasChoices, Field, SecretStr

from providers.adapter_transport import AdapterTransport, SyncAdapterTransport
from providers.base import UnsupportedPolicy
from providers.config import HostedProviderConfig, ResolvedProvider
from providers.errors import (
    MissingAPIKey,
    NotOffered,
)  # fmt: skip
from providers.params import adapt
from providers.registry import build_provider
from providers.tokens import count_messages, count_text
from providers.wire import Endpoint

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


class ClientConfig(HostedProviderConfig):
    """One provider for the client: a hosted ``providers:`` entry (``type:`` may be written ``provider:``)
    and the client's own fields. A mapping is validated into one, and a wrong field named."""

    type: str = Field("openai", validation_alias=AliasChoices("provider", "type"), description="A preset's name.")
    default_model: str | None = Field(
        None, validation_alias=AliasChoices("default_model", "model"), description="For calls that pass no model=."
    )
    max_retries: int = Field(2, ge=0, description="The SDK's own retries (connection errors, 408, 429, 5xx).")
    unsupported_params: UnsupportedPolicy = Field("drop", description="`reject`: raise for a parameter the provider does not take.")
    fallback: tuple[ClientConfig, ...] = Field((), description="More configs, tried in order when a call fails.")

    @classmethod
    def of(cls, config: ClientConfig | HostedProviderConfig | Mapping[str, Any]) -> ClientConfig:
        if isinstance(config, ClientConfig):
            return config
        if isinstance(config, HostedProviderConfig):  # a validated providers.yaml entry
            return cls.model_validate({name: getattr(config, name) for name in config.model_fields_set | {"type"}})
        return cls.model_validate(config)


@dataclass(frozen=True, slots=True)
class Target:
    """One config of the client, resolved: where to call, with which key."""

    config: ClientConfig
    upstream: ResolvedProvider

    @property
    def api_key(self) -> str | None:
        return self.upstream.api_key

    @property
    def adapted(self) -> bool:
        """The SDK reaches this provider through its adapter, in this process: it speaks another protocol than OpenAI's."""
        return self.upstream.preset.protocol != "openai"

    def adapter_transport(self) -> AdapterTransport:
        config = self.config
        if self.api_key and config.api_key is None:
            # The key came from the environment; the adapter reads it from its config, as the gateway's config module puts it.
            config = config.model_copy(update={"api_key": SecretStr(self.api_key)})
        provider = build_provider(config.type, config)
        return AdapterTransport(provider, config.unsupported_params, secrets=(self.api_key,) if self.api_key else ())

    def sdk_options(self) -> dict[str, Any]:
        """Keyword arguments for the SDK's client classes (OpenAI / AzureOpenAI and their async twins)."""
        upstream = self.upstream
        options: dict[str, Any] = {"timeout": self.config.timeout, "max_retries": self.config.max_retries}
        if self.adapted:  # the SDK's requests stay in this process: the key is the adapter's alone
            return {**options, "base_url": upstream.base_url, "api_key": "unused"}
        headers = dict(upstream.headers)
        if upstream.url_style == "azure":
            # An Entra ID token goes as a Bearer token, a key in the api-key header.
            credential = {"azure_ad_token": upstream.api_key} if upstream.auth == "bearer" else {"api_key": upstream.api_key}
            return {**options, **credential, "azure_endpoint": upstream.base_url, "api_version": upstream.api_version,
                    "default_headers": headers}  # fmt: skip
        # The SDK insists on a key; a server that needs none ignores the header.
        return {**options, "base_url": upstream.base_url, "api_key": upstream.api_key or "none", "default_headers": headers}


def resolve(config: ClientConfig, environ: Mapping[str, str] | None = None) -> Target:
    """``config`` over its preset, the key from ``environ`` (default: the process's) when it names none."""
    upstream = config.resolve(os.environ if environ is None else environ)
    if upstream.needs_key:
        raise MissingAPIKey(f"provider {config.type!r} needs an API key: set {upstream.preset.api_key_env} or pass api_key")
    return Target(config, upstream)


class _Targets:
    """What the sync and async clients share: the configs in fallback order, and each request's arguments."""

    def __init__(self, config: ClientConfig | HostedProviderConfig | Mapping[str, Any], environ: Mapping[str, str] | None) -> None:
        first = ClientConfig.of(config)
        self.targets = [resolve(first, environ)] + [resolve(extra, environ) for extra in first.fallback]
        self.first = self.targets[0]

    def model(self, target: Target, model: str | None) -> str:
        # An explicit model is for the first provider; fallbacks answer with their own default.
        chosen = model if (model and target is self.first) else target.config.default_model or model
        if not chosen:
            raise ValueError(f"no model: pass model= or set default_model for provider {target.config.type!r}")
        return chosen

    def arguments(self, target: Target, endpoint: Endpoint, model: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """``create()`` keyword arguments: the body adapted to the provider, unknown fields via ``extra_body``."""
        preset = target.upstream.preset
        if endpoint not in preset.endpoints:
            raise NotOffered(f"provider {target.config.type!r} does not offer /v1/{endpoint.value}")
        if endpoint is Endpoint.MODERATIONS:  # the provider picks its moderation model when none is named
            return {**body, **({"model": model} if model else {})}
        body = {**body, "model": self.model(target, model)}
        if endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS):
            body, _ = adapt(body, preset.params, target.config.unsupported_params, target.config.type)
        fixed = {key: body.pop(key) for key in ("model", "messages", "prompt", "input", "stream") if key in body}
        return {**fixed, "extra_body": body} if body else fixed

    @property
    def default_model(self) -> str | None:
        return self.first.config.default_model

    def check_model_list(self) -> None:
        """The model list is the first provider's ``GET /models``, which an adapter does not translate."""
        if self.first.adapted:
            kind = self.first.config.type
            raise NotOffered(f"provider {kind!r} does not offer /v1/models in the client (its adapter translates chat only)")


def reply_text(completion: ChatCompletion) -> str:
    return completion.choices[0].message.content or ""


def chunk_text(chunk: ChatCompletionChunk) -> str:
    return (chunk.choices[0].delta.content or "") if chunk.choices else ""


def count_tokens(text_or_messages: str | Messages, model: str | None = None) -> int:
    """Tokens in a text, or in chat messages as a prompt (with OpenAI's per-message overhead)."""
    if isinstance(text_or_messages, str):
        return count_text(text_or_messages, model)
    return count_messages(text_or_messages, model)  # type: ignore[arg-type]


def _sdk_client(target: Target) -> openai.OpenAI:
    if target.adapted:
        return openai.OpenAI(**target.sdk_options(), http_client=httpx.Client(transport=SyncAdapterTransport(target.adapter_transport())))
    cls = openai.AzureOpenAI if target.upstream.url_style == "azure" else openai.OpenAI
    return cls(**target.sdk_options())


def _async_sdk_client(target: Target) -> openai.AsyncOpenAI:
    if target.adapted:
        return openai.AsyncOpenAI(**target.sdk_options(), http_client=httpx.AsyncClient(transport=target.adapter_transport()))
    cls = openai.AsyncAzureOpenAI if target.upstream.url_style == "azure" else openai.AsyncOpenAI
    return cls(**target.sdk_options())


Config = ClientConfig | HostedProviderConfig | Mapping[str, Any]


class OpenAICompatibleAPI:
    """Chat, completions, embeddings, moderations and token counts for any preset, with fallbacks.

    ``config``: a :class:`ClientConfig`, a hosted ``providers:`` entry, or a mapping validated into a ClientConfig.
    """

    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None) -> None:
        self._targets = _Targets(config, environ)
        self._clients = [_sdk_client(target) for target in self._targets.targets]

    @overload
    def chat(self, messages: Messages, model: str | None = None, stream: Literal[False] = False, **params: Any) -> str: ...
    @overload
    def chat(self, messages: Messages, model: str | None = None, *, stream: Literal[True], **params: Any) -> Iterator[str]: ...

    def chat(self, messages: Messages, model: str | None = None, stream: bool = False, **params: Any) -> str | Iterator[str]:
        """The reply's text; with ``stream=True``, an iterator of its pieces as they arrive."""
        if stream:
            chunks = self.chat_completion(messages, model, stream=True, **params)
            return (text for chunk in chunks if (text := chunk_text(chunk)))
        return reply_text(self.chat_completion(messages, model, **params))

    @overload
    def chat_completion(
        self, messages: Messages, model: str | None = None, stream: Literal[False] = False, **params: Any
    ) -> ChatCompletion: ...
    @overload
    def chat_completion(
        self, messages: Messages, model: str | None = None, *, stream: Literal[True], **params: Any
    ) -> Stream[ChatCompletionChunk]: ...

    def chat_completion(
        self, messages: Messages, model: str | None = None, stream: bool = False, **params: Any
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
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
        return count_tokens(text_or_messages, model or self._targets.default_model)

    def validate_credentials(self) -> bool:
        """Whether the first provider accepts the key (one cheap authenticated call); False, not an exception, if not."""
        self._targets.check_model_list()
        try:
            self._clients[0].models.list()
        except _BAD_KEY_ERRORS:
            return False
        return True

    def list_models(self) -> list[str]:
        self._targets.check_model_list()
        return [model.id for model in self._clients[0].models.list()]

    def close(self) -> None:
        """Close the connections of every provider (an adapter's, and its event loop, are also closed when collected)."""
        for client in self._clients:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _first_answer(
        self, endpoint: Endpoint, model: str | None, body: dict[str, Any], call: Callable[[openai.OpenAI, dict[str, Any]], T]
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

    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None) -> None:
        self._targets = _Targets(config, environ)
        self._clients = [_async_sdk_client(target) for target in self._targets.targets]

    @overload
    async def chat(self, messages: Messages, model: str | None = None, stream: Literal[False] = False, **params: Any) -> str: ...
    @overload
    async def chat(
        self, messages: Messages, model: str | None = None, *, stream: Literal[True], **params: Any
    ) -> AsyncIterator[str]: ...

    async def chat(
        self, messages: Messages, model: str | None = None, stream: bool = False, **params: Any
    ) -> str | AsyncIterator[str]:
        if stream:
            chunks = await self.chat_completion(messages, model, stream=True, **params)
            return (text async for chunk in chunks if (text := chunk_text(chunk)))
        return reply_text(await self.chat_completion(messages, model, **params))

    @overload
    async def chat_completion(
        self, messages: Messages, model: str | None = None, stream: Literal[False] = False, **params: Any
    ) -> ChatCompletion: ...
    @overload
    async def chat_completion(
        self, messages: Messages, model: str | None = None, *, stream: Literal[True], **params: Any
    ) -> AsyncStream[ChatCompletionChunk]: ...

    async def chat_completion(
        self, messages: Messages, model: str | None = None, stream: bool = False, **params: Any
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
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
        return count_tokens(text_or_messages, model or self._targets.default_model)

    async def validate_credentials(self) -> bool:
        self._targets.check_model_list()
        try:
            await self._clients[0].models.list()
        except _BAD_KEY_ERRORS:
            return False
        return True

    async def list_models(self) -> list[str]:
        self._targets.check_model_list()
        return [model.id async for model in self._clients[0].models.list()]

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _first_answer(
        self,
        endpoint: Endpoint,
        model: str | None,
        body: dict[str, Any],
        call: Callable[[openai.AsyncOpenAI, dict[str, Any]], Awaitable[T]],
    ) -> T:
        error: Exception | None = None
        for target, client in zip(self._targets.targets, self._clients):
            try:
                return await call(client, self._targets.arguments(target, endpoint, model, body))
            except (NotOffered, *FALLBACK_ERRORS) as failure:
                error = failure
        assert error is not None
        raise error
