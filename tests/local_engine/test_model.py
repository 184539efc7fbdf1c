"""The engine's forward over the paged KV cache gives transformers' logits.

Tiny random models (2 layers, 4 query heads sharing 2 KV heads) in float32,
so every path can be checked to ~1e-5: a whole prefill, a prefill in chunks
followed by decodes through a shuffled block table, and one batch mixing a
prefill chunk with decodes.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import (
    LlamaConfig,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers import (
    LlamaForCausalLM as HFLlama,
)

from local_engine.attention import AttentionMetadata
from local_engine.kv_cache import KVCache
from local_engine.model import LlamaForCausalLM
from local_engine.model.linear import FrozenLinear, can_pack_for_cpu
from tests.local_engine.tiny import TINY

CPU = torch.device("cpu")
BLOCK_SIZE = 4
NUM_BLOCKS = 32
ATOL = 1e-5
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def tiny_llama() -> PreTrainedModel:
    torch.manual_seed(0)
    return HFLlama(LlamaConfig(**TINY)).eval()


def randomize_biases_and_norms(model: PreTrainedModel) -> PreTrainedModel:
    """Random init leaves biases at 0 and norm weights at 1, which would hide a mistake in using them."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + (0 if name.endswith("bias") else 1))
    return model


def reference_logits(hf_model: PreTrainedModel, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0].float()


def new_cache(model: LlamaForCausalLM, device: torch.device = CPU) -> KVCache:
    return KVCache(model.num_layers, NUM_BLOCKS, BLOCK_SIZE, model.num_kv_heads, model.head_dim, model.dtype, device)


def shuffled_table(
    num_tokens: int, seed: int, exclude: set[int] = frozenset(), num_blocks: int = NUM_BLOCKS
) -> list[int]:
    """Block ids in no particular order: the cache must follow the table, not memory order."""
    free = [block for block in range(num_blocks) if block not in exclude]
    random.Random(seed).shuffle(free)
    return free[: -(-num_tokens // BLOCK_SIZE)]


def step(
    model: LlamaForCausalLM,
    cache: KVCache,
    chunks: list[tuple[list[int], int, list[int]]],
    device: torch.device = CPU,
) -> torch.Tensor:
    """One forward over ``chunks`` of (new token ids, context length after the step, block table); logits per row."""
    metadata = AttentionMetadata.build(
        [len(ids) for ids, _, _ in chunks],
        [ctx for _, ctx, _ in chunks],
        [table for _, _, table in chunks],
        BLOCK_SIZE,
        device,
    )
    input_ids = torch.tensor([token for ids, _, _ in chunks for token in ids], device=device)
    hidden = model(input_ids, metadata.positions, metadata, cache)
    return model.compute_logits(hidden).cpu()


def test_full_prefill_matches_transformers() -> None:
    hf_model = tiny_llama()
    model = LlamaForCausalLM.from_transformers(hf_model, torch.float32, CPU)
    tokens = torch.randint(0, 256, (21,)).tolist()
    logits = step(model, new_cache(model), [(tokens, 21, shuffled_table(21, seed=1))])
    assert logits.dtype == torch.float32 and logits.shape == (21, 256)
    torch.testing.assert_close(logits, reference_logits(hf_model, tokens), atol=ATOL, rtol=0)


def test_chunked_prefill_then_decodes_through_a_shuffled_table() -> None:
    hf_model = tiny_llama()
    model = LlamaForCausalLM.from_transformers(hf_model, torch.float32, CPU)
    tokens = torch.randint(0, 256, (19,)).tolist()  # 13 prompt tokens, then 6 fed back one at a time
    table = shuffled_table(19, seed=2)
    assert table != sorted(table)
    cache = new_cache(model)
    rows = [
        step(model, cache, [(tokens[:5], 5, table)]),
        step(model, cache, [(tokens[5:13], 13, table)]),  # a chunk that starts mid-block
    ]
    for position in range(13, 19):
        rows.append(step(model, cache, [(tokens[position : position + 1], position + 1, table)]))
    torch.testing.assert_close(torch.cat(rows), reference_logits(hf_model, tokens), atol=ATOL, rtol=0)


@pytest.mark.parametrize("decodes_first", [True, False], ids=["decodes-first", "interleaved"])
def test_one_batch_mixing_a_prefill_chunk_and_decodes(decodes_first: bool) -> None:
    hf_model = tiny_llama()
    model = LlamaForCausalLM.from_transformers(hf_model, torch.float32, CPU)
    cache = new_cache(model)
    generator = torch.Generator().manual_seed(3)
    lengths = {"a": 12, "b": 17, "c": 5}  # total tokens each sequence has after the mixed step
    tokens = {name: torch.randint(0, 256, (n,), generator=generator).tolist() for name, n in lengths.items()}
    tables: dict[str, list[int]] = {}
    used: set[int] = set()
    for seed, name in enumerate(lengths):
        tables[name] = shuffled_table(lengths[name], seed=10 + seed, exclude=used)
        used.update(tables[name])

    # Earlier steps: a and c have all but their last token cached, b has its first 6.
    step(model, cache, [(tokens["a"][:11], 11, tables["a"]), (tokens["b"][:6], 6, tables["b"])])
    step(model, cache, [(tokens["c"][:4], 4, tables["c"])])

    chunk_a = (tokens["a"][11:], 12, tables["a"])
    chunk_b = (tokens["b"][6:], 17, tables["b"])
    chunk_c = (tokens["c"][4:], 5, tables["c"])
    order = [chunk_a, chunk_c, chunk_b] if decodes_first else [chunk_a, chunk_b, chunk_c]
    logits = step(model, cache, order)

    expected = {
        "a": reference_logits(hf_model, tokens["a"])[11:],
        "b": reference_logits(hf_model, tokens["b"])[6:],
        "c": reference_logits(hf_model, tokens["c"])[4:],
    }
    names = ["a", "c", "b"] if decodes_first else ["a", "b", "c"]
    torch.testing.assert_close(logits, torch.cat([expected[name] for name in names]), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "make_model",
    [
        pytest.param(lambda: HFLlama(LlamaConfig(**TINY, rope_scaling=LLAMA3_ROPE)), id="llama3-rope"),
        pytest.param(lambda: HFLlama(LlamaConfig(**TINY, attention_bias=True, mlp_bias=True)), id="llama-biases"),
        pytest.param(lambda: MistralForCausalLM(MistralConfig(**TINY)), id="mistral"),
        pytest.param(lambda: Qwen2ForCausalLM(Qwen2Config(**TINY)), id="qwen2"),
        pytest.param(lambda: Qwen3ForCausalLM(Qwen3Config(**TINY, head_dim=16)), id="qwen3"),
        pytest.param(lambda: HFLlama(LlamaConfig(**TINY, tie_word_embeddings=True)), id="tied"),
    ],
)
def test_other_architectures_chunked_then_decoding(make_model) -> None:
    torch.manual_seed(0)
    hf_model = randomize_biases_and_norms(make_model().eval())
    model = LlamaForCausalLM.from_transformers(hf_model, torch.float32, CPU)
    # Past the llama3 config's original 32 positions, where its scaling changes the rotation.
    tokens = torch.randint(0, 256, (70,)).tolist()
    table = shuffled_table(70, seed=4)
    cache = new_cache(model)
    rows = [step(model, cache, [(tokens[:40], 40, table)]), step(model, cache, [(tokens[40:67], 67, table)])]
    for position in range(67, 70):
        rows.append(step(model, cache, [(tokens[position : position + 1], position + 1, table)]))
    torch.testing.assert_close(torch.cat(rows), reference_logits(hf_model, tokens), atol=ATOL, rtol=0)


def test_bfloat16_stays_close_to_transformers_bfloat16() -> None:
    """The bfloat16 path (packed oneDNN weights on CPU) differs from transformers only by rounding."""
    hf_model = tiny_llama().to(torch.bfloat16)
    model = LlamaForCausalLM.from_transformers(hf_model, torch.bfloat16, CPU)
    # Two prompts in one step, enough rows for the CPU's float32 path for big bfloat16 batches (see FrozenLinear).
    length = FrozenLinear.UPCAST_MIN_ROWS // 2 + 4
    tokens = [torch.randint(0, 256, (length,)).tolist() for _ in range(2)]
    tables = [shuffled_table(length, seed=5, num_blocks=80)]
    tables.append(shuffled_table(length, seed=6, exclude=set(tables[0]), num_blocks=80))
    cache = KVCache(model.num_layers, 80, BLOCK_SIZE, model.num_kv_heads, model.head_dim, model.dtype, CPU)
    prompt_len = length - 3
    prefill = step(model, cache, [(ids[:prompt_len], prompt_len, table) for ids, table in zip(tokens, tables)])
    rows = [[prefill[:prompt_len]], [prefill[prompt_len:]]]
    for position in range(prompt_len, length):
        logits = step(
            model, cache, [(ids[position : position + 1], position + 1, table) for ids, table in zip(tokens, tables)]
        )
        rows[0].append(logits[:1])
        rows[1].append(logits[1:])
    for ids, seq_rows in zip(tokens, rows):
        logits, expected = torch.cat(seq_rows), reference_logits(hf_model, ids)
        assert (logits - expected).abs().max() < 0.05 * expected.abs().max()
        assert (logits.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("rows", [1, 7, FrozenLinear.UPCAST_MIN_ROWS + 3])
@pytest.mark.parametrize("pack", [False, True], ids=["plain", "packed"])
def test_frozen_linear_matches_f_linear(rows: int, pack: bool) -> None:
    if pack and not can_pack_for_cpu(torch.empty(1, dtype=torch.bfloat16)):
        pytest.skip("this torch build cannot pack weights for oneDNN")
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(48, 32, generator=generator).to(torch.bfloat16)
    bias = torch.randn(48, generator=generator).to(torch.bfloat16)
    x = torch.randn(rows, 32, generator=generator).to(torch.bfloat16)
    linear = FrozenLinear(weight, bias, pack=pack)
    assert linear.out_features == 48
    out = linear(x)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 48)
    expected = torch.nn.functional.linear(x.float(), weight.float(), bias.float())
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.01)  # bfloat16 output rounding


def test_metadata_maps_each_token_to_its_slot() -> None:
    # seq 0: 2 new tokens at positions 5, 6 through table [7, 2]:  slot = 2 * 4 + 1, 2 * 4 + 2
    # seq 1: 1 new token at position 2 through table [3]:         slot = 3 * 4 + 2
    metadata = AttentionMetadata.build([2, 1], [7, 3], [[7, 2], [3]], BLOCK_SIZE, CPU)
    assert metadata.positions.tolist() == [5, 6, 2]
    assert metadata.slot_mapping.tolist() == [9, 10, 14]
    assert metadata.decode_rows == slice(2, 3) and metadata.decode_kv_len == 3
    (chunk,) = metadata.prefills
    assert chunk.rows == slice(0, 2) and chunk.context_len == 7
    # Query at position 5 sees keys 0..5, the one at 6 sees 0..6.
    assert chunk.mask.tolist() == [[True] * 6 + [False], [True] * 7]


def test_metadata_rejects_a_table_too_short_for_its_context() -> None:
    with pytest.raises(ValueError):
        AttentionMetadata.build([1], [9], [[0, 1]], BLOCK_SIZE, CPU)


def test_cache_block_size_in_bytes() -> None:
    # 2 (K and V) * 30 layers * 16 tokens * 3 heads * 64 dims * 2 bytes
    assert KVCache.bytes_per_block(30, 16, 3, 64, torch.bfloat16) == 368_640
    cache = KVCache(2, 3, 4, 2, 8, torch.float32, CPU)
    assert cache.num_bytes == 3 * KVCache.bytes_per_block(2, 4, 2, 8, torch.float32)
    assert cache[1].k.shape == (12, 2, 8) and cache[1].k_blocks.shape == (3, 4, 2, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_matches_transformers() -> None:
    cuda = torch.device("cuda")
    hf_model = tiny_llama()
    model = LlamaForCausalLM.from_transformers(hf_model, torch.float32, cuda)
    tokens = torch.randint(0, 256, (15,)).tolist()
    table = shuffled_table(15, seed=6)
    cache = new_cache(model, cuda)
    rows = [step(model, cache, [(tokens[:12], 12, table)], cuda)]
    for position in range(12, 15):
        rows.append(step(model, cache, [(tokens[position : position + 1], position + 1, table)], cuda))
    # TF32 matmuls on recent GPUs round more than the CPU does.
    torch.testing.assert_close(torch.cat(rows), reference_logits(hf_model, tokens), atol=1e-3, rtol=1e-3)
