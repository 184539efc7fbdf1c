"""Token usage of one answer: as the upstream reported it, or counted here and marked estimated."""

from __future__ import annotations

from typing import Any

from providers.counting_pool import (
    INLINE_COUNT_WORK,
    backlog_full,
    count_off_loop,
    counting_work,
)
from providers.tokens import count_messages, count_text, prompt_sizes, tokens_at_most
from providers.wire import PROMPT_FIELDS, Endpoint, Usage


def reported_usage(answer: Any) -> Usage | None:
    """The ``usage`` object of an answer (or of a stream's usage chunk), if it has a usable one."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
    reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    return Usage(prompt, completion, cached_tokens=cached, reasoning_tokens=reasoning)


def responses_usage(response: Any) -> Usage | None:
    """The usage of a Responses API object (``input_tokens``, ``output_tokens``), if it has a usable one."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    cached = _detail(usage, "input_tokens_details", "cached_tokens")
    reasoning = _detail(usage, "output_tokens_details", "reasoning_tokens")
    return Usage(prompt, completion, cached_tokens=cached, reasoning_tokens=reasoning)


def _detail(usage: dict[str, Any], details: str, name: str) -> int:
    """A count inside a usage's details object (0 when absent or not a whole number)."""
    found = usage.get(details)
    value = found.get(name) if isinstance(found, dict) else None
    return value if isinstance(value, int) and value >= 0 else 0


def answer_texts(answer: Any) -> list[tuple[int, str]]:
    """The generated text in an answer or a stream chunk, per choice index: message or delta content, or text."""
    texts = []
    for position, choice in enumerate(answer.get("choices") or () if isinstance(answer, dict) else ()):
        if not isinstance(choice, dict):
            continue
        part = choice.get("message") or choice.get("delta")
        text = part.get("content") if isinstance(part, dict) else choice.get("text")
        if isinstance(text, str):
            index = choice.get("index")
            texts.append((index if isinstance(index, int) else position, text))
    return texts


async def count_usage(endpoint: Endpoint, payload: dict[str, Any], completion: list[tuple[int, str]]) -> Usage:
    """``estimated_usage``, counted off the event loop unless the prompt and completion are short.

    While the counting threads hold ``MAX_BACKLOG`` counts, a long text is
    not queued behind them: its usage is an upper bound (``tokens_at_most``).
    Clients that send long prompts faster than they can be counted (and
    leave at once) are charged more, not allowed to pile texts up in memory.
    """
    prompt = payload.get(PROMPT_FIELDS[endpoint])
    work = counting_work(prompt)
    for _, piece in completion:  # often hundreds of pieces: summed here, not walked as items
        if work > INLINE_COUNT_WORK:
            break
        work += len(piece)
    if work > INLINE_COUNT_WORK and backlog_full():
        return Usage(tokens_at_most(prompt), tokens_at_most(completion), estimated=True)
    return await count_off_loop(lambda: estimated_usage(endpoint, payload, completion), work)


def estimated_usage(endpoint: Endpoint, payload: dict[str, Any], completion: list[tuple[int, str]]) -> Usage:
    """Usage counted with tiktoken in the model family's encoding, for an upstream that reported none.

    ``completion`` is the generated text as (choice index, piece) in order; each
    choice's pieces are joined before counting, as the tokenizer saw them.
    """
    model = payload.get("model")
    model = model if isinstance(model, str) else None
    if endpoint is Endpoint.CHAT:
        prompt = count_messages(payload.get("messages", ()), model)
    else:
        prompt = sum(prompt_sizes(payload.get(PROMPT_FIELDS[endpoint]), model))
    choices: dict[int, list[str]] = {}
    for index, piece in completion:
        choices.setdefault(index, []).append(piece)
    generated = sum(count_text("".join(pieces), model) for pieces in choices.values())
    return Usage(prompt, generated, estimated=True)
