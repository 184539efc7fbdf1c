"""The whole engine against transformers' generate on the same weights: token for token."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM as HFLlama
from transformers import PreTrainedTokenizerBase

from local_engine import (
    EngineConfig,
    LLMEngine,
    PromptTooLong,
    RequestOutput,
    SamplingParams,
)
from local_engine.kv_cache import KVCache
from tests.local_engine.tiny import random_llama, tiny_loaded

VOCAB = 49152  # SmolLM2's tokenizer, so outputs can be detokenized
BLOCK = 4


@pytest.fixture(scope="module")
def hf_model() -> HFLlama:
    return random_llama(VOCAB)


def make_engine(hf_model: HFLlama, tokenizer: PreTrainedTokenizerBase, **options: object) -> LLMEngine:
    loaded = tiny_loaded(hf_model, tokenizer)
    settings = {"block_size": BLOCK, "kv_cache_bytes": 1 << 22, "max_num_batched_tokens": 64, **options}
    return LLMEngine(EngineConfig(**settings), loaded)  # type: ignore[arg-type]


def reference(hf_model: HFLlama, prompt: list[int], max_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
            do_sample=False, pad_token_id=0, eos_token_id=None,
        )
    return out[0, len(prompt):].tolist()


def prompts(count: int, first_len: int = 5, step: int = 7, shared: list[int] | None = None) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    made = []
    for index in range(count):
        length = first_len + index * step
        made.append((shared or []) + torch.randint(100, VOCAB, (length,), generator=generator).tolist())
    return made


GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def run_to_end(engine: LLMEngine, arrivals: dict[int, list[tuple[str, list[int], SamplingParams]]]) -> dict[str, RequestOutput]:
    """Add requests at the step numbers given, step until all finish."""
    finished: dict[str, RequestOutput] = {}
    step = 0
    while engine.has_unfinished_requests() or any(s >= step for s in arrivals):
        for request_id, prompt, params in arrivals.pop(step, []):
            engine.add_request(request_id, prompt, params)
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        step += 1
        assert step < 10_000
    return finished


def assert_matches_reference(hf_model: HFLlama, finished: dict[str, RequestOutput], batch: list[list[int]]) -> None:
    for index, prompt in enumerate(batch):
        expected = reference(hf_model, prompt, GREEDY.max_tokens or 0)
        for output in finished[f"r{index}"].outputs:
            assert output.token_ids == expected, f"request r{index}, output {output.index}"
            assert output.finish_reason == "length"


def test_mixed_lengths_arriving_at_different_steps(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer)
    batch = prompts(5)
    arrivals = {0: [("r0", batch[0], GREEDY), ("r1", batch[1], GREEDY)], 3: [("r2", batch[2], GREEDY)],
                4: [("r3", batch[3], GREEDY)], 9: [("r4", batch[4], GREEDY)]}
    assert_matches_reference(hf_model, run_to_end(engine, arrivals), batch)


def test_prefix_caching_shares_blocks_and_keeps_outputs(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer)
    system = prompts(1, first_len=17)[0]
    batch = prompts(4, first_len=3, shared=system) + [list(system) + [500, 501]]
    arrivals = {0: [("r0", batch[0], GREEDY)], 2: [(f"r{i}", batch[i], GREEDY) for i in range(1, 5)]}
    finished = run_to_end(engine, arrivals)
    assert engine.block_manager.prefix_hits >= 4 * (len(system) // BLOCK)
    assert all(finished[f"r{i}"].num_cached_tokens >= 16 for i in range(1, 5))
    assert_matches_reference(hf_model, finished, batch)


def test_chunked_prefill(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer, max_num_batched_tokens=6)
    batch = prompts(3, first_len=20, step=11)
    finished = run_to_end(engine, {0: [(f"r{i}", p, GREEDY) for i, p in enumerate(batch)]})
    assert_matches_reference(hf_model, finished, batch)


def test_forced_preemption_recomputes_and_keeps_outputs(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    per_block = KVCache.bytes_per_block(2, BLOCK, 2, 16, torch.float32)
    # Room for about two of these sequences at once, and four of them run.
    engine = make_engine(hf_model, smollm2_tokenizer, kv_cache_bytes=per_block * 14, enable_prefix_caching=False)
    batch = prompts(4, first_len=9, step=2)
    finished = run_to_end(engine, {0: [(f"r{i}", p, GREEDY) for i, p in enumerate(batch)]})
    assert engine.scheduler.num_preemptions > 0
    assert_matches_reference(hf_model, finished, batch)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_n_outputs_share_the_prompt(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer)
    batch = prompts(1, first_len=13)
    params = SamplingParams(n=3, temperature=0, max_tokens=12, ignore_eos=True)
    finished = run_to_end(engine, {0: [("r0", batch[0], params)]})
    assert len(finished["r0"].outputs) == 3
    assert_matches_reference(hf_model, finished, batch)


def test_seed_gives_the_same_tokens_whatever_shares_the_batch(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    noise = SamplingParams(temperature=1.3, max_tokens=14, ignore_eos=True)
    prompt = prompts(1)[0]
    alone = run_to_end(make_engine(hf_model, smollm2_tokenizer), {0: [("s", prompt, seeded)]})
    crowd = run_to_end(
        make_engine(hf_model, smollm2_tokenizer, seed=99),
        {0: [("a", prompts(2)[1], noise)], 1: [("s", prompt, seeded), ("b", prompt, noise)]},
    )
    assert alone["s"].outputs[0].token_ids == crowd["s"].outputs[0].token_ids


def test_stop_strings_logprobs_and_abort(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer)
    prompt = prompts(1)[0]
    free_run = run_to_end(engine, {0: [("free", prompt, GREEDY)]})["free"].outputs[0]
    stop_at = free_run.text[len(free_run.text) // 2 : len(free_run.text) // 2 + 3]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop_at], logprobs=2)
    stopped = run_to_end(engine, {0: [("stopped", prompt, params)]})["stopped"].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop_at
    assert free_run.text.startswith(stopped.text) and stop_at not in stopped.text
    assert stopped.logprobs is not None and len(stopped.logprobs) == len(stopped.token_ids)
    assert all(len(entry.top_logprobs) == 2 for entry in stopped.logprobs)
    assert all(entry.logprob <= 0 for entry in stopped.logprobs)

    engine.add_request("gone", prompt, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    engine.step()
    engine.abort_request("gone")
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_prompt_longer_than_the_context_is_refused(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer)
    with pytest.raises(PromptTooLong):
        engine.add_request("long", list(range(300)), GREEDY)


@pytest.mark.slow
def test_smollm2_matches_transformers_and_knows_paris() -> None:
    from transformers import AutoModelForCausalLM

    from local_engine import LLM
    from local_engine.loader import load_model

    loaded = load_model(None, dtype="float32")
    llm = LLM(loaded=loaded, max_num_seqs=4)
    questions = ["What is the capital of France?", "Name a primary colour."]
    params = SamplingParams(temperature=0, max_tokens=24)
    replies = llm.chat([[{"role": "user", "content": q}] for q in questions], params)
    assert "Paris" in replies[0].outputs[0].text

    hf = AutoModelForCausalLM.from_pretrained(loaded.model_dir, dtype=torch.float32).eval()
    for reply in replies:
        prompt = reply.prompt_token_ids
        with torch.inference_mode():
            expected = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
        assert reply.outputs[0].token_ids == expected


def test_offline_api_accepts_text_token_ids_and_conversations(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    from local_engine import LLM

    llm = LLM(loaded=make_engine(hf_model, smollm2_tokenizer).loaded, block_size=BLOCK, kv_cache_bytes=1 << 22)
    prompt_ids = prompts(1)[0]
    expected = reference(hf_model, prompt_ids, 12)
    by_ids = llm.generate(prompt_ids, GREEDY)
    assert len(by_ids) == 1 and by_ids[0].outputs[0].token_ids == expected

    text = smollm2_tokenizer.decode(prompt_ids)
    many = llm.generate([text, text], [GREEDY, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)])
    assert [len(out.outputs[0].token_ids) for out in many] == [12, 3]
    assert many[0].prompt == text

    conversation = [{"role": "user", "content": "hello"}]
    replies = llm.chat([conversation, conversation], GREEDY)
    assert replies[0].outputs[0].token_ids == replies[1].outputs[0].token_ids
    assert replies[0].prompt is not None and replies[0].prompt.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError):
        llm.generate([text, text], [GREEDY])


@pytest.mark.slow
def test_smollm2_with_int4_decode_weights_stays_close_to_the_exact_model() -> None:
    """Quality as bench/perplexity.py measures it, not one greedy answer: a 135M model's answers flip
    on tiny numeric changes, while perplexity and top-1 agreement move only when int4 really hurts."""
    from bench.perplexity import TeacherForced, default_text, score_variants, windows
    from local_engine.loader import load_model
    from local_engine.model.linear import can_pack_for_cpu
    from local_engine.quantization import quantize

    if not can_pack_for_cpu(torch.zeros(1, dtype=torch.bfloat16)):
        pytest.skip("needs torch's CPU bfloat16 kernels")
    batch, tokens = 8, 32  # 256 predictions: decode steps, not rows, are what the test's time goes to
    exact = load_model(None, dtype="bfloat16")
    int4 = load_model(None, dtype="bfloat16")
    quantize(int4, "int4")
    ids = windows(exact, default_text(), batch, tokens)
    readers = {"exact": TeacherForced(exact, batch, tokens), "int4": TeacherForced(int4, batch, tokens)}
    scores = score_variants(readers, ids)
    # Measured with transformers 5.24 (constraints.txt), 8 x 32: perplexity x1.010, 93.4% agreement, KL 0.005.
    assert scores["int4"].perplexity / scores["exact"].perplexity < 1.10
    assert scores["int4"].agreement > 0.85
    assert scores["int4"].mean_kl < 0.05
    assert scores["exact"].perplexity < 200  # the exact model reads the text as text, not noise


def test_w8a8_reads_the_calibration_text_then_serves(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    from local_engine.model.linear import DynamicInt8

    engine = make_engine(hf_model, smollm2_tokenizer, quantization="w8a8")
    model = engine.loaded.model
    linears = [model.lm_head, *(layer.qkv for layer in model.layers), *(layer.down for layer in model.layers)]
    for linear in linears:
        assert isinstance(linear._quantized, DynamicInt8)
        assert linear.input_absmax is not None and linear.input_absmax.shape == (linear._quantized._weight_t.shape[0],)
    finished = run_to_end(engine, {0: [("a", prompts(1)[0], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))]})
    assert len(finished["a"].outputs[0].token_ids) == 6


def test_blocks_hold_numbers_before_they_are_read_though_the_cache_starts_unzeroed(
    hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    """The KV cache is allocated empty (zeroing gigabytes took seconds at start); a block is zeroed when first
    handed out. Here the never-used blocks hold NaN, as fresh memory may: outputs must not notice."""
    engine = make_engine(hf_model, smollm2_tokenizer)
    storage = engine.runner.kv_cache.storage
    storage[:, :, 1:].fill_(float("nan"))  # block 0, the padding block, is zeroed at allocation
    batch = prompts(6)  # lengths 5..40: last blocks part-filled, padded decode batches
    finished = run_to_end(engine, {0: [(f"r{i}", prompt, GREEDY) for i, prompt in enumerate(batch)]})
    assert_matches_reference(hf_model, finished, batch)
