"""The engine: requests in, tokens out, one ``step()`` at a time.

``step()`` is three calls: the scheduler decides the batch, the model runner
runs it, and the results are written back to the sequences (new tokens,
text, stops), freeing what finished.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence as Tokens
from dataclasses import dataclass, field

import torch

from .block_manager import BlockManager
from .config import EngineConfig
from .detokenizer import IncrementalDetokenizer
from .kv_cache import KVCache
from .loader import LoadedModel, load_model
from .model import LlamaForCausalLM
from .model_runner import ModelRunner
from .quantization import quantize
from .outputs import CompletionOutput, RequestOutput, TokenLogprob
from .sampler import SampledToken, Sampler
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerConfig
from .sequence import Sequence
from .stop import check_stop

logger = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """The prompt does not fit the model's context (OpenAI: context_length_exceeded)."""


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
        self._requests: dict[str, _Request] = {}
        logger.info(
            "engine ready: %s on %s (%s), %d KV blocks of %d tokens, context %d",
            self.loaded.name, model.device, model.dtype, num_blocks, config.block_size, self.max_model_len,
        )

    def add_request(self, request_id: str, prompt: str | Tokens[int], params: SamplingParams) -> None:
        """Queue a request; raise PromptTooLong if it cannot fit the context."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str):
            text: str | None = prompt
            token_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            text, token_ids = None, list(prompt)
        if not token_ids:
            raise ValueError("the prompt is empty")
        if len(token_ids) >= self.max_model_len:
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {len(token_ids)} tokens, which leaves no room for an answer."
            )
        longest = min(self.max_model_len, len(token_ids) + (params.max_tokens or self.max_model_len))
        if self.block_manager.blocks_needed(longest) > self.block_manager.num_blocks:
            raise PromptTooLong(
                f"The KV cache holds {self.block_manager.num_blocks * self.config.block_size} tokens; "
                f"this request may need {longest}."
            )
        tracks = []
        for index in range(params.n):
            seq = Sequence(request_id, index, list(token_ids), len(token_ids), params)
            if params.seed is not None:
                seq.generator = torch.Generator(device=self.runner.device).manual_seed(params.seed + index)
            tracks.append(_Track(seq, IncrementalDetokenizer(self.tokenizer, token_ids, params.skip_special_tokens)))
            self.scheduler.add(seq)
        self._requests[request_id] = _Request(request_id, text, list(token_ids), tracks)

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

    def step(self) -> list[RequestOutput]:
        """Run one batch; return the state of every request that progressed."""
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            return []
        for seq in scheduled.preempted:
            logger.debug("preempted request %s (sequence %d)", seq.request_id, seq.index)
        result = self.runner.run(scheduled)
        for item in scheduled.scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.cache_full_blocks(item.seq)
        progressed: dict[str, _Request] = {}
        for seq, sampled in result.sampled:
            request = self._requests[seq.request_id]
            self._append_token(request.tracks[seq.index], sampled)
            progressed[request.request_id] = request
        outputs = [self._output(request) for request in progressed.values()]
        for output in outputs:
            if output.finished:
                del self._requests[output.request_id]
        return outputs

    def _append_token(self, track: _Track, sampled: SampledToken) -> None:
        seq = track.seq
        seq.token_ids.append(sampled.token_id)
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
        )

    def _num_kv_blocks(self, model: LlamaForCausalLM) -> int:
        config = self.config
        per_block = KVCache.bytes_per_block(
            model.num_layers, config.block_size, model.num_kv_heads, model.head_dim, model.dtype
        )
        budget = config.kv_cache_bytes or int(_memory_bytes(model.device) * config.kv_cache_fraction)
        # More blocks than every sequence at full context could use is memory thrown away.
        useful = config.max_num_seqs * -(-self.max_model_len // config.block_size)
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
