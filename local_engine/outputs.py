"""What the engine hands back: vLLM's ``RequestOutput`` shape."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top_logprobs: dict[int, float]  # token id -> logprob, most likely first
    rank: int | None = None  # 1 for the most likely token; given for prompt tokens (vLLM reports it there)


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort"; None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    logprobs: list[TokenLogprob] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestMetrics:
    """When a request passed each stage, as vLLM's ``RequestMetrics``: wall-clock seconds (``time.time()``).

    Read off by tracing (queue, prefill and decode as span events); set on the engine's thread.
    """

    arrival_time: float
    first_scheduled_time: float | None = None  # its prefill began
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def time_in_queue(self) -> float | None:
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # With SamplingParams.prompt_logprobs: one entry per prompt token, None for the first (nothing precedes
    # it). Complete in every output: a request that asks has no output until its whole prompt is scored.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    metrics: RequestMetrics | None = None  # the engine's, shared: final once the output is finished

    @property
    def finished(self) -> bool:
        return all(output.finished for output in self.outputs)
