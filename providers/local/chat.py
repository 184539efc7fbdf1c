"""Chat and completions on a causal LM in this process (SmolLM2, any Llama-family directory or GGUF).

The router treats this provider like any other: the same retries, fallback
chains, deadlines and usage accounting. Usage is exact: the engine counts
its own tokens. Each engine request's timings (time to the first token, mean
time between the later ones) travel beside the usage, for the gateway's
metrics to observe.

LoRA adapters (POST /v1/load_lora_adapter, ``ServesLoraAdapters``) are read
off the event loop and the engine's thread, then added between two steps; a
request whose ``model`` names a loaded adapter runs through it, in the same
batches as the base model's requests. The adapters ``lora_modules`` names are
loaded the same way at start, once the model is and before the provider is
ready::

    engine loading ──► engine ready ──► each lora_modules adapter read and added ──► ready
          │                                   └─(one fails)─► failed: "the LoRA adapter 'sql' (lora_modules[0]) ..."
          └─(the model fails)─► failed
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from local_engine import (
    EngineNotReady,
    InvalidInput,
    InvalidLoraAdapter,
    LoraLimitReached,
    LoraNotLoaded,
    RequestOutput,
    SamplingParams,
    StepFailed,
)
from local_engine.async_engine import AsyncLLMEngine
from local_engine.inputs import PromptType
from local_engine.stop import stream_holdback
from local_engine.tool_calls import ToolPlan, render_prompt
from local_engine.worker import one_line
from providers.base import EngineStats, UpstreamRequest, UpstreamResponse
from providers.errors import (
    EngineFailed,
    InvalidLocalRequest,
    OpenAIError,
    UpstreamRejected,
)
from providers.local.answers import Formatter
from providers.local.config import LocalProviderConfig
from providers.local.constraints import tool_plan
from providers.local.provider import LocalProvider
from providers.local.translate import (
    RequestOrigin,
    chat_prompt,
    chat_text,
    completion_prompts,
    has_tool_messages,
    sampling_params,
)
from providers.wire import Endpoint, RequestTimings, Usage, usage_requested

logger = logging.getLogger(__name__)

class LocalChatProvider(LocalProvider):
    serves = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})

    def __init__(self, name: str, config: LocalProviderConfig) -> None:
        self.engine = AsyncLLMEngine(config.engine_config(), load_retries=config.load_retries)
        self.tool_call_format = config.tool_call_format
        super().__init__(name, config, self.engine)
        # The lora_modules adapters: until they are all loaded (settled) the provider is loading; one that
        # fails to load makes it failed, with why. Set on the event loop, read by any thread.
        self._lora_modules = config.lora_modules
        self._lora_modules_settled = threading.Event()
        if not self._lora_modules:
            self._lora_modules_settled.set()
        self._lora_modules_loading: asyncio.Task[None] | None = None
        self._lora_modules_error: str | None = None

    def engine_stats(self) -> EngineStats | None:
        return self.engine.stats if self.state == "ready" else None

    # --- vLLM's operational endpoints (ManagesEngine), run on the engine's thread between two steps ---

    @property
    def state(self) -> str:
        """``loading``, ``ready``, ``sleeping`` (after ``sleep``), ``failed`` or ``stopped``.

        Ready once the model is loaded and so is every adapter ``lora_modules`` names.
        """
        if self._lora_modules_error is not None:
            return "failed"
        state = self.engine.state
        if state == "ready" and not self._lora_modules_settled.is_set():
            return "loading"
        return "sleeping" if state == "ready" and self.sleeping else state

    @property
    def error(self) -> str | None:
        return self._lora_modules_error or self.engine.error

    async def start(self) -> None:
        await super().start()
        if self._lora_modules:
            self._lora_modules_loading = asyncio.create_task(self._load_lora_modules())

    async def wait_loaded(self) -> None:
        """Until the model and the ``lora_modules`` adapters are loaded, or one failed for good."""
        await super().wait_loaded()
        loading = self._lora_modules_loading
        if loading is not None and loading.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([loading])  # never raises: the load's outcome is in state and error
        elif not self._lora_modules_settled.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self._lora_modules_settled.wait)

    async def aclose(self) -> None:
        if self._lora_modules_loading is not None:
            self._lora_modules_loading.cancel()
        self._lora_modules_settled.set()  # a task cancelled before it ran never reaches its own ``finally``
        await super().aclose()

    async def _load_lora_modules(self) -> None:
        """Load each configured adapter as POST /v1/load_lora_adapter would, once the model is loaded."""
        try:
            await self.engine.wait_loaded()
            for index, module in enumerate(self._lora_modules):
                if self.engine.state != "ready":
                    return  # the model failed (its own error says why), or the provider is closing
                try:
                    await self._add_lora(module.name, module.path)
                except EngineNotReady:
                    return
                except Exception as error:  # InvalidLoraAdapter, LoraLimitReached, an unreadable file
                    reason = str(error) if isinstance(error, InvalidLoraAdapter | LoraLimitReached) else one_line(error)
                    self._lora_modules_error = (
                        f"the LoRA adapter '{module.name}' (lora_modules[{index}]) could not be loaded: {reason.rstrip('.')}"
                    )
                    logger.error("%s", self._lora_modules_error)
                    logger.debug("loading the LoRA adapter failed", exc_info=error)  # a bad file is not a bug
                    await self.engine.stop()  # as after a failed load, the model's thread ends
                    return
        finally:
            self._lora_modules_settled.set()

    @property
    def sleeping(self) -> bool:
        return self.engine.engine is not None and self.engine.engine.sleeping

    async def reset_prefix_cache(self) -> bool:
        return await self.engine.call(lambda engine: engine.reset_prefix_cache())

    async def sleep(self) -> bool:
        return await self.engine.call(lambda engine: engine.sleep())

    async def wake_up(self) -> None:
        await self.engine.call(lambda engine: engine.wake_up())

    # --- LoRA adapters (ServesLoraAdapters) ---

    async def load_lora_adapter(self, lora_name: str, lora_path: str) -> None:
        self._require_ready()
        try:
            await self._add_lora(lora_name, lora_path)
        except InvalidLoraAdapter as error:
            raise InvalidLocalRequest(str(error), param=error.param, provider=self.name) from None
        except LoraLimitReached as error:
            raise OpenAIError(
                str(error), status_code=409, error_type="invalid_request_error", param="lora_name",
                code="lora_limit_reached",
            ) from None  # fmt: skip
        except EngineNotReady:
            raise self._not_ready() from None

    async def unload_lora_adapter(self, lora_name: str) -> bool:
        if self.state not in ("ready", "sleeping"):  # a configured adapter not loaded yet is not "not found"
            raise self._not_ready()
        try:
            return await self.engine.call(lambda engine: engine.remove_lora(lora_name))
        except LoraNotLoaded as error:
            raise OpenAIError(
                str(error), status_code=404, error_type="invalid_request_error", param="lora_name",
                code="model_not_found",
            ) from None  # fmt: skip
        except EngineNotReady:
            raise self._not_ready() from None

    async def _add_lora(self, lora_name: str, lora_path: str) -> None:
        """Read and check the adapter on a worker thread (neither the event loop nor a step waits on it), then
        add it on the engine's, between two steps; the engine's InvalidLoraAdapter or LoraLimitReached."""
        engine = self.engine.engine
        assert engine is not None
        adapter = await asyncio.to_thread(engine.read_lora, lora_name, lora_path)
        await self.engine.call(lambda engine: engine.add_lora(adapter))

    def _lora_of(self, payload: dict[str, Any]) -> str | None:
        """The loaded adapter the request's ``model`` names, if it names one (read from the engine's own table)."""
        engine, model = self.engine.engine, payload.get("model")
        return model if engine is not None and isinstance(model, str) and model in engine.loras.by_name else None

    @property
    def max_model_len(self) -> int:
        self._require_ready()
        assert self.engine.engine is not None
        return self.engine.engine.max_model_len

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        payload, headers = self._prepare(request)
        formatter, params, prompts = await self._plan(request.endpoint, payload)
        timings: list[RequestTimings] = []
        # One engine request per prompt, all in the engine's batch at once.
        lora = self._lora_of(payload)
        finished = await asyncio.gather(
            *(_last(self._run(prompt, params, RequestOrigin(request.endpoint, payload, index), timings, lora))
              for index, prompt in enumerate(prompts))
        )  # fmt: skip
        body = formatter.answer(finished, params.n)
        usage = Usage(body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
        return UpstreamResponse(200, orjson.dumps(body), headers, usage, tuple(timings))

    async def open_stream(self, request: UpstreamRequest) -> LocalEventStream:
        payload, headers = self._prepare(request)
        formatter, params, prompts = await self._plan(request.endpoint, payload)
        if len(prompts) != 1:
            raise InvalidLocalRequest("A streamed completion takes one prompt.", param="prompt")
        timings: list[RequestTimings] = []
        outputs = self._run(prompts[0], params, RequestOrigin(request.endpoint, payload), timings, self._lora_of(payload))
        stream = LocalEventStream(
            outputs, formatter, headers, usage_requested(payload), stream_holdback(params.stop), timings
        )
        await stream.open()  # the first output, or the engine's refusal as an error before the stream starts
        return stream

    async def _plan(self, endpoint: Endpoint, payload: dict[str, Any]) -> tuple[Formatter, SamplingParams, list[PromptType]]:
        params = sampling_params(endpoint, payload)
        tools: ToolPlan | None = None
        if endpoint is Endpoint.CHAT:

            def render(tokenizer: Any) -> tuple[PromptType, ToolPlan | None]:
                try:
                    plan = tool_plan(payload, tokenizer, self.tool_call_format)
                except InvalidInput as error:
                    raise RequestOrigin(endpoint, payload).refusal(error, self.name) from None

                def template(messages: list[dict[str, Any]]) -> str:
                    if plan is None and not has_tool_messages(messages):
                        return chat_text(tokenizer, messages)
                    return render_prompt(tokenizer, messages, plan)

                text = chat_prompt(payload, template)
                return {"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)}, plan

            # The template, the tools and the encoding, off the event loop.
            prompt, tools = await self._with_tokenizer(render)
            prompts: list[PromptType] = [prompt]
            if tools is not None:
                try:
                    params = tools.sampling_params(params)
                except InvalidInput as error:
                    raise RequestOrigin(endpoint, payload).refusal(error, self.name) from None
        else:
            prompts = list(completion_prompts(payload))  # texts are encoded by the engine, off the event loop too
        assert self.engine.engine is not None
        decode = self.engine.engine.tokenizer.decode  # single tokens, for logprobs
        parsed_tools = tools if tools is not None and tools.calls_tools else None
        formatter = Formatter(endpoint, str(payload["model"]), uuid.uuid4().hex, payload, decode, parsed_tools)
        return formatter, params, prompts

    async def _run(
        self, prompt: PromptType, params: SamplingParams, origin: RequestOrigin, timings: list[RequestTimings],
        lora: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """The engine's outputs for one prompt (through the LoRA adapter ``lora``, if given), its timings added to
        ``timings`` once it finished; a refusal named in the client's terms (``origin``)."""
        started = time.perf_counter()
        first: float | None = None
        try:
            async for output in self.engine.generate(uuid.uuid4().hex, prompt, params, lora):
                if first is None:
                    first = time.perf_counter()
                if output.finished:
                    timings.append(_timings(started, first, output))
                yield output
        except LoraNotLoaded as error:  # unloaded between routing and the engine
            raise UpstreamRejected(str(error), status_code=404, param="model", code="model_not_found",
                                   provider=self.name) from None  # fmt: skip
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


def _timings(started: float, first: float, finished: RequestOutput) -> RequestTimings:
    """A finished request's time to its first output, and the mean time between its later tokens."""
    tokens = max(len(choice.token_ids) for choice in finished.outputs)
    between = (time.perf_counter() - first) / (tokens - 1) if tokens > 1 else None
    stages = finished.metrics
    if stages is None or stages.first_scheduled_time is None or stages.first_token_time is None:
        return RequestTimings(first - started, between)
    # finished_time is set just after this output is made, on the engine's thread: the last token's step is near enough.
    done = stages.finished_time or stages.first_token_time
    return RequestTimings(
        first - started, between, stages.arrival_time, stages.first_scheduled_time - stages.arrival_time,
        stages.first_token_time - stages.first_scheduled_time, max(0.0, done - stages.first_token_time),
    )


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
        timings: list[RequestTimings],
    ) -> None:
        self.headers = headers
        self._outputs = outputs
        self._formatter = formatter
        self._include_usage = include_usage
        self._holdback = holdback
        self._timings = timings  # filled in by the request's run when it finishes
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

    @property
    def timings(self) -> tuple[RequestTimings, ...]:
        return tuple(self._timings)

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
