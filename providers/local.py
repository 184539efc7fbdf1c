"""``type: local``: the bundled engine as a provider, in the gateway's own process.

A causal LM (SmolLM2, any Llama-family directory or GGUF) serves chat and
completions; a sentence encoder (all-MiniLM-L6-v2) serves embeddings. The
model loads on the engine's thread when the gateway starts; until it is
ready, calls fail with a 503 ``model_loading`` that lets the router fall
back to another deployment.

The router treats this provider like any other: the same retries, fallback
chains, deadlines and usage accounting. Usage is exact: the engine counts
its own tokens.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson

from local_engine import EngineConfig, PromptTooLong, RequestOutput
from local_engine.async_engine import AsyncLLMEngine, EngineNotReady, EngineStats
from local_engine.embeddings import AsyncEmbedder, is_embedding_model

from .base import Endpoint, UpstreamRequest, UpstreamResponse
from .config import ProviderConfig
from .errors import ContextWindowExceeded, EndpointNotOffered, ProviderError, UpstreamRejected
from .local_openai import Formatter, InvalidLocalRequest, chat_prompt, completion_prompts, sampling_params
from .params import DROPPED_HEADER, adapt
from .usage import Usage

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ModelNotReady(ProviderError):
    """The local model is still loading (or failed to load): another deployment may answer."""

    status_code = 503
    error_type = "api_error"
    code = "model_loading"
    fallback_allowed = True


class LocalProvider:
    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self._config = config
        self._rules = config.preset.params
        self.embeds = is_embedding_model(config.model)
        self.engine: AsyncLLMEngine | None = None
        self.embedder: AsyncEmbedder | None = None
        if self.embeds:
            self.embedder = AsyncEmbedder(config.model or "", device=config.device, dtype=config.dtype)
        else:
            self.engine = AsyncLLMEngine(
                EngineConfig(
                    model=config.model,
                    dtype=config.dtype,
                    device=config.device,
                    block_size=config.block_size,
                    kv_cache_bytes=config.kv_cache_bytes,
                    max_num_seqs=config.max_num_seqs,
                    max_model_len=config.max_model_len,
                    quantization=config.quantization,
                    tokenizer=config.tokenizer,
                )
            )

    # Set by the gateway's metrics: called with (time to first token, mean time per later token) per request.
    observe_timing: Callable[[float, float | None], None] | None = None

    def engine_stats(self) -> EngineStats | None:
        return self.engine.stats if self.engine is not None and self.state == "ready" else None

    # --- life cycle ---

    async def start(self) -> None:
        """Begin loading the model on its thread; the gateway serves meanwhile."""
        if self.engine is not None:
            await self.engine.start()
        if self.embedder is not None:
            await self.embedder.start()

    @property
    def state(self) -> str:
        """``loading``, ``ready``, ``failed`` or ``stopped``."""
        runner = self.engine or self.embedder
        return runner.state if runner is not None else "ready"

    @property
    def error(self) -> str | None:
        runner = self.engine or self.embedder
        return runner.error if runner is not None else None

    async def aclose(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.embedder is not None:
            await self.embedder.stop()

    def offers(self, endpoint: Endpoint) -> bool:
        if self.embeds:
            return endpoint is Endpoint.EMBEDDINGS
        return endpoint in (Endpoint.CHAT, Endpoint.COMPLETIONS)

    # --- tokenizer, for /v1/tokenize and /v1/detokenize ---

    async def tokenize(
        self, prompt: str | None, messages: list[dict[str, Any]] | None, add_generation_prompt: bool,
        add_special_tokens: bool | None,
    ) -> tuple[list[int], list[str], int]:
        """Token ids of a prompt or a chat, their strings, and the context length."""

        def work() -> tuple[list[int], list[str], int]:
            if messages is not None:
                text = self.apply_chat_template(messages, add_generation_prompt)
                special = bool(add_special_tokens)  # the template writes its own special tokens
            else:
                text, special = prompt or "", add_special_tokens is not False
            tokens = self.tokenizer.encode(text, add_special_tokens=special)
            return tokens, self.tokenizer.convert_ids_to_tokens(tokens), self.max_model_len

        return await self._with_tokenizer(work)

    async def detokenize(self, tokens: list[int]) -> str:
        return await self._with_tokenizer(lambda: str(self.tokenizer.decode(tokens)))

    async def _with_tokenizer(self, work: Callable[[], T]) -> T:
        """``work`` where the tokenizer lives (the engine's thread), a refusal as a 400."""
        self._require_ready()
        try:
            if self.engine is not None:
                return await self.engine.call(lambda _engine: work())
            return work()
        except ProviderError:
            raise
        except Exception as error:  # a template that refuses the messages, an id out of range
            raise InvalidLocalRequest(f"The model's tokenizer refused the request: {error}") from None

    @property
    def tokenizer(self) -> Any:
        return self._loaded()[0]

    @property
    def max_model_len(self) -> int:
        return self._loaded()[1]

    def _loaded(self) -> tuple[Any, int]:
        """The loaded model's tokenizer and context length (ModelNotReady before)."""
        self._require_ready()
        if self.engine is not None and self.engine.engine is not None:
            return self.engine.engine.tokenizer, self.engine.engine.max_model_len
        assert self.embedder is not None and self.embedder.model is not None
        return self.embedder.model.tokenizer, self.embedder.model.max_length

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        return str(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
        )

    # --- requests ---

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        payload, headers = self._prepare(request)
        if request.endpoint is Endpoint.EMBEDDINGS:
            return await self._embed(payload, headers)
        formatter, params, prompts = self._plan(request.endpoint, payload)
        # One engine request per prompt, all in the engine's batch at once.
        finished = await asyncio.gather(*(_last(self._run(prompt, params)) for prompt in prompts))
        body = formatter.answer(finished, params.n)
        usage = body["usage"]
        return UpstreamResponse(200, orjson.dumps(body), headers, Usage(usage["prompt_tokens"], usage["completion_tokens"]))

    async def open_stream(self, request: UpstreamRequest) -> LocalEventStream:
        payload, headers = self._prepare(request)
        formatter, params, prompts = self._plan(request.endpoint, payload)
        if len(prompts) != 1:
            raise InvalidLocalRequest("A streamed completion takes one prompt.", param="prompt")
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        holdback = max((len(stop) for stop in params.stop), default=1) - 1
        stream = LocalEventStream(self._run(prompts[0], params), formatter, headers, include_usage, holdback)
        await stream.open()  # the first output, or the engine's refusal as an error before the stream starts
        return stream

    # --- internals ---

    def _prepare(self, request: UpstreamRequest) -> tuple[dict[str, Any], dict[str, str]]:
        if not self.offers(request.endpoint):
            raise EndpointNotOffered(request.endpoint.value, self.name)
        self._require_ready()
        payload, dropped = adapt(request.payload, self._rules, request.unsupported_params, self.name)
        return payload, ({DROPPED_HEADER: ",".join(dropped)} if dropped else {})

    def _require_ready(self) -> None:
        if self.state != "ready":
            detail = self.error or f"the model of provider '{self.name}' is {self.state}"
            raise ModelNotReady(detail[0].upper() + detail[1:] + ".", provider=self.name)

    def _plan(self, endpoint: Endpoint, payload: dict[str, Any]) -> tuple[Formatter, Any, list[str | list[int]]]:
        params = sampling_params(endpoint, payload)
        if endpoint is Endpoint.CHAT:
            prompts: list[str | list[int]] = [chat_prompt(payload, self.apply_chat_template)]
        else:
            prompts = completion_prompts(payload)
        formatter = Formatter(endpoint, str(payload["model"]), uuid.uuid4().hex, payload, self.tokenizer.decode)
        return formatter, params, prompts

    async def _run(self, prompt: str | list[int], params: Any) -> AsyncIterator[RequestOutput]:
        assert self.engine is not None
        started = time.perf_counter()
        first = None
        try:
            async for output in self.engine.generate(uuid.uuid4().hex, prompt, params):
                if first is None:
                    first = time.perf_counter()
                if output.finished and self.observe_timing is not None:
                    tokens = max(len(choice.token_ids) for choice in output.outputs)
                    between = (time.perf_counter() - first) / (tokens - 1) if tokens > 1 else None
                    self.observe_timing(first - started, between)
                yield output
        except PromptTooLong as error:
            raise ContextWindowExceeded(str(error), param="messages", provider=self.name) from None
        except EngineNotReady as error:
            raise ModelNotReady(str(error), provider=self.name) from None
        except ValueError as error:
            raise UpstreamRejected(str(error), provider=self.name) from None

    async def _embed(self, payload: dict[str, Any], headers: dict[str, str]) -> UpstreamResponse:
        assert self.embedder is not None
        raw = payload.get("input")
        inputs = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else raw
        if not inputs:
            raise InvalidLocalRequest("`input` must not be empty.", param="input")
        if payload.get("dimensions") is not None:
            raise InvalidLocalRequest("This local embedding model has a fixed size; drop `dimensions`.", param="dimensions")
        embedded = await self.embedder.embed(inputs)
        vectors = embedded.vectors
        base64_format = payload.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": base64.b64encode(vector.numpy().tobytes()).decode() if base64_format else vector.tolist(),
            }
            for index, vector in enumerate(vectors)
        ]
        tokens = sum(embedded.token_counts)
        body = {"object": "list", "data": data, "model": payload["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
        return UpstreamResponse(200, orjson.dumps(body), headers, Usage(tokens, 0))


async def _last(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    last = None
    async for last in outputs:
        pass
    assert last is not None and last.finished
    return last


class LocalEventStream:
    """The engine's outputs as OpenAI chunks; an ``UpstreamStream`` (see providers/base.py)."""

    def __init__(
        self,
        outputs: AsyncIterator[RequestOutput],
        formatter: Formatter,
        headers: dict[str, str],
        include_usage: bool,
        holdback: int,
    ) -> None:
        self.headers = headers
        self._outputs = outputs
        self._formatter = formatter
        self._include_usage = include_usage
        self._holdback = holdback
        self._first: RequestOutput | None = None
        self._last: RequestOutput | None = None

    async def open(self) -> None:
        self._first = await anext(self._outputs)

    @property
    def usage(self) -> Usage | None:
        if self._last is None:
            return None
        prompt = len(self._last.prompt_token_ids)
        return Usage(prompt, sum(len(choice.token_ids) for choice in self._last.outputs))

    @property
    def usage_reported(self) -> bool:
        return self._include_usage

    def usage_chunk(self) -> bytes | None:
        return None if self._include_usage or self._last is None else orjson.dumps(self._formatter.usage_chunk([self._last]))

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        output = self._first
        assert output is not None, "open() first"
        while True:
            self._last = output
            events = [orjson.dumps(chunk) for chunk in self._formatter.chunks(output, self._holdback)]
            if output.finished:
                if self._include_usage:
                    events.append(orjson.dumps(self._formatter.usage_chunk([output])))
                if events:
                    yield events
                return
            if events:
                yield events
            output = await anext(self._outputs)

    async def aclose(self) -> None:
        await self._outputs.aclose()  # type: ignore[attr-defined]  # an unfinished request is aborted
