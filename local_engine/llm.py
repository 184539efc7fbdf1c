"""The offline API, in the style of vLLM's ``LLM``::

    from local_engine import LLM, SamplingParams

    llm = LLM()                      # the embedded SmolLM2-135M-Instruct
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8))
    print(out[0].outputs[0].text)
    print(llm.chat([{"role": "user", "content": "Hi!"}], SamplingParams(temperature=0))[0].outputs[0].text)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from .config import EngineConfig
from .inputs import PromptType, is_token_ids
from .llm_engine import LLMEngine
from .loader import LoadedModel
from .outputs import RequestOutput
from .sampling_params import SamplingParams

Message = dict[str, Any]


class LLM:
    def __init__(self, model: str | None = None, *, loaded: LoadedModel | None = None, **options: Any) -> None:
        """``options`` are :class:`EngineConfig` fields (dtype, device, block_size, kv_cache_bytes, ...)."""
        self.engine = LLMEngine(EngineConfig(model=model, **options), loaded)
        self._request_ids = itertools.count()

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to the end, batched together; outputs in the prompts' order.

        A prompt is in one of vLLM's forms: a string, a list of token ids, ``{"prompt": str}`` or
        ``{"prompt_token_ids": [...]}``; anything else is a TypeError before anything runs. If one
        prompt is refused, none of the batch runs.
        """
        batch = _as_prompt_list(prompts)
        params = _params_per_prompt(sampling_params, len(batch))
        request_ids: list[str] = []
        try:
            for prompt, prompt_params in zip(batch, params):
                request_id = f"offline-{next(self._request_ids)}"
                self.engine.add_request(request_id, prompt, prompt_params)
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:  # the batch is all or nothing, as each request is
                self.engine.abort_request(request_id)
            raise
        finished: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[request_id] for request_id in request_ids]

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, through the model's chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [
            self.get_tokenizer().apply_chat_template(
                list(conversation),  # type: ignore[arg-type]
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
            for conversation in conversations
        ]
        return self.generate(prompts, sampling_params)


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    """One prompt or a list of them, as a list; what is neither goes on, for add_request to name."""
    if isinstance(prompts, (str, dict)) or (is_token_ids(prompts) and len(prompts) > 0):  # type: ignore[arg-type]
        return [prompts]  # type: ignore[list-item]
    if isinstance(prompts, (list, tuple)):
        return list(prompts)
    return [prompts]  # type: ignore[list-item]


def _params_per_prompt(
    sampling_params: SamplingParams | Sequence[SamplingParams] | None, count: int
) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * count
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    if len(sampling_params) != count:
        raise ValueError(f"{len(sampling_params)} sampling params for {count} prompts")
    return list(sampling_params)
