"""OpenAI's request and answer shapes, for the local engine: parameters in, JSON and SSE chunks out.

Everything here is pure translation; ``providers/local.py`` runs the engine.
Parameter names follow OpenAI, plus vLLM's sampling extras sent through
``extra_body`` (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
``ignore_eos``, ``stop_token_ids``, ``skip_special_tokens``,
``include_stop_str_in_output``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from local_engine import (
    CompletionOutput, CompletionTooLong, InvalidInput, PromptTooLong, RequestOutput, SamplingParams, TokenLogprob,
)  # fmt: skip
from local_engine.inputs import check_token_ids, describe, is_integer, is_token_ids

from .base import Endpoint
from .errors import ContextWindowExceeded, UpstreamRejected
from .tokens import encoding_for

# vLLM's extras, taken as they are.
_EXTRAS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
           "skip_special_tokens", "include_stop_str_in_output")  # fmt: skip
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat runs to the context's end


class InvalidLocalRequest(UpstreamRejected):
    """A parameter the engine cannot take as given."""


def sampling_params(endpoint: Endpoint, payload: dict[str, Any]) -> SamplingParams:
    """The engine's SamplingParams for an OpenAI request; InvalidLocalRequest naming the parameter if one is wrong.

    Values go to SamplingParams as sent: it checks their types and ranges, and its error names the field.
    """
    chat = endpoint is Endpoint.CHAT
    options: dict[str, Any] = {}
    for name in ("n", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "logit_bias", "stop",
                 *_EXTRAS):  # fmt: skip
        if payload.get(name) is not None:
            options[name] = payload[name]
    max_tokens = payload.get(_max_tokens_field(endpoint, payload))
    options["max_tokens"] = max_tokens if max_tokens is not None else (None if chat else COMPLETIONS_DEFAULT_MAX_TOKENS)
    if chat:
        if payload.get("logprobs"):
            options["logprobs"] = payload.get("top_logprobs") or 0
    elif payload.get("logprobs") is not None:
        options["logprobs"] = payload["logprobs"]
    try:
        options.update(_prompt_scoring(endpoint, payload, options["max_tokens"]))
        return SamplingParams(**options)
    except InvalidInput as error:
        raise RequestOrigin(endpoint, payload).refusal(error) from None


def _prompt_scoring(endpoint: Endpoint, payload: dict[str, Any], max_tokens: object) -> dict[str, Any]:
    """``prompt_logprobs`` for the engine, as vLLM's server asks for it (vllm/entrypoints/openai/protocol.py,
    ``CompletionRequest.to_sampling_params`` and ``check_logprobs``): vLLM's ``prompt_logprobs`` extra, and on
    /v1/completions ``echo`` with ``logprobs``, whose echoed prompt carries logprobs too.
    """
    asked = payload.get("prompt_logprobs")
    if asked is not None and payload.get("stream") and asked != 0:
        raise InvalidInput("prompt_logprobs are not available when stream is true", param="prompt_logprobs")
    echo = endpoint is Endpoint.COMPLETIONS and payload.get("echo") is True
    nothing_to_generate = is_integer(max_tokens) and max_tokens == 0
    if nothing_to_generate and not echo:
        # As vLLM: max_tokens 0 is how a harness asks for an echoed prompt's log-likelihood, and only that.
        raise InvalidInput("max_tokens must be at least 1, got 0", param="max_tokens")
    widths = [asked, payload.get("logprobs") if echo else None]
    if nothing_to_generate:
        widths.append(0)  # echo alone: the engine generates nothing only for a request that scores its prompt
    given = [width for width in widths if width is not None]
    if not given:
        return {}
    # One computation serves both, each shown at its own width; a value of the wrong type goes through for
    # SamplingParams to name.
    return {"prompt_logprobs": max(given) if all(is_integer(width) for width in given) else asked}


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    """Where an engine input came from in the client's request: the engine's refusals, in the client's terms.

    The engine names its own inputs (``prompt``, ``logprobs``, ``max_tokens``) and their positions; the client
    sent ``messages``, a batch of prompts, ``top_logprobs``, ``max_completion_tokens``. The error names what the
    client sent, worked out here from the payload, never from the message text.
    """

    endpoint: Endpoint
    payload: dict[str, Any]
    prompt_index: int = 0  # the prompt's place in a completions batch

    def param(self, error: InvalidInput) -> str:
        chat = self.endpoint is Endpoint.CHAT
        if error.param == "prompt":
            if chat:
                return "messages"  # the chat template wrote the prompt: positions in it mean nothing to the client
            prompt = self.payload.get("prompt")
            root = "prompt" if isinstance(prompt, str) or is_token_ids(prompt) else f"prompt[{self.prompt_index}]"
            return root + "".join(f"[{index}]" for index in error.position)
        if error.param == "input" and _one_embedding_input(self.payload.get("input")):
            return "input" + "".join(f"[{index}]" for index in error.position[1:])  # the engine saw [input]
        if error.param == "max_tokens":
            return _max_tokens_field(self.endpoint, self.payload)
        if error.param == "logprobs" and chat:
            return "top_logprobs"
        return error.path

    def refusal(self, error: InvalidInput, provider: str | None = None) -> UpstreamRejected:
        param = self.param(error)
        if isinstance(error, PromptTooLong):
            return ContextWindowExceeded(str(error), param=param, provider=provider)
        if isinstance(error, CompletionTooLong):
            message = error.describe("messages" if self.endpoint is Endpoint.CHAT else "prompt")
        else:
            message = f"Invalid value for '{param}': {error}"
        return InvalidLocalRequest(message, param=param, provider=provider)


def _max_tokens_field(endpoint: Endpoint, payload: dict[str, Any]) -> str:
    """The field that set the completion's length: chat's max_completion_tokens wins over max_tokens, as at OpenAI."""
    if endpoint is Endpoint.CHAT and payload.get("max_completion_tokens") is not None:
        return "max_completion_tokens"
    return "max_tokens"


def chat_prompt(payload: dict[str, Any], apply_template: Callable[[list[dict[str, Any]]], str]) -> str:
    """The conversation as the model's chat template writes it, ready for the assistant's turn."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidLocalRequest("`messages` must be a non-empty list of messages.", param="messages")
    conversation = [_template_message(message, f"messages[{index}]") for index, message in enumerate(messages)]
    try:
        return apply_template(conversation)
    except Exception as error:  # the template's own checks (roles that must alternate, ...)
        raise InvalidLocalRequest(f"The model's chat template refused the messages: {error}", param="messages") from None


def _template_message(message: object, where: str) -> dict[str, Any]:
    """A message as the chat template takes it: its role and its text, text parts joined (text only, locally)."""
    if not isinstance(message, dict):
        raise InvalidLocalRequest(f"`{where}` must be an object with a `role` and a `content`.", param=where)
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for position, part in enumerate(content):
            part_where = f"{where}.content[{position}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidLocalRequest(f"Local models take text only; `{part_where}` is a `{kind}` part.", param=part_where)
            if not isinstance(part.get("text"), str):
                raise InvalidLocalRequest(
                    f"`{part_where}.text` must be a string, got {describe(part.get('text'))}.", param=f"{part_where}.text"
                )
            texts.append(part["text"])
        content = "".join(texts)
    elif content is None:
        # Without text there is nothing for the template to write (tool calls are not offered locally).
        raise InvalidLocalRequest(
            f"`{where}` has no `content`: a local model needs every message's text.", param=f"{where}.content"
        )
    elif not isinstance(content, str):
        raise InvalidLocalRequest(
            f"`{where}.content` must be a text or a list of text parts, got {describe(content)}.", param=f"{where}.content"
        )
    return {"role": message.get("role"), "content": content}


def completion_prompts(payload: dict[str, Any]) -> list[str | list[int]]:
    """``prompt`` as a list of prompts: a text, token ids, or a list of either (the engine checks the ids)."""
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if is_token_ids(prompt):
            return [prompt]
        for index, item in enumerate(prompt):
            if not (isinstance(item, str) or is_token_ids(item)):
                raise InvalidLocalRequest(
                    f"`prompt[{index}]` must be a text or a list of token ids, got {describe(item)}.", param=f"prompt[{index}]"
                )
        return list(prompt)
    raise InvalidLocalRequest("`prompt` must be a text, a list of token ids, or a list of those.", param="prompt")


def embedding_inputs(payload: dict[str, Any]) -> list[Any]:
    """``input`` as a list of inputs (the embedder checks each); one text or one token-id list is one input."""
    raw = payload.get("input")
    return [raw] if _one_embedding_input(raw) else raw if isinstance(raw, list) else []


def _one_embedding_input(raw: object) -> bool:
    return isinstance(raw, str) or (isinstance(raw, list) and bool(raw) and is_token_ids(raw))


def decode_openai_token_ids(inputs: Sequence[object]) -> list[object]:
    """Embedding inputs, each token-id list in OpenAI's cl100k_base decoded to its text (the rest as given).

    The local model then tokenizes the text its own way. InvalidInput (``input``, position) for an id
    cl100k_base does not have; the embedder checks everything else.
    """
    encoding = encoding_for()  # cl100k_base: every OpenAI embedding model's, and what LangChain sends
    decoded: list[object] = []
    for index, item in enumerate(inputs):
        if not (isinstance(item, list) and item and is_token_ids(item)):
            decoded.append(item)
            continue
        check_token_ids(
            item, encoding.n_vocab, param="input", where="an input", position=(index,), vocabulary="cl100k_base"
        )
        try:
            decoded.append(encoding.decode(item, errors="replace"))  # a chunk may end inside a character
        except KeyError:  # an id in one of cl100k_base's gaps (100256, 100261-100275)
            gap = next(i for i, token in enumerate(item) if not _cl100k_has(encoding, token))
            raise InvalidInput(
                f"Token id {item[gap]} in an input is not a cl100k_base token.", param="input", position=(index, gap)
            ) from None
    return decoded


def _cl100k_has(encoding: Any, token: int) -> bool:
    try:
        encoding.decode_single_token_bytes(token)
    except KeyError:
        return False
    return True


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
                    message = {"role": "assistant", "content": choice.text, "refusal": None}
                    entry = {"index": index, "message": message, "logprobs": self._chat_logprobs(choice.logprobs)}
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


def _finish_reason(choice: CompletionOutput) -> str | None:
    return "length" if choice.finish_reason == "length" else "stop" if choice.finish_reason else None
