"""``type: local``: the bundled engine as a provider, in the gateway's own process.

A causal LM (SmolLM2, any Llama-family directory or GGUF) serves chat and
completions; a sentence encoder (all-MiniLM-L6-v2) serves embeddings. The
model loads on the engine's thread when the gateway starts; until it is
ready, calls fail with a 503 ``model_loading``, and after every load
attempt failed with a 503 ``model_load_failed`` saying why; both let the
router fall back to another deployment, and neither trips its breaker.

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

from local_engine import EngineConfig, InvalidInput, RequestOutput, StepFailed
from local_engine.async_engine import AsyncLLMEngine, EngineNotReady, EngineStats
from local_engine.embeddings import AsyncEmbedder, is_embedding_model
from local_engine.inputs import PromptType

from providers.wire import Endpoint
from providers.base import UpstreamRequest, UpstreamResponse
from providers.config import ProviderConfig
from providers.errors import EndpointNotOffered, ProviderError, UpstreamRejected
from providers.local.answers import Formatter
from providers.local.translate import (
    InvalidLocalRequest, RequestOrigin, chat_prompt, completion_prompts, decode_openai_token_ids, embedding_inputs,
    sampling_params,
)  # fmt: skip
from providers.params import DROPPED_HEADER, adapt
from providers.wire import Usage, usage_requested

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ModelNotReady(ProviderError):
    """The local model cannot answer now: another deployment may.

    Not a verdict on a call (no call was made), so it never trips the
    deployment's breaker: the client sees why, not "cooling down".
    """

    status_code = 503
    error_type = "api_error"
    fallback_allowed = True
    trips_breaker = False


class EngineFailed(ProviderError):
    """The engine's step failed while running this request (a bug, an out-of-memory); the engine serves on."""

    status_code = 500
    error_type = "api_error"
    fallback_allowed = True


class ModelLoading(ModelNotReady):
    code = "model_loading"


class ModelLoadFailed(ModelNotReady):
    """Every load attempt failed; the message says why."""

    code = "model_load_failed"


class LocalProvider:
    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self._config = config
        self._rules = config.preset.params
        self.embeds = is_embedding_model(config.model)
        self.engine: AsyncLLMEngine | None = None
        self.embedder: AsyncEmbedder | None = None
        if self.embeds:
            self.embedder = AsyncEmbedder(
                config.model or "", device=config.device, dtype=config.dtype, load_retries=config.load_retries
            )
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
                ),
                load_retries=config.load_retries,
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
        """Why the model failed to load (one line), once ``state`` is ``failed``."""
        runner = self.engine or self.embedder
        return runner.error if runner is not None else None

    async def wait_loaded(self) -> None:
        """Until the model is loaded or has failed for good."""
        runner = self.engine or self.embedder
        if runner is not None:
            await runner.wait_loaded()

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

        max_model_len = self.max_model_len

        def work(tokenizer: Any) -> tuple[list[int], list[str], int]:
            if messages is not None:
                text = _chat_text(tokenizer, messages, add_generation_prompt)
                special = bool(add_special_tokens)  # the template writes its own special tokens
            else:
                text, special = prompt or "", add_special_tokens is not False
            tokens = tokenizer.encode(text, add_special_tokens=special)
            return tokens, tokenizer.convert_ids_to_tokens(tokens), max_model_len

        return await self._with_tokenizer(work)

    async def detokenize(self, tokens: list[int]) -> str:
        return await self._with_tokenizer(lambda tokenizer: str(tokenizer.decode(tokens)))

    async def _with_tokenizer(self, work: Callable[[Any], T]) -> T:
        """``work(tokenizer)`` on the model's tokenizer thread (never the engine's step loop), a refusal as a 400."""
        self._require_ready()
        runner = self.engine or self.embedder
        assert runner is not None
        try:
            return await runner.with_tokenizer(work)
        except ProviderError:
            raise
        except Exception as error:  # a template that refuses the messages, an id out of range
            raise InvalidLocalRequest(f"The model's tokenizer refused the request: {error}") from None

    @property
    def max_model_len(self) -> int:
        """The loaded model's context length (ModelNotReady before)."""
        self._require_ready()
        if self.engine is not None and self.engine.engine is not None:
            return self.engine.engine.max_model_len
        assert self.embedder is not None and self.embedder.model is not None
        return self.embedder.model.max_length

    # --- requests ---

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        payload, headers = self._prepare(request)
        if request.endpoint is Endpoint.EMBEDDINGS:
            return await self._embed(payload, headers)
        formatter, params, prompts = await self._plan(request.endpoint, payload)
        # One engine request per prompt, all in the engine's batch at once.
        finished = await asyncio.gather(
            *(_last(self._run(prompt, params, RequestOrigin(request.endpoint, payload, index)))
              for index, prompt in enumerate(prompts))
        )  # fmt: skip
        body = formatter.answer(finished, params.n)
        usage = body["usage"]
        return UpstreamResponse(200, orjson.dumps(body), headers, Usage(usage["prompt_tokens"], usage["completion_tokens"]))

    async def open_stream(self, request: UpstreamRequest) -> LocalEventStream:
        payload, headers = self._prepare(request)
        formatter, params, prompts = await self._plan(request.endpoint, payload)
        if len(prompts) != 1:
            raise InvalidLocalRequest("A streamed completion takes one prompt.", param="prompt")
        include_usage = usage_requested(payload)
        holdback = max((len(stop) for stop in params.stop), default=1) - 1
        outputs = self._run(prompts[0], params, RequestOrigin(request.endpoint, payload))
        stream = LocalEventStream(outputs, formatter, headers, include_usage, holdback)
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
            raise self._not_ready()

    def _not_ready(self) -> ModelNotReady:
        if self.state == "failed":
            detail = self.error or "the model could not be loaded"
            return ModelLoadFailed(f"{detail[0].upper()}{detail[1:]}.", provider=self.name)
        return ModelLoading(f"The model of provider '{self.name}' is {self.state}.", provider=self.name)

    async def _plan(self, endpoint: Endpoint, payload: dict[str, Any]) -> tuple[Formatter, Any, list[PromptType]]:
        params = sampling_params(endpoint, payload)
        if endpoint is Endpoint.CHAT:

            def render(tokenizer: Any) -> PromptType:
                text = chat_prompt(payload, lambda messages: _chat_text(tokenizer, messages))
                return {"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}

            prompts = [await self._with_tokenizer(render)]  # the template and its encoding, off the event loop
        else:
            prompts = list(completion_prompts(payload))  # texts are encoded by the engine, off the event loop too
        assert self.engine is not None and self.engine.engine is not None
        decode = self.engine.engine.tokenizer.decode  # single tokens, for logprobs
        formatter = Formatter(endpoint, str(payload["model"]), uuid.uuid4().hex, payload, decode)
        return formatter, params, prompts

    async def _run(self, prompt: PromptType, params: Any, origin: RequestOrigin) -> AsyncIterator[RequestOutput]:
        """The engine's outputs for one prompt; a refusal named in the client's terms (``origin``)."""
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
        except InvalidInput as error:  # PromptTooLong and CompletionTooLong too
            raise origin.refusal(error, self.name) from None
        except EngineNotReady:
            raise self._not_ready() from None
        except StepFailed:
            raise EngineFailed(
                "The local engine failed while running this request; it was stopped and the engine serves on.",
                provider=self.name,
            ) from None
        except ValueError as error:
            raise UpstreamRejected(str(error), provider=self.name) from None

    async def _embed(self, payload: dict[str, Any], headers: dict[str, str]) -> UpstreamResponse:
        assert self.embedder is not None
        if payload.get("dimensions") is not None:
            raise InvalidLocalRequest("This local embedding model has a fixed size; drop `dimensions`.", param="dimensions")
        inputs = embedding_inputs(payload)
        try:
            if self._config.input_token_ids == "cl100k_base":
                inputs = decode_openai_token_ids(inputs)
            embedded = await self.embedder.embed(inputs)  # checked before it joins a batch
        except InvalidInput as error:
            raise RequestOrigin(Endpoint.EMBEDDINGS, payload).refusal(error, self.name) from None
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


def _chat_text(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """The conversation as the model's chat template writes it."""
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False))


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
