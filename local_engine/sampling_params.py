"""How one request wants its tokens chosen and when it wants them to stop.

The names and meanings follow vLLM's ``SamplingParams`` so that users of
vLLM and Aphrodite can carry their code over:

- ``presence_penalty`` and ``frequency_penalty`` (OpenAI's) look at the
  tokens generated so far; ``repetition_penalty`` (the CTRL/transformers one)
  looks at the prompt and the generated tokens.
- ``logprobs=None`` returns none; ``logprobs=k`` returns the sampled token's
  log-probability and the ``k`` most likely tokens' (``k`` may be 0). They
  are the model's own distribution, before temperature and penalties.
"""

from __future__ import annotations

from dataclasses import dataclass


_GREEDY_BELOW = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) means all tokens
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    max_tokens: int | None = 16  # None: until the context is full
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and kept as tuples: params are shared, never mutated.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        if self.logit_bias:
            # OpenAI's JSON has string keys ("50256"); the sampler indexes by int.
            object.__setattr__(self, "logit_bias", {int(token): float(bias) for token, bias in self.logit_bias.items()})
        problems = self._problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _problems(self) -> list[str]:
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (self.temperature >= 0, f"temperature must be non-negative, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be 0 or -1 (all tokens) or positive, got {self.top_k}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be positive, got {self.repetition_penalty}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}"),
            (self.min_tokens >= 0, f"min_tokens must be non-negative, got {self.min_tokens}"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
            ),
            (self.logprobs is None or self.logprobs >= 0, f"logprobs must be non-negative, got {self.logprobs}"),
            (
                all(-100 <= bias <= 100 for bias in (self.logit_bias or {}).values()),
                "logit_bias values must be in [-100, 100]",
            ),
            (all(self.stop), "stop strings must not be empty"),
        ]
        return [message for ok, message in checks if not ok]

    @property
    def reads_output_tokens(self) -> bool:
        """Whether sampling looks at the tokens generated so far (penalties, min_tokens)."""
        return bool(
            self.min_tokens or self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
        )

    @property
    def greedy(self) -> bool:
        # Below this, dividing by the temperature overflows to the argmax anyway.
        return self.temperature < _GREEDY_BELOW
