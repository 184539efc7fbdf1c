"""What a request hands the engine, checked before it joins a batch.

A prompt comes in vLLM's forms: a string, a list of token ids,
``{"prompt": str}`` or ``{"prompt_token_ids": [int, ...]}``. Token ids
index the model's embedding matrix, so each must be one of its rows,
``[0, vocab_size)`` (the tokenizer may know fewer or more ids than the
matrix has rows: the matrix is what is indexed). An id out of range fails
the whole batch's forward pass, every request in it, not just its own.
"""

from __future__ import annotations

import numbers
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NotRequired, TypedDict

from .errors import InvalidInput


class TextPrompt(TypedDict):
    prompt: str


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    # The text the ids were encoded from, if they were (returned as RequestOutput.prompt, for echo).
    # The server encodes prompts on a thread of their own, so the engine's step loop never tokenizes.
    prompt: NotRequired[str]


PromptType = str | Sequence[int] | TextPrompt | TokensPrompt
PROMPT_FORMS = "a string, a list of token ids, {'prompt': str} or {'prompt_token_ids': [int, ...]}"


@dataclass(frozen=True, slots=True)
class ParsedPrompt:
    text: str | None  # the text to encode, or the one the ids came from
    token_ids: list[int] | None  # None: encode ``text``


def parse_prompt(prompt: object) -> ParsedPrompt:
    """A prompt's text and/or token ids, from any of vLLM's forms; TypeError naming anything else."""
    if isinstance(prompt, str):
        return ParsedPrompt(prompt, None)
    if isinstance(prompt, dict):
        if prompt.keys() == {"prompt"} and isinstance(prompt["prompt"], str):
            return ParsedPrompt(prompt["prompt"], None)
        keys, text = prompt.keys(), prompt.get("prompt")
        if keys in ({"prompt_token_ids"}, {"prompt_token_ids", "prompt"}) and is_token_ids(prompt["prompt_token_ids"]):
            if text is None or isinstance(text, str):
                return ParsedPrompt(text, [int(token) for token in prompt["prompt_token_ids"]])
    elif is_token_ids(prompt):
        return ParsedPrompt(None, [int(token) for token in prompt])  # type: ignore[union-attr]
    raise TypeError(f"a prompt is {PROMPT_FORMS}; got {describe(prompt)}")


def is_token_ids(value: object) -> bool:
    """A list or tuple of integers (not bools: JSON's true is not a token); an empty one too."""
    return isinstance(value, (list, tuple)) and all(is_integer(item) for item in value)


def is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_token_ids(
    token_ids: Sequence[int],
    vocab_size: int,
    *,
    param: str,
    where: str,
    position: Sequence[int] = (),
    vocabulary: str = "the model's vocabulary",
) -> None:
    """InvalidInput at the first id outside ``[0, vocab_size)``, its index appended to ``position``.

    ``where`` names the list in the message ("the prompt", "an input").
    """
    index = first_out_of_range(token_ids, vocab_size)
    if index is not None:
        message = out_of_vocabulary(token_ids[index], where, vocab_size, vocabulary)
        raise InvalidInput(message, param=param, position=(*position, index))


def first_out_of_range(token_ids: Sequence[int], vocab_size: int) -> int | None:
    """The index of the first id outside ``[0, vocab_size)``, or None."""
    if not token_ids or (0 <= min(token_ids) and max(token_ids) < vocab_size):
        return None
    return next(i for i, token in enumerate(token_ids) if not 0 <= token < vocab_size)


def out_of_vocabulary(token: int, where: str, vocab_size: int, vocabulary: str = "the model's vocabulary") -> str:
    return f"Token id {token} in {where} is outside {vocabulary} (ids 0 to {vocab_size - 1})."


def describe(value: object) -> str:
    """A short, safe rendering of what was given, for a message."""
    return f"{type(value).__name__} {reprlib.repr(value)}"
