"""The offline API, in the style of vLLM's ``LLM``::

    from local_engine import LLM, SamplingParams

    llm = LLM()                      # the embedded SmolLM2-135M-Instruct
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8))
    print(out[0].outputs[0].text)
    print(llm.chat([{"role": "user", "content": "Hi!"}], SamplingParams(temperature=0))[0].outputs[0].text)

Tools, as OpenAI takes them; the output's text is the model's raw text, its calls read by ``parse_tool_calls``::

    out = llm.chat(messages, SamplingParams(max_tokens=64), tools=[weather], tool_choice="required")
    parsed = llm.parse_tool_calls(out[0].outputs[0].text)     # .content, .tool_calls (id, name, arguments)
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
from .tool_calls import (
    FRAMINGS,
    ToolPlan,
    render_prompt,
    resolve_format,
    trigger_token_id,
)
from .tool_parser import ParsedOutput, parse_tool_calls

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
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool = True,
        tool_call_format: str = "auto",
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, through the model's chat template.

        With ``tools`` (OpenAI's ``tools``, ``tool_choice``, ``parallel_tool_calls``), the tools go into the
        prompt as the template writes them, or in the generic format for a template without tools
        (``local_engine.tool_calls``), and the output is constrained to what ``tool_choice`` asks;
        messages may carry an assistant's ``tool_calls`` and ``role: "tool"`` results. ``chat_template``
        is for conversations without tools. InvalidInput naming ``tools[i]...`` or ``tool_choice``.
        """
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        with_tools = tools is not None or any(
            m.get("tool_calls") or m.get("role") == "tool" for conversation in conversations for m in conversation  # type: ignore[union-attr]
        )
        if with_tools:
            plan = self.tool_plan(tools, tool_choice, parallel_tool_calls, tool_call_format) if tools is not None else None
            tokenizer = self.get_tokenizer()
            texts = [render_prompt(tokenizer, list(c), plan, add_generation_prompt) for c in conversations]  # type: ignore[arg-type]
            params = _params_per_prompt(sampling_params, len(texts))
            if plan is not None:
                params = [plan.sampling_params(prompt_params) for prompt_params in params]
            return self.generate(texts, params)  # type: ignore[arg-type]
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


    def tool_plan(
        self, tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool = True, tool_call_format: str = "auto",
    ) -> ToolPlan:  # fmt: skip
        """The request's tools as this model writes calls (``plan.parse(text)`` reads them back)."""
        tokenizer = self.get_tokenizer()
        format = resolve_format(tokenizer, tool_call_format)
        return ToolPlan.build(tools, tool_choice, format, parallel=parallel_tool_calls,
                              trigger_token_id=trigger_token_id(tokenizer, format))  # fmt: skip

    def parse_tool_calls(self, text: str, tool_call_format: str = "auto") -> ParsedOutput:
        """A ``chat`` output's content and calls, in this model's format (or ``tool_call_format``'s)."""
        return parse_tool_calls(text, FRAMINGS[resolve_format(self.get_tokenizer(), tool_call_format)].trigger)


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
