from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from local_engine.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello world, how are you?",
    "Emoji split over bytes: 🌍🚀 and a flag 🇫🇷.",
    "café, naïve, Ærøskøbing",
    "東京は日本の首都です。",
    "  leading spaces\n\nand new lines\ttabs",
]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_to_the_whole_text(smollm2_tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    prompt = smollm2_tokenizer.encode("Question: say something.\nAnswer:", add_special_tokens=False)
    output = smollm2_tokenizer.encode(" " + text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, prompt)
    deltas = [detokenizer.add(token) for token in output]
    assert "".join(deltas) == smollm2_tokenizer.decode(output) == " " + text
    assert detokenizer.text == " " + text
    assert not any("\ufffd" in delta for delta in deltas)


def test_a_split_character_waits_for_its_last_byte(smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    output = smollm2_tokenizer.encode(" 🌍", add_special_tokens=False)
    assert len(output) > 1  # the emoji spans several byte tokens
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, [])
    deltas = [detokenizer.add(token) for token in output]
    assert deltas == [""] * (len(output) - 1) + [" 🌍"]


def test_special_tokens_are_skipped_or_kept(smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    words = smollm2_tokenizer.encode(" done", add_special_tokens=False)
    skipping = IncrementalDetokenizer(smollm2_tokenizer, [], skip_special_tokens=True)
    assert "".join(skipping.add(token) for token in [*words, end]) == " done"
    keeping = IncrementalDetokenizer(smollm2_tokenizer, [], skip_special_tokens=False)
    assert "".join(keeping.add(token) for token in [*words, end]) == " done<|im_end|>"
