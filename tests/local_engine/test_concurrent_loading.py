"""Two models loading at once, as the zero-config server loads SmolLM2 and all-MiniLM-L6-v2.

transformers patches process-wide state while it builds a model (see
local_engine/loader.py); unguarded, two loads on two threads left one with
an untied, meta-device head in about one start of five, and broke every
later load in the process. Each round here loads a tied Llama and a BERT
encoder on two threads released together.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, PreTrainedModel
from transformers import LlamaForCausalLM as HFLlama

from local_engine.embeddings import EmbeddingModel
from local_engine.loader import check_materialised, load_model
from tests.local_engine.test_loader import save_tokenizer
from tests.local_engine.tiny import TINY

ROUNDS = 25  # the race hit about one load in five: 25 rounds miss it with odds 0.8**25, 0.4%


@pytest.fixture(scope="module")
def tied_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "tied-llama"
    torch.manual_seed(0)
    HFLlama(LlamaConfig(**TINY, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)).save_pretrained(directory)
    save_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(directory)
    save_tokenizer(directory)
    return directory


def test_a_llama_and_an_encoder_load_together_every_time(tied_llama_dir: Path, tiny_bert_dir: Path) -> None:
    expected = load_model(tied_llama_dir, dtype="float32").model.embed_tokens
    failures: list[str] = []
    for _ in range(ROUNDS):
        start = threading.Barrier(2)
        loaded: dict[str, object] = {}

        def chat() -> None:
            start.wait()
            try:
                loaded["chat"] = load_model(tied_llama_dir, dtype="float32")
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                failures.append(f"chat: {error!r}")

        def encoder() -> None:
            start.wait()
            try:
                loaded["encoder"] = EmbeddingModel(str(tiny_bert_dir))
            except Exception as error:  # noqa: BLE001
                failures.append(f"encoder: {error!r}")

        threads = [threading.Thread(target=chat), threading.Thread(target=encoder)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        model = loaded["chat"].model  # type: ignore[attr-defined]
        # Tied means the head's weights are the embeddings', not a fresh random matrix.
        assert torch.equal(model.lm_head.weight, expected) and torch.equal(model.embed_tokens, expected)


def test_the_tie_weights_patch_never_outlives_a_load(tied_llama_dir: Path) -> None:
    original = PreTrainedModel.tie_weights
    for _ in range(3):
        threads = [threading.Thread(target=load_model, args=(tied_llama_dir,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert PreTrainedModel.tie_weights is original


def test_an_untied_head_under_a_tying_config_is_a_load_error(tied_llama_dir: Path) -> None:
    hf_model = HFLlama.from_pretrained(tied_llama_dir)
    hf_model.lm_head.weight = torch.nn.Parameter(hf_model.lm_head.weight.detach().clone())
    with pytest.raises(ValueError, match="not tied"):
        check_materialised(hf_model, tied_llama_dir)
    with torch.device("meta"):
        skeleton = HFLlama(hf_model.config)
    with pytest.raises(ValueError, match="left unloaded"):
        check_materialised(skeleton, tied_llama_dir)
