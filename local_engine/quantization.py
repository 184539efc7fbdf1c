"""Quantizing a loaded model, with the calibration text "w8a8" reads first.

Weight-only kinds need nothing but the weights. "w8a8" also quantizes
activations, and shares their range out with the weights per channel (see
``model.linear.DynamicInt8``), so it first runs a short text through the
exact model to see which channels carry large values. The text mixes the
kinds of input a chat model serves: a chat-templated exchange, prose, a list,
numbers and code.
"""

from __future__ import annotations

import torch

from .config import QUANTIZATION_KINDS
from .loader import LoadedModel

_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly and accurately."},
    {"role": "user", "content": "How do bees make honey, and why does it keep for so long?"},
    {
        "role": "assistant",
        "content": (
            "Bees collect nectar from flowers and carry it back to the hive in a special stomach. "
            "Worker bees pass it from mouth to mouth, adding enzymes that split its sugars, then spread "
            "it in wax cells and fan it with their wings until most of the water evaporates. Honey keeps "
            "because it holds very little water, is slightly acidic and contains traces of hydrogen "
            "peroxide, so bacteria and moulds cannot grow in it."
        ),
    },
    {"role": "user", "content": "Give me three tips for a first trip to Japan, and a short Python example."},
    {
        "role": "assistant",
        "content": (
            "1. Buy a rail pass before you leave if you plan long train rides.\n"
            "2. Carry some cash: small shops and temples often take no cards.\n"
            "3. Learn a few phrases such as 'arigatou gozaimasu' (thank you).\n\n"
            "```python\n"
            "def fahrenheit(celsius: float) -> float:\n"
            "    return celsius * 9 / 5 + 32\n\n"
            "print([round(fahrenheit(c), 1) for c in (-40, 0, 21.5, 100)])\n"
            "```\n"
            "In 2023 Japan welcomed about 25 million visitors; spring (March to May) and autumn are the "
            "most popular seasons."
        ),
    },
]


def calibration_ids(loaded: LoadedModel) -> torch.Tensor:
    """The calibration text as token ids, in the model's chat template when it has one."""
    tokenizer = loaded.tokenizer
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(_CONVERSATION, tokenize=False)
    else:
        text = "\n\n".join(message["content"] for message in _CONVERSATION)
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False)[: loaded.max_model_len])


def quantize(loaded: LoadedModel, kind: str) -> None:
    """Add ``kind``'s quantized twins to ``loaded.model`` (in place; CPU only)."""
    if kind not in QUANTIZATION_KINDS:
        raise ValueError(f"unknown quantization {kind!r}; expected one of {list(QUANTIZATION_KINDS)}")
    loaded.model.quantize(kind, calibration_ids(loaded) if kind == "w8a8" else None)
