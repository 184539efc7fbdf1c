"""How one request wants its tokens chosen and when it wants them to stop.

The names and meanings follow vLLM's ``SamplingParams`` so that users of
vLLM and Aphrodite can carry their code over:

- ``presence_penalty`` and ``frequency_penalty`` (OpenAI's) look at the
  tokens generated so far; ``repetition_penalty`` (the CTRL/transformers one)
  looks at the prompt and the generated tokens.
- ``logprobs=None`` returns none; ``logprobs=k`` returns the sampled token's
  log-probability and the ``k`` most likely tokens' (``k`` may be 0). They
  are the model's own distribution, before temperature and penalties.

Every value is checked here, its type as well as its range, and a bad one
is an :class:`~local_engine.errors.InvalidInput` naming the field: the
request is refused before it joins a batch, where a wrong type would fail
the step of every request running beside it. What depends on the model
(token ids against its vocabulary, max_tokens against its context) is
checked by ``LLMEngine.add_request``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from .errors import InvalidInput
from .inputs import describe, is_integer
from .structured_outputs import StructuredOutputsParams

_GREEDY_BELOW = 1e-5
# OpenAI's top_logprobs limit, and vLLM's default max_logprobs: each one is a column of every logprobs step.
MAX_LOGPROBS = 20
# Stop strings are searched on the engine's thread after every token, so each one slows the whole batch a
# little; OpenAI takes 4, vLLM any number. 16 leaves room for agent frameworks' lists.
MAX_STOP_STRINGS = 16
# Seeds are unsigned 64-bit integers, torch.Generator's range; output i of n draws from (seed + i) mod 2**64.
SEED_LIMIT = 2**64
_INTEGERS = ("n", "top_k", "min_tokens")
_OPTIONAL_INTEGERS = ("max_tokens", "logprobs", "prompt_logprobs", "seed")
_NUMBERS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
_FLAGS = ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output")
_TOKEN_KEY = re.compile(r"-?[0-9]+")  # logit_bias keys: OpenAI's JSON has them as strings, "50256"


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
    # vLLM's: each prompt token's logprob and the k most likely there (None first: nothing precedes token 0).
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # What the output must match (JSON schema, regex, choice, grammar): vLLM's, compiled by llguidance.
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        # Lists are accepted for convenience and kept as tuples: params are shared, never mutated.
        object.__setattr__(self, "stop", _stop_strings(self.stop))
        object.__setattr__(self, "stop_token_ids", _stop_token_ids(self.stop_token_ids))
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        if self.logit_bias is not None:
            object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        if self.structured_outputs is not None:  # a dict, as JSON clients send it, is read here
            object.__setattr__(self, "structured_outputs", StructuredOutputsParams.from_dict(self.structured_outputs))
        problems = self._problems()
        if problems:
            raise InvalidInput("; ".join(message for _, message in problems), param=problems[0][0])

    def _problems(self) -> list[tuple[str, str]]:
        """(param, message) for each value out of range; the types are checked already."""
        checks = [
            (self.n >= 1, "n", f"n must be at least 1, got {self.n}"),
            (self.temperature >= 0, "temperature", f"temperature must be non-negative, got {self.temperature}"),
            (0 < self.top_p <= 1, "top_p", f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, "top_k", f"top_k must be 0 or -1 (all tokens) or positive, got {self.top_k}"),
            (0 <= self.min_p <= 1, "min_p", f"min_p must be in [0, 1], got {self.min_p}"),
            (
                -2 <= self.presence_penalty <= 2,
                "presence_penalty",
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            ),
            (
                -2 <= self.frequency_penalty <= 2,
                "frequency_penalty",
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                self.repetition_penalty > 0,
                "repetition_penalty",
                f"repetition_penalty must be positive, got {self.repetition_penalty}",
            ),
            (
                self.max_tokens is None or self.max_tokens >= self._least_max_tokens,
                "max_tokens",
                f"max_tokens must be at least {self._least_max_tokens}, got {self.max_tokens}",
            ),
            (self.min_tokens >= 0, "min_tokens", f"min_tokens must be non-negative, got {self.min_tokens}"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                "min_tokens",
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                "logprobs",
                f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}",
            ),
            (
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
                "prompt_logprobs",
                f"prompt_logprobs must be in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs}",
            ),
            (
                self.seed is None or 0 <= self.seed < SEED_LIMIT,
                "seed",
                f"seed must be in [0, {SEED_LIMIT - 1}] (an unsigned 64-bit integer), got {self.seed}",
            ),
            (
                all(-100 <= bias <= 100 for bias in (self.logit_bias or {}).values()),
                "logit_bias",
                "logit_bias values must be in [-100, 100]",
            ),
            (
                len(self.stop) <= MAX_STOP_STRINGS,
                "stop",
                f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}",
            ),
            (all(self.stop), "stop", "stop strings must not be empty"),
        ]
        return [(param, message) for ok, param, message in checks if not ok]

    @property
    def _least_max_tokens(self) -> int:
        # max_tokens 0 scores the prompt and generates nothing: how harnesses ask for a log-likelihood.
        return 0 if self.prompt_logprobs is not None else 1

    def seed_for(self, index: int) -> int | None:
        """The seed of output ``index``: ``seed + index``, wrapping around the 64-bit range so any seed takes any n."""
        return None if self.seed is None else (self.seed + index) % SEED_LIMIT

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


def _check_types(params: SamplingParams) -> None:
    """InvalidInput naming the first field of the wrong type (bools are not numbers: JSON's true is not 1)."""
    values = {field.name: getattr(params, field.name) for field in fields(params)}
    for name in (*_INTEGERS, *_OPTIONAL_INTEGERS):
        value = values[name]
        if not (is_integer(value) or (value is None and name in _OPTIONAL_INTEGERS)):
            raise InvalidInput(f"{name} must be an integer, got {describe(value)}", param=name)
    for name in _NUMBERS:
        value = values[name]
        if not (is_integer(value) or isinstance(value, float)):
            raise InvalidInput(f"{name} must be a number, got {describe(value)}", param=name)
    for name in _FLAGS:
        if not isinstance(values[name], bool):
            raise InvalidInput(f"{name} must be true or false, got {describe(values[name])}", param=name)


def _stop_strings(stop: object) -> tuple[str, ...]:
    if isinstance(stop, str):
        return (stop,)
    if not isinstance(stop, (list, tuple)):
        raise InvalidInput(f"stop must be a string or a list of strings, got {describe(stop)}", param="stop")
    for index, item in enumerate(stop):
        if not isinstance(item, str):
            raise InvalidInput(f"stop strings must be strings, got {describe(item)}", param="stop", position=(index,))
    return tuple(stop)


def _stop_token_ids(stop_token_ids: object) -> tuple[int, ...]:
    """Token ids, not yet checked against the vocabulary (the engine knows it)."""
    if not isinstance(stop_token_ids, (list, tuple)):
        raise InvalidInput(
            f"stop_token_ids must be a list of token ids, got {describe(stop_token_ids)}", param="stop_token_ids"
        )
    for index, token in enumerate(stop_token_ids):
        if not is_integer(token) or token < 0:
            raise InvalidInput(
                f"stop_token_ids must hold token ids (integers from 0), got {describe(token)}",
                param="stop_token_ids",
                position=(index,),
            )
    return tuple(int(token) for token in stop_token_ids)


def _logit_bias(logit_bias: object) -> dict[int, float]:
    """Keys as ints (the sampler indexes by them), values as floats; the range is checked with the rest."""
    if not isinstance(logit_bias, Mapping):
        raise InvalidInput(f"logit_bias must map token ids to biases, got {describe(logit_bias)}", param="logit_bias")
    biases = {}
    for token, bias in logit_bias.items():
        if not (is_integer(token) or (isinstance(token, str) and _TOKEN_KEY.fullmatch(token))):
            raise InvalidInput(f"logit_bias keys must be token ids, got {describe(token)}", param="logit_bias")
        if not (is_integer(bias) or isinstance(bias, float)):
            raise InvalidInput(f"logit_bias values must be numbers, got {describe(bias)}", param="logit_bias")
        biases[int(token)] = float(bias)
    return biases
