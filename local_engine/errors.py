"""The engine's errors: why it refuses a request, and why it cannot run one.

::

    ValueError
    └── InvalidInput            an input the engine cannot take; ``param`` and ``position`` say which
        ├── PromptTooLong       the prompt alone fills the context (OpenAI's context_length_exceeded)
        ├── CompletionTooLong   the prompt fits, but not with max_tokens more
        ├── InvalidLoraAdapter  a LoRA adapter's files, fields or shapes the base model cannot take, or its name taken
        └── LoraNotLoaded       no LoRA adapter of that name is loaded
    RuntimeError
    ├── EngineNotReady          the model is loading, failed to load, or the engine was stopped
    ├── StepFailed              a step's forward pass or sampler raised; that step's requests were aborted
    └── LoraLimitReached        max_loras adapters are loaded already: one must be unloaded first

An ``InvalidInput`` is raised before the request joins a batch, so no other
request sees it.

``param`` is the input's name as the engine takes it: a field of
``SamplingParams`` (``seed``, ``logit_bias``, ``stop_token_ids``), or
``prompt``. ``position`` is the index path inside it (``(3,)``: the fourth
token id). A caller that holds the input under another name (a batch of
prompts, a chat) renames ``param`` and keeps ``position``; nobody needs to
read the message to know what was wrong.

A prompt of the wrong type is a ``TypeError`` (a programming mistake, as in
Python itself), raised at the same point.
"""

from __future__ import annotations

from collections.abc import Sequence


class InvalidInput(ValueError):
    def __init__(self, message: str, *, param: str, position: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.param = param
        self.position = tuple(position)

    @property
    def path(self) -> str:
        """``param`` with its position, as JSON would index it: ``prompt[3]``, ``stop_token_ids[0]``."""
        return self.param + "".join(f"[{index}]" for index in self.position)


class PromptTooLong(InvalidInput):
    def __init__(self, message: str) -> None:
        super().__init__(message, param="prompt")


class CompletionTooLong(InvalidInput):
    """``max_tokens`` more tokens than the context has room for after the prompt."""

    def __init__(self, max_model_len: int, prompt_tokens: int, max_tokens: int) -> None:
        self.max_model_len = max_model_len
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        super().__init__(self.describe("prompt"), param="max_tokens")

    def describe(self, prompt_name: str) -> str:
        """vLLM's (and OpenAI's) wording; ``prompt_name`` is what the client sent: ``prompt`` or ``messages``."""
        requested = self.prompt_tokens + self.max_tokens
        return (
            f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
            f"{requested} tokens ({self.prompt_tokens} in the {prompt_name}, {self.max_tokens} in the completion). "
            f"Please reduce the length of the {prompt_name} or completion."
        )


class InvalidLoraAdapter(InvalidInput):
    """A LoRA adapter the engine refuses before keeping anything: ``param`` is ``lora_path`` or ``lora_name``."""


class LoraNotLoaded(InvalidInput):
    """A LoRA adapter name that is not loaded (unloaded meanwhile, or never loaded)."""


class LoraLimitReached(RuntimeError):
    """``max_loras`` adapters are loaded; nothing was changed."""


class EngineNotReady(RuntimeError):
    """The model is still loading, failed to load, or the engine was stopped."""


class StepFailed(RuntimeError):
    """The forward pass or the sampler raised; the requests of that step were aborted, their blocks freed."""

    def __init__(self, request_ids: list[str], cause: Exception) -> None:
        super().__init__(f"the engine step failed: {type(cause).__name__}: {cause}")
        self.request_ids = request_ids
