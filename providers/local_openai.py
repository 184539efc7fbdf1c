"""OpenAI's request and answer shapes, for the local engine: parameters in, JSON and SSE chunks out.

Everything here is pure translation; ``providers/local.py`` runs the engine.
Parameter names follow OpenAI, plus vLLM's sampling extras sent through
``extra_body`` (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
``ignore_eos``, ``stop_token_ids``, ``skip_special_tokens``,
``include_stop_str_in_output``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from local_engine import CompletionOutput, RequestOutput, SamplingParams, TokenLogprob

from .base import Endpoint
from .errors import UpstreamRejected

# vLLM's extras, taken as they are.
_EXTRAS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
           "skip_special_tokens", "include_stop_str_in_output")  # fmt: skip
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat runs to the context's end


class InvalidLocalRequest(UpstreamRejected):
    """A parameter the engine cannot take as given."""


def sampling_params(endpoint: Endpoint, payload: dict[str, Any]) -> SamplingParams:
    """The engine's SamplingParams for an OpenAI request; InvalidLocalRequest naming the parameter if one is wrong."""
    chat = endpoint is Endpoint.CHAT
    options: dict[str, Any] = {}
    for name in ("n", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "logit_bias", *_EXTRAS):
        if payload.get(name) is not None:
            options[name] = payload[name]
    max_tokens = payload.get("max_completion_tokens") if chat else None
    max_tokens = max_tokens if max_tokens is not None else payload.get("max_tokens")
    options["max_tokens"] = max_tokens if max_tokens is not None else (None if chat else COMPLETIONS_DEFAULT_MAX_TOKENS)
    stop = payload.get("stop")
    if stop is not None:
        options["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    if chat:
        if payload.get("logprobs"):
            options["logprobs"] = payload.get("top_logprobs") or 0
    elif payload.get("logprobs") is not None:
        options["logprobs"] = payload["logprobs"]
    try:
        return SamplingParams(**options)
    except (TypeError, ValueError) as error:
        message = str(error)
        param = message.split(" ", 1)[0] if message.split(" ", 1)[0] in options else None
        raise InvalidLocalRequest(f"Invalid request for a local model: {message}.", param=param) from None


def chat_prompt(payload: dict[str, Any], apply_template: Callable[[list[dict[str, Any]]], str]) -> str:
    """The conversation as the model's chat template writes it, ready for the assistant's turn."""
    messages = []
    for index, message in enumerate(payload["messages"]):
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only on a local model
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise InvalidLocalRequest(
                        f"Local models take text only; messages[{index}] has a `{kind}` part.",
                        param=f"messages[{index}].content",
                    )
                texts.append(part.get("text", ""))
            content = "".join(texts)
        messages.append({"role": message.get("role"), "content": content or ""})
    try:
        return apply_template(messages)
    except Exception as error:  # the template's own checks (roles that must alternate, ...)
        raise InvalidLocalRequest(f"The model's chat template refused the messages: {error}", param="messages") from None


def completion_prompts(payload: dict[str, Any]) -> list[str | list[int]]:
    """``prompt`` as a list of prompts: a text, token ids, or a list of either."""
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(item, int) for item in prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(item, (str, list)) for item in prompt):
        return list(prompt)
    raise InvalidLocalRequest("`prompt` must be a text, a list of token ids, or a list of those.", param="prompt")


def usage_object(outputs: Sequence[RequestOutput]) -> dict[str, Any]:
    """Exact usage from the engine's own token counts, with the prefix cache's share of the prompt."""
    prompt = sum(len(output.prompt_token_ids) for output in outputs)
    completion = sum(len(choice.token_ids) for output in outputs for choice in output.outputs)
    cached = sum(output.num_cached_tokens for output in outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class Formatter:
    """Builds one request's answer (or its chunks) from engine outputs."""

    def __init__(self, endpoint: Endpoint, model: str, request_id: str, payload: dict[str, Any], decode: Callable[[list[int]], str]) -> None:
        self.chat = endpoint is Endpoint.CHAT
        self.model = model
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{request_id}"
        self.object = "chat.completion" if self.chat else "text_completion"
        self.created = int(time.time())
        self.echo = not self.chat and payload.get("echo") is True
        self._decode = decode
        # Sent so far, per choice index: characters of text, logprob entries; and whether its first chunk went out.
        self._sent_chars: dict[int, int] = {}
        self._sent_logprobs: dict[int, int] = {}
        self._started: set[int] = set()
        self._finished: set[int] = set()

    # --- non-streamed ---

    def answer(self, outputs: Sequence[RequestOutput], n: int) -> dict[str, Any]:
        choices = []
        for prompt_index, output in enumerate(outputs):
            for choice in output.outputs:
                index = prompt_index * n + choice.index
                text = (output.prompt or "") + choice.text if self.echo else choice.text
                if self.chat:
                    entry = {"index": index, "message": {"role": "assistant", "content": text, "refusal": None}}
                    entry["logprobs"] = self._chat_logprobs(choice.logprobs)
                else:
                    entry = {"index": index, "text": text, "logprobs": self._completion_logprobs(choice.logprobs, 0)}
                entry["finish_reason"] = _finish_reason(choice)
                choices.append(entry)
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage_object(outputs)}  # fmt: skip

    # --- streamed ---

    def chunks(self, output: RequestOutput, holdback: int) -> list[dict[str, Any]]:
        """The chunks for what ``output`` adds to what was sent; ``holdback`` characters of an unfinished
        text stay back, since a stop string that ends there would cut them."""
        chunks = []
        for choice in output.outputs:
            index = choice.index
            finished = choice.finish_reason is not None
            if index in self._finished:
                continue
            sent = self._sent_chars.get(index, 0)
            end = len(choice.text) if finished else max(sent, len(choice.text) - holdback)
            delta_text = choice.text[sent:end]
            first = index not in self._started
            if first and self.echo:
                delta_text = (output.prompt or "") + delta_text
            logprobs = None
            if choice.logprobs is not None:
                done = self._sent_logprobs.get(index, 0)
                new = choice.logprobs[done:]
                self._sent_logprobs[index] = len(choice.logprobs)
                if new:
                    logprobs = self._chat_logprobs(new) if self.chat else self._completion_logprobs(new, sent)
            if not (delta_text or first or finished or logprobs):
                continue
            self._sent_chars[index] = end
            self._started.add(index)
            if finished:
                self._finished.add(index)
            chunks.append(self._chunk(index, delta_text, first, logprobs, _finish_reason(choice) if finished else None))
        return chunks

    def usage_chunk(self, outputs: Sequence[RequestOutput]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [],
                "usage": usage_object(outputs)}  # fmt: skip

    def _chunk(self, index: int, text: str, first: bool, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}

    # --- logprobs ---

    def _token(self, token_id: int) -> str:
        return self._decode([token_id])

    def _chat_logprobs(self, entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if entries is None:
            return None
        content = []
        for entry in entries:
            token = self._token(entry.token_id)
            top = [
                {"token": (text := self._token(token_id)), "logprob": logprob, "bytes": list(text.encode())}
                for token_id, logprob in entry.top_logprobs.items()
            ]
            content.append({"token": token, "logprob": entry.logprob, "bytes": list(token.encode()), "top_logprobs": top})
        return {"content": content, "refusal": None}

    def _completion_logprobs(self, entries: list[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
        if entries is None:
            return None
        tokens, offsets = [], []
        for entry in entries:
            offsets.append(offset)
            token = self._token(entry.token_id)
            tokens.append(token)
            offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [entry.logprob for entry in entries],
            "top_logprobs": [{self._token(t): lp for t, lp in entry.top_logprobs.items()} for entry in entries],
            "text_offset": offsets,
        }


def _finish_reason(choice: CompletionOutput) -> str | None:
    return "length" if choice.finish_reason == "length" else "stop" if choice.finish_reason else None
