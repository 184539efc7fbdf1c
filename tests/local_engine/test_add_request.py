"""``add_request`` is all or nothing: a refused request leaves the engine as it was, and its neighbours unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, PreTrainedTokenizerBase
from transformers import LlamaForCausalLM as HFLlama

from local_engine import (
    LLM,
    CompletionTooLong,
    EngineConfig,
    InvalidInput,
    LLMEngine,
    PromptTooLong,
    SamplingParams,
    llm_engine,
)
from local_engine.loader import LoadedModel
from tests.local_engine.tiny import TINY, tiny_loaded

VOCAB = 49152  # SmolLM2's tokenizer's size, so that text prompts encode inside the vocabulary
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
PROMPT = [17, 4021, 33, 9, 512, 77]


def loaded_model(vocab_size: int, tokenizer: PreTrainedTokenizerBase) -> LoadedModel:
    torch.manual_seed(0)
    hf_model = HFLlama(LlamaConfig(**{**TINY, "vocab_size": vocab_size}, tie_word_embeddings=True)).eval()
    return tiny_loaded(hf_model, tokenizer)


@pytest.fixture(scope="module")
def loaded(smollm2_tokenizer: PreTrainedTokenizerBase) -> LoadedModel:
    return loaded_model(VOCAB, smollm2_tokenizer)


def make_engine(loaded: LoadedModel, **options: object) -> LLMEngine:
    settings = {"block_size": 4, "kv_cache_bytes": 1 << 22, "max_num_batched_tokens": 64, "max_num_seqs": 8, **options}
    return LLMEngine(EngineConfig(**settings), loaded)  # type: ignore[arg-type]


def run(engine: LLMEngine, requests: dict[str, tuple[object, SamplingParams]]) -> dict[str, list[list[int]]]:
    """Each request's output token ids, per sequence; all run together."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)  # type: ignore[arg-type]
    return drain(engine)


def drain(engine: LLMEngine) -> dict[str, list[list[int]]]:
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = [choice.token_ids for choice in output.outputs]
    return finished


def assert_untouched(engine: LLMEngine) -> None:
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


BAD_REQUESTS = [
    # (prompt, params, the refused input's path)
    ([60000], GREEDY, "prompt[0]"),
    ([5, -1], GREEDY, "prompt[1]"),
    ({"prompt_token_ids": [1, 2, VOCAB]}, GREEDY, "prompt[2]"),
    ([], GREEDY, "prompt"),
    (PROMPT, SamplingParams(stop_token_ids=[3, VOCAB], min_tokens=2, max_tokens=4), "stop_token_ids[1]"),
    (PROMPT, SamplingParams(logit_bias={str(VOCAB + 5): 10}), "logit_bias"),
    (PROMPT, SamplingParams(n=9), "n"),  # the engine's max_num_seqs is 8
    (PROMPT, SamplingParams(max_tokens=251), "max_tokens"),  # 6 + 251 > 256
    (list(range(1, 257)), GREEDY, "prompt"),  # the prompt alone fills the context
]


@pytest.mark.parametrize(("prompt", "params", "path"), BAD_REQUESTS)
def test_a_refused_request_leaves_the_engine_and_its_neighbour_as_they_were(
    loaded: LoadedModel, prompt: object, params: SamplingParams, path: str
) -> None:
    alone = run(make_engine(loaded), {"neighbour": (PROMPT, GREEDY)})["neighbour"]
    engine = make_engine(loaded)
    engine.add_request("neighbour", PROMPT, GREEDY)
    engine.step()
    engine.step()
    with pytest.raises(InvalidInput) as caught:
        engine.add_request("bad", prompt, params)  # type: ignore[arg-type]
    assert caught.value.path == path
    assert "Traceback" not in str(caught.value)
    assert drain(engine) == {"neighbour": alone}
    assert_untouched(engine)


def test_the_context_checks_say_which_limit_and_follow_vllm(loaded: LoadedModel) -> None:
    engine = make_engine(loaded)
    engine.add_request("fits-exactly", PROMPT, SamplingParams(max_tokens=250, ignore_eos=True))  # 6 + 250 = 256
    engine.abort_request("fits-exactly")
    with pytest.raises(CompletionTooLong) as caught:
        engine.add_request("long", PROMPT, SamplingParams(max_tokens=1_000_000_000))
    assert str(caught.value) == (
        "This model's maximum context length is 256 tokens. However, you requested 1000000006 tokens "
        "(6 in the prompt, 1000000000 in the completion). Please reduce the length of the prompt or completion."
    )
    assert caught.value.describe("messages").count("messages") == 2
    with pytest.raises(PromptTooLong):
        engine.add_request("too-long", list(range(1, 257)), GREEDY)
    assert_untouched(engine)


def test_the_largest_seed_works_with_several_outputs(loaded: LoadedModel) -> None:
    """Output i draws from (seed + i) mod 2**64: the largest seed's second output is seed 0's first."""
    sampled = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True, seed=2**64 - 1, n=2)
    engine = make_engine(loaded)
    largest = run(engine, {"largest": (PROMPT, sampled)})["largest"]
    zero = run(engine, {"zero": (PROMPT, SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True, seed=0))})
    assert largest[1] == zero["zero"][0]
    assert run(engine, {"again": (PROMPT, sampled)})["again"] == largest  # and the engine serves on
    for seed in (-1, 2**64, 1.5, True):
        with pytest.raises(InvalidInput) as caught:
            SamplingParams(seed=seed)  # type: ignore[arg-type]
        assert caught.value.param == "seed"


def test_nothing_is_queued_when_building_the_second_sequence_fails(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(loaded)
    built = []

    class FailsSecond(llm_engine.IncrementalDetokenizer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(1)
            if len(built) == 2:
                raise RuntimeError("the second sequence cannot be built")
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(llm_engine, "IncrementalDetokenizer", FailsSecond)
    with pytest.raises(RuntimeError):
        engine.add_request("half", PROMPT, SamplingParams(n=2, max_tokens=4))
    assert_untouched(engine)
    monkeypatch.undo()
    assert run(engine, {"half": (PROMPT, GREEDY)})  # the id was never taken


def test_token_ids_are_checked_against_the_models_rows_not_the_tokenizer(smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    """A 256-row model with a 49152-entry tokenizer: a text prompt that encodes past row 255 is refused."""
    engine = make_engine(loaded_model(TINY["vocab_size"], smollm2_tokenizer))
    assert engine.vocab_size == 256
    with pytest.raises(InvalidInput) as caught:
        engine.add_request("text", "The quick brown fox", GREEDY)
    assert caught.value.path == "prompt" and "vocabulary" in str(caught.value)
    assert run(engine, {"ids": ([5, 255], GREEDY)})


def test_generate_takes_vllms_prompt_forms(loaded: LoadedModel, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    llm = LLM(loaded=loaded, block_size=4, kv_cache_bytes=1 << 22)
    text = "Once upon a time"
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    expected = llm.generate(ids, GREEDY)[0].outputs[0].token_ids
    forms: list[object] = [text, ids, {"prompt": text}, {"prompt_token_ids": ids}]
    for form in forms:
        assert [out.outputs[0].token_ids for out in llm.generate(form, GREEDY)] == [expected]  # type: ignore[arg-type]
    together = llm.generate(forms, GREEDY)  # type: ignore[arg-type]
    assert [out.outputs[0].token_ids for out in together] == [expected] * 4
    assert [out.prompt for out in together] == [text, None, text, None]


@pytest.mark.parametrize(
    ("prompts", "named"),
    [
        ({"prompt": 5}, "dict"),
        ({"text": "hello"}, "dict"),
        ({"prompt_token_ids": [1, 2.5]}, "dict"),
        (3.5, "float"),
        ([[1, 2], {"prompt": "fine"}, b"bytes"], "bytes"),  # two queued, then the third is refused: none runs
    ],
)
def test_generate_refuses_any_other_prompt_with_a_type_error_before_anything_runs(
    loaded: LoadedModel, prompts: object, named: str
) -> None:
    llm = LLM(loaded=loaded, block_size=4, kv_cache_bytes=1 << 22)
    with pytest.raises(TypeError, match=named):
        llm.generate(prompts, GREEDY)  # type: ignore[arg-type]
    assert_untouched(llm.engine)
    with pytest.raises(InvalidInput):
        llm.generate([[1, 2], [60000]], GREEDY)  # a token id out of range: the first prompt does not run either
    assert_untouched(llm.engine)
    assert len(llm.generate([[1, 2]], GREEDY)) == 1
