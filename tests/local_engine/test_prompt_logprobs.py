"""Prompt logprobs against a plain forward pass of the same weights: in one step, in chunks, after preemption."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, PreTrainedTokenizerBase
from transformers import LlamaForCausalLM as HFLlama

from local_engine import EngineConfig, LLMEngine, RequestOutput, SamplingParams
from local_engine.kv_cache import KVCache
from local_engine.scheduler import SchedulerOutput
from tests.local_engine.tiny import TINY, tiny_loaded

BLOCK = 4
TOLERANCE = 1e-4
SCORED = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=3)
PLAIN = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def hf_model() -> HFLlama:
    torch.manual_seed(0)
    return HFLlama(LlamaConfig(**TINY, tie_word_embeddings=True)).eval()


def make_engine(hf_model: HFLlama, tokenizer: PreTrainedTokenizerBase, **options: object) -> LLMEngine:
    loaded = tiny_loaded(hf_model, tokenizer)
    settings = {"block_size": BLOCK, "kv_cache_bytes": 1 << 20, "max_num_batched_tokens": 64, **options}
    return LLMEngine(EngineConfig(**settings), loaded)  # type: ignore[arg-type]


def prompts(count: int, first_len: int, step: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, TINY["vocab_size"], (first_len + i * step,), generator=generator).tolist() for i in range(count)]


def run_to_end(engine: LLMEngine, requests: list[tuple[str, list[int], SamplingParams]]) -> dict[str, RequestOutput]:
    for request_id, prompt, params in requests:
        engine.add_request(request_id, prompt, params)
    finished: dict[str, RequestOutput] = {}
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            return finished
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    raise AssertionError("the engine did not finish")


def assert_matches_a_forward_pass(hf_model: HFLlama, prompt: list[int], output: RequestOutput, k: int = 3) -> None:
    """Entry t is log_softmax(logits at t - 1)[prompt[t]], with the k best there and the token's rank."""
    with torch.inference_mode():
        expected = torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0].float(), dim=-1)
    scored = output.prompt_logprobs
    assert scored is not None and len(scored) == len(prompt) and scored[0] is None
    for t in range(1, len(prompt)):
        entry, row = scored[t], expected[t - 1]
        assert entry is not None and entry.token_id == prompt[t]
        assert abs(entry.logprob - row[prompt[t]].item()) < TOLERANCE, f"token {t}"
        assert entry.rank == int((row >= row[prompt[t]]).sum())
        top = row.topk(k)
        assert list(entry.top_logprobs) == top.indices.tolist()
        assert torch.allclose(torch.tensor(list(entry.top_logprobs.values())), top.values, atol=TOLERANCE)


def greedy_reference(hf_model: HFLlama, prompt: list[int], max_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
            do_sample=False, pad_token_id=0, eos_token_id=None,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def count_logit_rows(engine: LLMEngine) -> list[int]:
    """Rows of every compute_logits call the engine's model makes from now on."""
    rows: list[int] = []
    model = engine.runner.model
    original = model.compute_logits

    def counting(hidden: torch.Tensor) -> torch.Tensor:
        rows.append(hidden.shape[0])
        return original(hidden)

    model.compute_logits = counting  # type: ignore[method-assign]
    return rows


def test_a_prompt_scored_in_one_step(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer)
    [prompt] = prompts(1, first_len=17, step=0)
    finished = run_to_end(engine, [("r0", prompt, SCORED)])
    assert_matches_a_forward_pass(hf_model, prompt, finished["r0"])
    assert finished["r0"].outputs[0].token_ids == greedy_reference(hf_model, prompt, 4)


def test_a_prompt_scored_in_chunks_across_their_boundaries(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    # 5 tokens a step: the prompts run in 4-7 chunks, each chunk's last position scoring the next one's first token.
    engine = make_engine(hf_model, smollm2_tokenizer, max_num_batched_tokens=5)
    batch = prompts(3, first_len=19, step=6)
    finished = run_to_end(engine, [(f"r{i}", p, SCORED) for i, p in enumerate(batch)])
    for index, prompt in enumerate(batch):
        assert_matches_a_forward_pass(hf_model, prompt, finished[f"r{index}"])
        assert finished[f"r{index}"].outputs[0].token_ids == greedy_reference(hf_model, prompt, 4)


def test_a_preempted_prompt_is_scored_once(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    per_block = KVCache.bytes_per_block(TINY["num_hidden_layers"], BLOCK, 2, 16, torch.float32)
    # Room for about two of these at once, four run, in chunks: some are preempted partway through their prompt.
    engine = make_engine(hf_model, smollm2_tokenizer, kv_cache_bytes=per_block * 14, max_num_batched_tokens=6)
    preempted_while_scoring: list[int] = []
    schedule = engine.scheduler.schedule

    def watched() -> SchedulerOutput:
        output = schedule()
        preempted_while_scoring.extend(s.num_scored_prompt_tokens for s in output.preempted if s.num_scored_prompt_tokens > 1)
        return output

    engine.scheduler.schedule = watched  # type: ignore[method-assign]
    batch = prompts(4, first_len=13, step=3)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=3)
    finished = run_to_end(engine, [(f"r{i}", p, params) for i, p in enumerate(batch)])
    assert preempted_while_scoring, "no sequence was preempted after scoring part of its prompt"
    for index, prompt in enumerate(batch):
        assert_matches_a_forward_pass(hf_model, prompt, finished[f"r{index}"])
        assert finished[f"r{index}"].outputs[0].token_ids == greedy_reference(hf_model, prompt, 12)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_requests_that_do_not_ask_cost_no_logits(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer, max_num_batched_tokens=7)
    rows = count_logit_rows(engine)
    batch = prompts(4, first_len=9, step=5)
    plain = run_to_end(engine, [(f"r{i}", p, PLAIN) for i, p in enumerate(batch)])
    assert sum(rows) == 4 * 4  # one row per sampled token, none for the prompts
    assert all(output.prompt_logprobs is None for output in plain.values())
    rows.clear()
    mixed = run_to_end(engine, [(f"m{i}", p, SCORED if i % 2 else PLAIN) for i, p in enumerate(batch)])
    assert sum(rows) == 4 * 4 + sum(len(p) - 1 for p in batch[1::2])
    for index, prompt in enumerate(batch):
        output = mixed[f"m{index}"]
        assert output.outputs[0].token_ids == plain[f"r{index}"].outputs[0].token_ids
        if index % 2:
            assert_matches_a_forward_pass(hf_model, prompt, output)
        else:
            assert output.prompt_logprobs is None


def test_n_outputs_score_their_prompt_once(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer)
    rows = count_logit_rows(engine)
    [prompt] = prompts(1, first_len=15, step=0)
    params = SamplingParams(n=3, temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=3)
    finished = run_to_end(engine, [("r0", prompt, params)])
    assert sum(rows) == (len(prompt) - 1) + 3 * 4
    assert_matches_a_forward_pass(hf_model, prompt, finished["r0"])
    assert len(finished["r0"].outputs) == 3


def test_max_tokens_0_scores_the_prompt_and_generates_nothing(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    engine = make_engine(hf_model, smollm2_tokenizer, max_num_batched_tokens=6)
    rows = count_logit_rows(engine)
    [prompt] = prompts(1, first_len=14, step=0)
    params = SamplingParams(n=2, max_tokens=0, prompt_logprobs=0)
    finished = run_to_end(engine, [("r0", prompt, params)])
    output = finished["r0"]
    assert [(c.token_ids, c.text, c.finish_reason) for c in output.outputs] == [([], "", "length")] * 2
    assert sum(rows) == len(prompt) - 1  # the prompt's rows only: nothing is sampled
    assert_matches_a_forward_pass(hf_model, prompt, output, k=0)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        SamplingParams(max_tokens=0)


def test_a_request_that_asks_takes_no_prefix_cache_hits(hf_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    # Cached blocks have no logits: as in vLLM, a request that wants prompt logprobs computes its whole prompt.
    engine = make_engine(hf_model, smollm2_tokenizer)
    [prompt] = prompts(1, first_len=21, step=0)
    run_to_end(engine, [("warm", prompt, PLAIN)])
    finished = run_to_end(engine, [("scored", prompt, SCORED)])
    assert finished["scored"].num_cached_tokens == 0
    assert_matches_a_forward_pass(hf_model, prompt, finished["scored"])
    again = run_to_end(engine, [("plain", prompt, PLAIN)])
    assert again["plain"].num_cached_tokens == (len(prompt) - 1) // BLOCK * BLOCK
