"""What the two local providers share: the model's life cycle, readiness, its tokenizer, and its refusals.

The model loads on its own thread (``local_engine.worker.ModelThread``)
when the gateway starts; until it is ready, calls fail with a 503
``model_loading``, and after every load attempt failed with a 503
``model_load_failed`` saying why; both let the router fall back to another
deployment, and neither trips its breaker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from local_engine.worker import ModelThread
from providers.base import EngineStats, UpstreamRequest
from providers.errors import (
    EndpointNotOffered,
    InvalidLocalRequest,
    ModelAsleep,
    ModelLoadFailed,
    ModelLoading,
    ModelNotReady,
    ProviderError,
)  # fmt: skip
from providers.local.config import LocalProviderConfig
from providers.local.translate import chat_text
from providers.params import adapt, dropped_header
from providers.wire import Endpoint

T = TypeVar("T")


class LocalProvider:
    """A model in this process, on the thread ``runner`` owns; ``LoadsModel``, ``Tokenizes``, ``ReportsEngineStats``.

    A subclass says which endpoints its model's kind serves (``serves``),
    builds its runner, and answers requests.
    """

    serves: frozenset[Endpoint] = frozenset()

    def __init__(self, name: str, config: LocalProviderConfig, runner: ModelThread) -> None:
        self.name = name
        self._config = config
        self._preset = config.preset
        self._runner = runner

    def engine_stats(self) -> EngineStats | None:
        """The engine's counters when scraped; None while it loads, and for a model with none."""
        return None

    # --- life cycle ---

    async def start(self) -> None:
        """Begin loading the model on its thread; the gateway serves meanwhile."""
        await self._runner.start()

    @property
    def state(self) -> str:
        """``loading``, ``ready``, ``failed`` or ``stopped``."""
        return self._runner.state

    @property
    def error(self) -> str | None:
        """Why the model failed to load (one line), once ``state`` is ``failed``."""
        return self._runner.error

    async def wait_loaded(self) -> None:
        """Until the model is loaded or has failed for good."""
        await self._runner.wait_loaded()

    async def aclose(self) -> None:
        await self._runner.stop()

    def offers(self, endpoint: Endpoint) -> bool:
        """What the preset offers, of what this model's kind serves."""
        return endpoint in self.serves and endpoint in self._preset.endpoints

    # --- tokenizer, for /v1/tokenize and /v1/detokenize ---

    @property
    def max_model_len(self) -> int:
        """The loaded model's context length (ModelNotReady before)."""
        raise NotImplementedError

    async def tokenize(
        self, prompt: str | None, messages: list[dict[str, Any]] | None, add_generation_prompt: bool,
        add_special_tokens: bool | None,
    ) -> tuple[list[int], list[str], int]:
        """Token ids of a prompt or a chat, their strings, and the context length."""

        max_model_len = self.max_model_len

        def work(tokenizer: Any) -> tuple[list[int], list[str], int]:
            if messages is not None:
                text = chat_text(tokenizer, messages, add_generation_prompt)
                special = bool(add_special_tokens)  # the template writes its own special tokens
            else:
                text, special = prompt or "", add_special_tokens is not False
            tokens = tokenizer.encode(text, add_special_tokens=special)
            return tokens, tokenizer.convert_ids_to_tokens(tokens), max_model_len

        return await self._with_tokenizer(work)

    async def detokenize(self, tokens: list[int]) -> str:
        return await self._with_tokenizer(lambda tokenizer: str(tokenizer.decode(tokens)))

    async def _with_tokenizer(self, work: Callable[[Any], T]) -> T:
        """``work(tokenizer)`` on the model's tokenizer thread (never the model's own loop), a refusal as a 400."""
        self._require_ready()
        try:
            return await self._runner.with_tokenizer(work)
        except ProviderError:
            raise
        except Exception as error:  # a template that refuses the messages, an id out of range
            raise InvalidLocalRequest(f"The model's tokenizer refused the request: {error}") from None

    # --- for the subclasses' requests ---

    def _prepare(self, request: UpstreamRequest) -> tuple[dict[str, Any], dict[str, str]]:
        """The payload as the local preset's parameter map leaves it, and the headers for the client."""
        if not self.offers(request.endpoint):
            raise EndpointNotOffered(request.endpoint.value, self.name)
        self._require_ready()
        payload, dropped = adapt(request.payload, self._preset.params, request.unsupported_params, self.name)
        return payload, dropped_header(dropped)

    def _require_ready(self) -> None:
        if self.state != "ready":
            raise self._not_ready()

    def _not_ready(self) -> ModelNotReady:
        if self.state == "failed":
            detail = self.error or "the model could not be loaded"
            return ModelLoadFailed(f"{detail[0].upper()}{detail[1:]}.", provider=self.name)
        if self.state == "sleeping":
            return ModelAsleep(f"The model of provider '{self.name}' is sleeping (POST /wake_up wakes it).", provider=self.name)
        return ModelLoading(f"The model of provider '{self.name}' is {self.state}.", provider=self.name)
