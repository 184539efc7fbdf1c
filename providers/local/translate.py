"""OpenAI's request shapes, for the local engine: parameters in, checked and named in the client's terms.

Everything here is pure translation; ``chat.py`` and ``embeddings.py`` run the
models and ``answers.py`` writes the answers.
Parameter names follow OpenAI, plus vLLM's sampling extras sent through
``extra_body`` (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
``ignore_eos``, ``stop_token_ids``, ``skip_special_tokens``,
``include_stop_str_in_output``). What the output must match (response_format,
tools, vLLM's structured_outputs and guided_*) is read in ``constraints.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from local_engine import CompletionTooLong, InvalidInput, PromptTooLong, SamplingParams
from local_engine.inputs import check_token_ids, describe, is_integer, is_token_ids
from providers.errors import (
    ContextWindowExceeded,
    InvalidLocalRequest,
    UpstreamRejected,
)
from providers.local.constraints import answer_constraint, constraint_field
from providers.tokens import encoding_for
from providers.wire import Endpoint

# vLLM's extras, taken as they are.
_EXTRAS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
           "skip_special_tokens", "include_stop_str_in_output")  # fmt: skip
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat runs to the context's end


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
        options["structured_outputs"] = answer_constraint(endpoint, payload)  # tools join it once planned (chat.py)
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
        if error.param == "structured_outputs":  # a grammar the engine could not compile: from the client's field
            return constraint_field(self.endpoint, self.payload)
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


def chat_text(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """The conversation as the model's chat template writes it."""
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False))


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


def has_tool_messages(messages: list[dict[str, Any]]) -> bool:
    """Whether a conversation carries tool calls or results (rendered as ``local_engine.tool_calls`` does)."""
    return any(message.get("tool_calls") or message.get("role") == "tool" for message in messages)


def _template_message(message: object, where: str) -> dict[str, Any]:
    """A message as the chat template takes it: its role and its text, text parts joined (text only, locally);
    an assistant's ``tool_calls`` and a tool result's ``tool_call_id`` kept."""
    if not isinstance(message, dict):
        raise InvalidLocalRequest(f"`{where}` must be an object with a `role` and a `content`.", param=where)
    shaped = {"role": message.get("role"), "content": _text_content(message, where)}
    if message.get("role") == "assistant" and message.get("tool_calls") is not None:
        shaped["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
    if message.get("role") == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise InvalidLocalRequest(f"`{where}.tool_call_id` must be the id of the call answered.", param=f"{where}.tool_call_id")
        shaped["tool_call_id"] = call_id
    return shaped


def _tool_calls(calls: object, where: str) -> list[dict[str, Any]]:
    """An assistant's calls as OpenAI writes them: ``arguments`` a JSON text, as the model wrote it."""
    if not isinstance(calls, list):
        raise InvalidLocalRequest(f"`{where}` must be a list of tool calls.", param=where)
    shaped = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
            raise InvalidLocalRequest(
                f"`{where}[{index}]` must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}.",
                param=f"{where}[{index}]",
            )
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise InvalidLocalRequest(f"`{where}[{index}].function.arguments` must be a JSON text.",
                                      param=f"{where}[{index}].function.arguments")  # fmt: skip
        shaped.append({"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return shaped


def _text_content(message: dict[str, Any], where: str) -> str:
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
        if message.get("role") == "assistant" and message.get("tool_calls"):
            return ""  # only calls: the calls are the message
        # Without text there is nothing for the template to write.
        raise InvalidLocalRequest(
            f"`{where}` has no `content`: a local model needs every message's text.", param=f"{where}.content"
        )
    elif not isinstance(content, str):
        raise InvalidLocalRequest(
            f"`{where}.content` must be a text or a list of text parts, got {describe(content)}.", param=f"{where}.content"
        )
    return content


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
