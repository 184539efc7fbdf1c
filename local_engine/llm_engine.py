"""The engine: requests in, tokens out, one ``step()`` at a time.

``step()`` is three calls: the scheduler decides the batch, the model runner
runs it, and the results are written back to the sequences (new tokens,
text, stops), freeing what finished.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import torch

from .block_manager import BlockManager
from .config import EngineConfig
from .detokenizer import IncrementalDetokenizer
from .errors import CompletionTooLong, EngineNotReady, InvalidInput, PromptTooLong, StepFailed
from .grammar import GrammarCompiler
from .inputs import (
    PromptType,
    check_token_ids,
    first_out_of_range,
    out_of_vocabulary,
    parse_prompt,
)
from .kv_cache import KVCache
from .loader import LoadedModel, load_model
from .lora import LoadedAdapters, LoraAdapter
from .model import LlamaForCausalLM
from .model_runner import ModelRunner
from .outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from .quantization import quantize
from .sampler import SampledToken, Sampler
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerConfig
from .sequence import Sequence
from .stop import check_stop

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Track:
    """The text side of one sequence."""

    seq: Sequence
    detokenizer: IncrementalDetokenizer
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(slots=True)
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    tracks: list[_Track]
    metrics: RequestMetrics
    # Filled by the first sequence while params.prompt_logprobs asks (Sequence.wants_prompt_logprobs).
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=lambda: [None])


# The KV pool's default size on a CPU, in tokens: 32 sequences of 1,024 tokens (720 MiB for SmolLM2-135M in
# bfloat16). The step time on a CPU grows with the batch, so more room rarely serves more; see docs/local.md.
DEFAULT_CPU_KV_TOKENS = 32768


class LLMEngine:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        self.loaded = loaded or load_model(
            config.model, dtype=config.dtype, device=config.device, cache_dir=config.cache_dir, tokenizer=config.tokenizer
        )
        model = self.loaded.model
        if config.quantization:
            quantize(self.loaded, config.quantization)
        self.tokenizer = self.loaded.tokenizer
        self.max_model_len = min(config.max_model_len or self.loaded.max_model_len, self.loaded.max_model_len)
        num_blocks = self._num_kv_blocks(model)
        kv_cache = KVCache(
            model.num_layers, num_blocks, config.block_size, model.num_kv_heads, model.head_dim, model.dtype, model.device
        )
        self.block_manager = BlockManager(
            num_blocks,
            config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            on_first_use=kv_cache.zero_block,
        )
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens), self.block_manager
        )
        # Requests without a seed draw from one generator, seeded by the config.
        sampler = Sampler(self.loaded.eos_token_ids, generator=torch.Generator(model.device).manual_seed(config.seed))
        self.runner = ModelRunner(model, kv_cache, sampler, config.block_size)
        # Structured outputs: grammars compiled on first use (AsyncLLMEngine compiles them on its tokenizer thread).
        self.grammars = GrammarCompiler(self.tokenizer, self.vocab_size)
        self._requests: dict[str, _Request] = {}
        self.loras = LoadedAdapters(config.max_loras, config.max_lora_rank)
        self.sleeping = False  # /sleep released the KV cache's memory; /wake_up takes it again
        logger.info(
            "engine ready: %s on %s (%s), context %d; KV cache of %d blocks x %d tokens (%d tokens) reserves %d MiB,"
            " touched as it is used",
            self.loaded.name, model.device, model.dtype, self.max_model_len, num_blocks, config.block_size,
            num_blocks * config.block_size, kv_cache.num_bytes >> 20,
        )  # fmt: skip

    def add_request(
        self, request_id: str, prompt: PromptType, params: SamplingParams, lora: str | None = None
    ) -> None:
        """Queue a request, all or nothing: every check runs and every sequence is built before one is queued.

        ``prompt`` is in one of vLLM's forms (see ``inputs``); ``lora`` names a loaded LoRA adapter to run
        it through (None: the base model). Raises InvalidInput naming the input (PromptTooLong,
        CompletionTooLong, LoraNotLoaded among them), or TypeError for a prompt or params of no known
        form; the engine is then exactly as it was, so a bad request cannot touch the others.
        """
        if self.sleeping:
            raise EngineNotReady("the model is asleep (POST /wake_up wakes it)")
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        adapter = None if lora is None else self.loras.get(lora)
        text, token_ids = self._prompt_token_ids(prompt)
        self._check_fits(len(token_ids), params)
        self._check_against_model(params)
        tracks = [self._track(request_id, index, token_ids, params, adapter) for index in range(params.n)]
        if params.structured_outputs is not None:  # a constraint that does not compile is refused here
            for track in tracks:
                track.seq.matcher = self.grammars.compile(params.structured_outputs)
        # Nothing below can raise: the request is queued whole or not at all.
        for track in tracks:
            self.scheduler.add(track.seq)
        self._requests[request_id] = _Request(request_id, text, list(token_ids), tracks, RequestMetrics(time.time()))

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding matrix, which token ids index (the tokenizer may know more or fewer ids)."""
        return int(self.loaded.model.embed_tokens.shape[0])

    def _prompt_token_ids(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        parsed = parse_prompt(prompt)
        text, token_ids = parsed.text, parsed.token_ids
        if token_ids is None:  # the offline API; the server encodes on its tokenizer thread (AsyncLLMEngine)
            token_ids = self.tokenizer.encode(text, add_special_tokens=False)
        if text is not None:  # ids from the model's own tokenizer, which may know more ids than the model has rows
            outside = first_out_of_range(token_ids, self.vocab_size)
            if outside is not None:
                message = out_of_vocabulary(token_ids[outside], "the encoded prompt", self.vocab_size)
                raise InvalidInput(message, param="prompt")
        else:
            check_token_ids(token_ids, self.vocab_size, param="prompt", where="the prompt")
        if not token_ids:
            raise InvalidInput("The prompt is empty.", param="prompt")
        return text, token_ids

    def _check_fits(self, prompt_tokens: int, params: SamplingParams) -> None:
        if prompt_tokens >= self.max_model_len:
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {prompt_tokens} tokens, which leaves no room for an answer."
            )
        # As vLLM: prompt + max_tokens may fill the context exactly; None runs until it is full.
        if params.max_tokens is not None and prompt_tokens + params.max_tokens > self.max_model_len:
            raise CompletionTooLong(self.max_model_len, prompt_tokens, params.max_tokens)
        longest = self.max_model_len if params.max_tokens is None else prompt_tokens + params.max_tokens
        if self.block_manager.blocks_needed(longest) > self.block_manager.num_blocks:
            raise PromptTooLong(
                f"The KV cache holds {self.block_manager.num_blocks * self.config.block_size} tokens; "
                f"this request may need {longest}."
            )

    def _check_against_model(self, params: SamplingParams) -> None:
        """What SamplingParams cannot check alone: the engine's batch size and the model's vocabulary."""
        if params.n > self.config.max_num_seqs:
            raise InvalidInput(
                f"n must be at most {self.config.max_num_seqs} (this engine's max_num_seqs), got {params.n}.", param="n"
            )
        check_token_ids(params.stop_token_ids, self.vocab_size, param="stop_token_ids", where="stop_token_ids")
        biased = list(params.logit_bias or ())
        outside = first_out_of_range(biased, self.vocab_size)
        if outside is not None:
            raise InvalidInput(out_of_vocabulary(biased[outside], "logit_bias", self.vocab_size), param="logit_bias")

    def _track(
        self, request_id: str, index: int, token_ids: list[int], params: SamplingParams, lora: LoraAdapter | None
    ) -> _Track:
        seq = Sequence(request_id, index, list(token_ids), len(token_ids), params, lora=lora)
        seed = params.seed_for(index)
        if seed is not None:
            seq.generator = torch.Generator(device=self.runner.device).manual_seed(seed)
        return _Track(seq, IncrementalDetokenizer(self.tokenizer, token_ids, params.skip_special_tokens))

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its blocks; unknown or finished ids are ignored."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        for track in request.tracks:
            if not track.seq.is_finished:
                self.scheduler.finish(track.seq, "abort")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished

    def read_lora(self, name: str, path: str) -> LoraAdapter:
        """The PEFT adapter at ``path``, checked against the model (InvalidLoraAdapter, LoraLimitReached);
        not served until ``add_lora``. Reads files only: any thread may call it while the engine steps."""
        return self.loras.read(path, name, self.loaded.model)

    def add_lora(self, adapter: LoraAdapter) -> None:
        """Serve ``adapter`` to requests that name it; a name taken meanwhile or a full table refuses, changing nothing."""
        self.loras.add(adapter)

    def remove_lora(self, name: str) -> bool:
        """Stop serving the adapter ``name``; False while requests on it are unfinished (nothing changed then),
        LoraNotLoaded for a name not loaded. Its cached blocks are never found again (its id is not reused)."""
        adapter = self.loras.get(name)
        scheduler = self.scheduler
        if any(seq.lora is adapter for seq in (*scheduler.running, *scheduler.waiting)):
            return False
        self.loras.remove(name)
        return True

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix; False while requests hold blocks (nothing changed then), as in vLLM."""
        return self.block_manager.reset_prefix_cache()

    def sleep(self) -> bool:
        """Release the KV cache's memory and refuse requests until ``wake_up``; False while requests run.

        The weights stay where they are (vLLM's level 1 moves them to the CPU; on a CPU there is nowhere to go).
        """
        if self.has_unfinished_requests():
            return False
        if not self.sleeping:
            self.runner.kv_cache.release()
            self.block_manager.forget_blocks()
            self.sleeping = True
        return True

    def wake_up(self) -> None:
        """Take the KV cache's memory again; requests are served as before (with no cached prefix)."""
        if self.sleeping:
            self.runner.kv_cache.allocate()
            self.sleeping = False

    def step(self) -> list[RequestOutput]:
        """Run one batch; return the state of every request that progressed."""
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            return []
        scheduled_at = time.time()
        for seq in scheduled.preempted:
            logger.debug("preempted request %s (sequence %d)", seq.request_id, seq.index)
        try:
            result = self.runner.run(scheduled)
        except Exception as error:  # a bug, an out-of-memory: this step's requests end, the engine serves on
            failed = sorted({item.seq.request_id for item in scheduled.scheduled})
            for request_id in failed:
                self.abort_request(request_id)
            raise StepFailed(failed, error) from error
        now = time.time()
        for item in scheduled.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.cache_full_blocks(item.seq)
            metrics = self._requests[item.seq.request_id].metrics
            if metrics.first_scheduled_time is None:  # its step began when schedule() returned, close enough to now
                metrics.first_scheduled_time = scheduled_at
        progressed: dict[str, _Request] = {}
        for seq, scored in result.prompt_logprobs:
            self._append_prompt_logprobs(self._requests[seq.request_id], seq, scored)
        for seq, sampled in result.sampled:
            request = self._requests[seq.request_id]
            self._append_token(request.tracks[seq.index], sampled)
            progressed[request.request_id] = request
        for item in scheduled.scheduled:
            if item.seq.params.max_tokens == 0 and not item.seq.in_prefill:
                # Its prompt is computed (and scored); it may generate nothing, so it is done.
                self.scheduler.finish(item.seq, "length")
                progressed[item.seq.request_id] = self._requests[item.seq.request_id]
        # An output carries complete prompt logprobs: none goes out while the first sequence still scores.
        ready = [request for request in progressed.values() if not request.tracks[0].seq.wants_prompt_logprobs]
        for request in ready:
            if request.metrics.first_token_time is None:
                request.metrics.first_token_time = now
        outputs = [self._output(request) for request in ready]
        for output in outputs:
            if output.finished:
                self._requests.pop(output.request_id).metrics.finished_time = time.time()
        return outputs

    def _append_prompt_logprobs(self, request: _Request, seq: Sequence, scored: list[TokenLogprob]) -> None:
        # The runner scored tokens num_scored_prompt_tokens onwards; a recomputed prompt scores none twice.
        assert len(request.prompt_logprobs) == seq.num_scored_prompt_tokens
        request.prompt_logprobs.extend(scored)
        seq.num_scored_prompt_tokens += len(scored)

    def _append_token(self, track: _Track, sampled: SampledToken) -> None:
        seq = track.seq
        seq.token_ids.append(sampled.token_id)
        if seq.matcher is not None and not seq.matcher.consume_token(sampled.token_id):
            # The mask allowed only tokens the grammar takes: this is llguidance's error, not the request's.
            logger.warning("request %s: the grammar refused a token it allowed: %s", seq.request_id,
                           seq.matcher.get_error())  # fmt: skip
            self.scheduler.finish(seq, "abort")
            return
        if sampled.logprob is not None:
            track.logprobs.append(TokenLogprob(sampled.token_id, sampled.logprob, sampled.top_logprobs or {}))
        delta = track.detokenizer.add(sampled.token_id)
        track.text += delta
        stop = check_stop(seq, track.text, len(delta), self.loaded.eos_token_ids, self.max_model_len)
        if stop is None:
            return
        if stop.text_end is not None:
            track.text = track.text[: stop.text_end]
        seq.stop_reason = stop.stop_reason
        self.scheduler.finish(seq, stop.finish_reason)

    def _output(self, request: _Request) -> RequestOutput:
        return RequestOutput(
            request.request_id,
            request.prompt,
            request.prompt_token_ids,
            [
                CompletionOutput(
                    index=track.seq.index,
                    text=track.text,
                    token_ids=track.seq.output_token_ids,
                    finish_reason=track.seq.finish_reason,
                    stop_reason=track.seq.stop_reason,
                    logprobs=list(track.logprobs) if track.seq.params.logprobs is not None else None,
                )
                for track in request.tracks
            ],
            num_cached_tokens=request.tracks[0].seq.num_cached_tokens,
            # Not copied: outputs go out only once it is complete, and it never changes after.
            prompt_logprobs=None if request.tracks[0].seq.params.prompt_logprobs is None else request.prompt_logprobs,
            metrics=request.metrics,
        )

    def _num_kv_blocks(self, model: LlamaForCausalLM) -> int:
        config = self.config
        per_block = KVCache.bytes_per_block(
            model.num_layers, config.block_size, model.num_kv_heads, model.head_dim, model.dtype
        )
        budget = config.kv_cache_bytes or int(_memory_bytes(model.device) * config.kv_cache_fraction)
        # More blocks than every sequence at full context could use is memory thrown away.
        useful = config.max_num_seqs * -(-self.max_model_len // config.block_size)
        if config.kv_cache_bytes is None and model.device.type == "cpu":
            # A CPU shares its memory with everything else on the machine: by default the pool holds
            # DEFAULT_CPU_KV_TOKENS (at least one full context), not a tenth of RAM (2.4 GB for a 135M model).
            wanted = max(DEFAULT_CPU_KV_TOKENS, self.max_model_len)
            useful = min(useful, -(-wanted // config.block_size))
        num_blocks = min(budget // per_block, useful)
        if num_blocks < -(-self.max_model_len // config.block_size):
            logger.warning("the KV cache holds %d blocks: less than one full-length sequence", num_blocks)
        if num_blocks < 1:
            raise ValueError(f"kv cache budget of {budget} bytes is smaller than one block ({per_block} bytes)")
        return num_blocks


def _memory_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device; physical memory for the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
