"""The engine behind an event loop: its step loop on a thread of its own.

The event loop only queues work and reads results; tokenising, the
forward pass and sampling all happen on the engine's thread, so a server
stays responsive while the engine is saturated (torch releases the GIL in
its kernels). Results cross back with ``call_soon_threadsafe``, one wake-up
per step for each request that progressed; a request that falls behind
reads only the newest of its outputs, since each one is a full snapshot.

    engine = AsyncLLMEngine(EngineConfig(model="smollm2"))
    await engine.start()                      # loads on the thread; engine.state says "loading"
    async for output in engine.generate("id-1", "Hello", SamplingParams(max_tokens=8)):
        print(output.outputs[0].text)          # the text so far, at each step

Leaving the loop early (a ``break``, a cancelled task: the client went away)
aborts the request at the engine's next step and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .config import EngineConfig
from .errors import EngineNotReady, StepFailed
from .inputs import PromptType
from .llm_engine import LLMEngine
from .loader import LoadedModel
from .outputs import RequestOutput
from .sampling_params import SamplingParams
from .worker import ModelThread, settle

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class EngineStats:
    """A snapshot for metrics and ``/health/ready``, read without stopping the engine."""

    running: int = 0
    waiting: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    prefix_cache_queries: int = 0  # prompt blocks looked up in the prefix cache, since start
    prefix_cache_hits: int = 0  # ... and found there
    preemptions: int = 0  # since start

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


class _Stream:
    """One request's outputs on their way to the event loop: the newest snapshot, or an error."""

    __slots__ = ("error", "event", "finished", "latest", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.latest: RequestOutput | None = None
        self.error: BaseException | None = None
        self.finished = False

    def put(self, output: RequestOutput | None, error: BaseException | None = None) -> None:
        """On the event loop: keep the newest snapshot and wake the reader."""
        if error is not None:
            self.error = error
        elif output is not None:
            self.latest = output
        self.event.set()


class AsyncLLMEngine(ModelThread):
    thread_name = "switchyard-engine"

    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None, *, load_retries: int = 2) -> None:
        super().__init__(load_retries=load_retries)
        self.config = config
        self._loaded = loaded
        self.engine: LLMEngine | None = None
        self._commands: deque[Callable[[LLMEngine], None]] = deque()
        self._streams: dict[str, _Stream] = {}  # touched on the engine thread only
        self.stats = EngineStats()

    async def wait_ready(self) -> None:
        """Until the model is loaded; EngineNotReady if it failed."""
        await self.wait_loaded()
        if self.state != "ready":
            raise EngineNotReady(self.error or f"the engine is {self.state}")

    # --- requests ---

    async def generate(
        self, request_id: str, prompt: PromptType, params: SamplingParams, lora: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """The request's output after each step it progressed in, the last one finished; ``lora`` names
        a loaded LoRA adapter to run it through.

        Raises the engine's refusal (``PromptTooLong``, ``ValueError``) before
        any output, and ``EngineNotReady`` while the model is not loaded.
        """
        if self.state != "ready":
            raise EngineNotReady(self.error or f"the model is {self.state}")
        if isinstance(prompt, str):  # encoded here, on the tokenizer thread: the step loop never tokenizes
            text = prompt
            prompt = {"prompt": text, "prompt_token_ids": await self.encode(text)}
        if params.structured_outputs is not None:
            await self.compile_grammar(params)
        stream = _Stream(asyncio.get_running_loop())
        self._submit(lambda engine: self._add(engine, request_id, prompt, params, lora, stream))
        try:
            while True:
                await stream.event.wait()
                stream.event.clear()
                if stream.error is not None:
                    raise stream.error
                output, stream.latest = stream.latest, None
                if output is None:
                    continue
                yield output
                if output.finished:
                    stream.finished = True
                    return
        finally:
            if not stream.finished:
                self._submit(lambda engine: self._abort(engine, request_id))

    async def encode(self, text: str) -> list[int]:
        """``text``'s token ids, as ``add_request`` would encode it, on the tokenizer thread."""
        return await self.with_tokenizer(lambda tokenizer: tokenizer.encode(text, add_special_tokens=False))

    async def compile_grammar(self, params: SamplingParams) -> None:
        """Compile ``params``' constraint on the tokenizer thread, into the engine's cache: ``add_request`` on the
        step loop then finds it compiled (a large schema takes milliseconds, the llguidance tokenizer 0.8 s once).

        Raises InvalidInput (param ``structured_outputs``) for a constraint that cannot be compiled.
        """
        engine, constraint = self.engine, params.structured_outputs
        assert engine is not None and constraint is not None
        await self.with_tokenizer(lambda tokenizer: engine.grammars.compile(constraint, tokenizer))

    async def call(self, function: Callable[[LLMEngine], T]) -> T:
        """``function(engine)`` on the engine's thread, between two steps (the tokenizer is not shared across threads)."""
        if self.state != "ready":
            raise EngineNotReady(self.error or f"the model is {self.state}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run(engine: LLMEngine) -> None:
            try:
                result = function(engine)
            except Exception as error:
                loop.call_soon_threadsafe(settle, future, None, error)
            else:
                loop.call_soon_threadsafe(settle, future, result, None)

        self._submit(run)
        return await future

    def _submit(self, command: Callable[[LLMEngine], None]) -> None:
        with self._wake:
            self._commands.append(command)
            self._wake.notify()

    # --- the engine's thread ---

    def _add(
        self, engine: LLMEngine, request_id: str, prompt: PromptType, params: SamplingParams, lora: str | None,
        stream: _Stream,
    ) -> None:
        try:
            engine.add_request(request_id, prompt, params, lora)
        except Exception as error:  # PromptTooLong, a bad parameter: the caller's to handle
            stream.loop.call_soon_threadsafe(stream.put, None, error)
            return
        self._streams[request_id] = stream

    def _abort(self, engine: LLMEngine, request_id: str) -> None:
        engine.abort_request(request_id)
        self._streams.pop(request_id, None)

    def _load(self) -> None:
        self.engine = LLMEngine(self.config, self._loaded)
        self._loaded = None

    def _tokenizer(self) -> Any:
        assert self.engine is not None
        return self.engine.tokenizer

    def _serve(self) -> None:
        engine = self.engine
        assert engine is not None
        while self._running:
            with self._wake:
                while self._running and not self._commands and not engine.has_unfinished_requests():
                    self._wake.wait()
                commands = list(self._commands)
                self._commands.clear()
            for command in commands:
                try:
                    command(engine)
                except Exception as error:  # commands report their own errors; this is a bug, not a reason to stop
                    logger.error("an engine command failed: %s: %s", type(error).__name__, error)
                    logger.debug("engine command failed", exc_info=error)
            if engine.has_unfinished_requests():
                self._step(engine)
            self._read_stats(engine)

    def _step(self, engine: LLMEngine) -> None:
        try:
            outputs = engine.step()
        except StepFailed as error:  # the forward pass or sampler raised: that step's requests end, others go on
            logger.error("%s; %d request(s) in that step failed", error, len(error.request_ids))
            logger.debug("engine step failed", exc_info=error)
            self._fail(engine, error.request_ids, error)
            return
        except Exception as error:  # a bug in the engine's own bookkeeping: nothing in flight can be trusted
            logger.error("engine step failed, every request in flight fails: %s: %s", type(error).__name__, error)
            logger.debug("engine step failed", exc_info=error)
            self._fail(engine, list(self._streams), StepFailed(list(self._streams), error))
            return
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del self._streams[output.request_id]
            stream.loop.call_soon_threadsafe(stream.put, output)

    def _fail(self, engine: LLMEngine, request_ids: list[str], error: StepFailed) -> None:
        for request_id in request_ids:
            engine.abort_request(request_id)
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                stream.loop.call_soon_threadsafe(stream.put, None, error)

    def _read_stats(self, engine: LLMEngine) -> None:
        scheduler, blocks = engine.scheduler, engine.block_manager
        self.stats = EngineStats(
            running=len(scheduler.running),
            waiting=len(scheduler.waiting),
            kv_blocks_total=blocks.num_blocks,
            kv_blocks_used=blocks.num_blocks - blocks.num_free_blocks,
            prefix_cache_queries=blocks.prefix_queries,
            prefix_cache_hits=blocks.prefix_hits,
            preemptions=scheduler.num_preemptions,
        )

