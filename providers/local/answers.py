"""OpenAI's answer shapes, for the local engine: engine outputs out as JSON and SSE chunks.

Pure translation, as ``translate.py`` is for requests; ``chat.py`` runs the engine.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from local_engine import CompletionOutput, RequestOutput, TokenLogprob
from local_engine.tool_calls import ToolPlan
from local_engine.tool_parser import ContentDelta, ToolCallParser
from providers.wire import Endpoint


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

    def __init__(
        self, endpoint: Endpoint, model: str, request_id: str, payload: dict[str, Any],
        decode: Callable[[list[int]], str], tools: ToolPlan | None = None,
    ) -> None:  # fmt: skip
        self.chat = endpoint is Endpoint.CHAT
        # A chat whose output may hold tool calls: read back into message.tool_calls, or streamed as deltas.
        self._tools = tools
        self._parsers: dict[int, ToolCallParser] = {}
        self._called: set[int] = set()  # choices that streamed a call
        self.model = model
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{request_id}"
        self.object = "chat.completion" if self.chat else "text_completion"
        self.created = int(time.time())
        self.echo = not self.chat and payload.get("echo") is True
        # How many top_logprobs each legacy logprobs entry shows, and vLLM's prompt_logprobs (None: not asked).
        # The engine scores the prompt once at the wider of the two; each is shown at its own width.
        self._logprobs_width: int | None = None if self.chat else payload.get("logprobs")
        self._prompt_logprobs_width: int | None = payload.get("prompt_logprobs")
        self._decode = decode
        self._token_texts: dict[int, str] = {}  # an echoed prompt's logprobs decode the same top tokens again and again
        # Sent so far, per choice index: characters of text, logprob entries, the text_offset the next entry
        # takes; and whether its first chunk went out.
        self._sent_chars: dict[int, int] = {}
        self._sent_logprobs: dict[int, int] = {}
        self._next_offset: dict[int, int] = {}
        self._started: set[int] = set()
        self._finished: set[int] = set()

    # --- non-streamed ---

    def answer(self, outputs: Sequence[RequestOutput], n: int) -> dict[str, Any]:
        choices = []
        for prompt_index, output in enumerate(outputs):
            for choice in output.outputs:
                index = prompt_index * n + choice.index
                if self.chat:
                    message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
                    called = False
                    if self._tools is not None:
                        parsed = self._tools.parse(choice.text)
                        message["content"] = parsed.content
                        if parsed.tool_calls:
                            message["tool_calls"] = [call.as_openai() for call in parsed.tool_calls]
                            called = True
                    entry = {"index": index, "message": message, "logprobs": self._chat_logprobs(choice.logprobs)}
                    entry["finish_reason"] = _finish_reason(choice, called)
                    choices.append(entry)
                    continue
                else:
                    logprobs = None
                    if choice.logprobs is not None:
                        logprobs, _ = self._completion_logprobs(*self._echoed(output, choice.logprobs, first=True), 0)
                    entry = {"index": index, "text": self._echo_text(output) + choice.text, "logprobs": logprobs}
                entry["finish_reason"] = _finish_reason(choice)
                if not self.chat and self._prompt_logprobs_width is not None:
                    entry["prompt_logprobs"] = self._vllm_prompt_logprobs(output)  # vLLM puts it on each choice
                choices.append(entry)
        body = {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage_object(outputs)}  # fmt: skip
        if self.chat and self._prompt_logprobs_width is not None:
            body["prompt_logprobs"] = self._vllm_prompt_logprobs(outputs[0])  # on a chat, beside the choices
        return body

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
            if first:
                delta_text = self._echo_text(output) + delta_text
            logprobs = None
            if choice.logprobs is not None:
                done = self._sent_logprobs.get(index, 0)
                new = choice.logprobs[done:]
                self._sent_logprobs[index] = len(choice.logprobs)
                if self.chat:
                    logprobs = self._chat_logprobs(new) if new else None
                else:
                    token_ids, entries = self._echoed(output, new, first)
                    if token_ids:
                        offset = self._next_offset.get(index, 0)
                        logprobs, self._next_offset[index] = self._completion_logprobs(token_ids, entries, offset)
            if not (delta_text or first or finished or logprobs):
                continue
            self._sent_chars[index] = end
            self._started.add(index)
            if finished:
                self._finished.add(index)
            if self._tools is not None:
                chunks += self._tool_chunks(index, delta_text, first, logprobs, choice if finished else None)
                continue
            chunks.append(self._chunk(index, delta_text, first, logprobs, _finish_reason(choice) if finished else None))
        return chunks

    def _tool_chunks(
        self, index: int, text: str, first: bool, logprobs: Any, finished: CompletionOutput | None
    ) -> list[dict[str, Any]]:
        """A chat's new text read for calls: content as content chunks, each call's header and argument
        fragments in a chunk of their own (as OpenAI streams them); the finish reason on the last."""
        parser = self._parsers.setdefault(index, self._tools.parser())  # type: ignore[union-attr]
        deltas = parser.feed(text) + (parser.finish() if finished is not None else [])
        chunks, content = [], ""
        for delta in deltas:
            if isinstance(delta, ContentDelta):
                content += delta.text
                continue
            if content:
                chunks.append(self._chunk(index, content, first and not chunks, None, None))
                content = ""
            self._called.add(index)
            chunk = self._chunk(index, "", first and not chunks, None, None)
            chunk["choices"][0]["delta"] = {"role": "assistant", "content": None} if first and not chunks else {}
            chunk["choices"][0]["delta"]["tool_calls"] = [delta.as_openai()]
            chunks.append(chunk)
        reason = _finish_reason(finished, index in self._called) if finished is not None else None
        if content or logprobs is not None or (not chunks and (first or reason is not None)):
            chunks.append(self._chunk(index, content, first and not chunks, logprobs, reason))
        elif reason is not None:
            chunks[-1]["choices"][0]["finish_reason"] = reason
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
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self._decode([token_id])
        return text

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

    def _echo_text(self, output: RequestOutput) -> str:
        """The prompt as echoed before the completion: "" without echo, token ids decoded."""
        if not self.echo:
            return ""
        return output.prompt if output.prompt is not None else self._decode(output.prompt_token_ids)

    def _echoed(
        self, output: RequestOutput, entries: list[TokenLogprob], first: bool
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        """The tokens and entries a choice's legacy logprobs show: with echo, its first ones are the prompt's."""
        token_ids: list[int] = [entry.token_id for entry in entries]
        if not (self.echo and first):
            return token_ids, list(entries)
        # SamplingParams got prompt_logprobs for echo with logprobs (sampling_params): the engine scored the prompt.
        assert output.prompt_logprobs is not None, "echo with logprobs, but the prompt was not scored"
        return [*output.prompt_token_ids, *token_ids], [*output.prompt_logprobs, *entries]

    def _completion_logprobs(
        self, token_ids: list[int], entries: list[TokenLogprob | None], offset: int
    ) -> tuple[dict[str, Any], int]:
        """Legacy logprobs (None for an echoed prompt's first token, as OpenAI and vLLM), and the next text_offset.

        text_offset counts from the start of the returned text, the echoed prompt's when there is one.
        """
        tokens, offsets = [], []
        for token_id in token_ids:
            offsets.append(offset)
            token = self._token(token_id)
            tokens.append(token)
            offset += len(token)
        width = self._logprobs_width
        logprobs = {
            "tokens": tokens,
            "token_logprobs": [None if entry is None else entry.logprob for entry in entries],
            "top_logprobs": [
                None if entry is None else {self._token(t): lp for t, lp in itertools.islice(entry.top_logprobs.items(), width)}
                for entry in entries
            ],
            "text_offset": offsets,
        }
        return logprobs, offset

    def _vllm_prompt_logprobs(self, output: RequestOutput) -> list[dict[str, dict[str, Any]] | None]:
        """vLLM's ``prompt_logprobs``: None for the first token, then {token id: {logprob, rank, decoded_token}}
        with the prompt's own token first (its rank among all), then the k most likely ranked 1..k.

        Copied from vLLM: vllm/v1/engine/logprobs.py (``_make_logprob_dict``, each token decoded alone by
        ``convert_ids_list_to_tokens``), vllm/entrypoints/openai/protocol.py (``prompt_logprobs`` on
        ``CompletionResponseChoice`` and on ``ChatCompletionResponse``), and -inf clamped to -9999.0 as
        ``clamp_prompt_logprobs`` in vllm/entrypoints/openai/serving_engine.py does.
        """
        assert output.prompt_logprobs is not None, "prompt_logprobs asked, but the prompt was not scored"
        shaped: list[dict[str, dict[str, Any]] | None] = []
        for entry in output.prompt_logprobs:
            if entry is None:
                shaped.append(None)
                continue
            top = itertools.islice(entry.top_logprobs.items(), self._prompt_logprobs_width)
            ranked = [(entry.token_id, entry.logprob, entry.rank), *((t, lp, r) for r, (t, lp) in enumerate(top, 1))]
            shaped.append(
                {str(t): {"logprob": max(lp, -9999.0), "rank": r, "decoded_token": self._token(t)} for t, lp, r in ranked}
            )
        return shaped


def _finish_reason(choice: CompletionOutput, called_tools: bool = False) -> str | None:
    """OpenAI's: "tool_calls" when the output ended (not cut) with calls."""
    if choice.finish_reason == "length":
        return "length"
    if choice.finish_reason:
        return "tool_calls" if called_tools else "stop"
    return None
