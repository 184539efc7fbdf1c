"""Token ids to text, one token at a time, right for characters split across tokens.

Byte-level BPE spells a multi-byte character (an emoji, most CJK) over
several tokens; decoding a token alone gives U+FFFD. Text is therefore
taken as the difference between decoding a short window of recent tokens
with and without the newest ones, and held back while it ends in U+FFFD::

    ids      ... p p p | r r | n          p: context before prefix_offset... read_offset
                ^prefix_offset ^read_offset  n: the new token
    new text = decode(ids[prefix:]) minus decode(ids[prefix:read])

A few prompt tokens seed the window so that the first output token's
leading space (SentencePiece's "▁") decodes as it does in context.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

# Prompt tokens kept as context for the first output tokens (vLLM uses 5 too).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""

    def add(self, token_id: int) -> str:
        """Take the next output token; return the text it completes (may be "")."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""  # an unfinished character, or a token that spells nothing (a skipped special token)
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self.text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special, clean_up_tokenization_spaces=False)
