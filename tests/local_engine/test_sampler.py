from __future__ import annotations

import math
import time
from collections.abc import Sequence

import pytest
import torch

from local_engine.sampler import (
    SampledToken,
    Sampler,
    SamplingRow,
    apply_logit_processors,
)
from local_engine.sampling_params import SamplingParams

EOS = 2


def row(
    params: SamplingParams | None = None,
    prompt: Sequence[int] = (),
    output: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> SamplingRow:
    return SamplingRow(params or SamplingParams(), list(prompt), list(output), generator)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sampler(seed: int = 0) -> Sampler:
    return Sampler([EOS], generator=seeded(seed))


def draws(logits: Sequence[float], params: SamplingParams, count: int = 2000) -> torch.Tensor:
    """``count`` tokens for the same logits and params, sampled as ``count`` rows of one call."""
    batch = torch.tensor(list(logits)).expand(count, -1).contiguous()
    rows = [row(params) for _ in range(count)]
    return torch.tensor([t.token_id for t in sampler()(batch, rows)])


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / len(tokens)


def logits_for(probs: Sequence[float]) -> list[float]:
    return [math.log(p) if p > 0 else float("-inf") for p in probs]


LOGITS = [2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0]  # token 0 best, then 1, 2, ...


def test_greedy_takes_the_argmax_of_each_row() -> None:
    logits = torch.tensor([LOGITS, LOGITS[::-1], [0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]])
    tokens = sampler()(logits, [row(SamplingParams(temperature=0)) for _ in range(3)])
    assert [t.token_id for t in tokens] == [0, 7, 3]
    assert all(t.logprob is None and t.top_logprobs is None for t in tokens)


def test_plain_sampling_follows_the_softmax() -> None:
    observed = frequencies(draws(LOGITS, SamplingParams(temperature=1.0), count=4000), 8)
    expected = torch.tensor(LOGITS, dtype=torch.float64).softmax(-1)
    assert torch.allclose(observed, expected, atol=0.025)


def test_low_temperature_sharpens_and_high_temperature_spreads() -> None:
    cold = frequencies(draws(LOGITS, SamplingParams(temperature=0.1)), 8)
    hot_tokens = draws(LOGITS, SamplingParams(temperature=5.0))
    hot = frequencies(hot_tokens, 8)
    assert cold[0] > 0.99
    assert len(set(hot_tokens.tolist())) == 8 and hot[0] < 0.25
    expected_hot = (torch.tensor(LOGITS, dtype=torch.float64) / 5.0).softmax(-1)
    assert torch.allclose(hot, expected_hot, atol=0.03)


def test_top_k_keeps_only_the_k_best_renormalised() -> None:
    tokens = draws(LOGITS, SamplingParams(top_k=2))
    assert set(tokens.tolist()) == {0, 1}
    expected = torch.tensor(LOGITS[:2], dtype=torch.float64).softmax(-1)
    assert torch.allclose(frequencies(tokens, 8)[:2], expected, atol=0.03)


@pytest.mark.parametrize(
    ("top_k", "top_p", "nucleus"),
    [
        (0, 0.35, {0}),  # 0.4 alone reaches 0.35
        (0, 0.65, {0, 1}),  # 0.4 < 0.65 <= 0.7
        (0, 0.75, {0, 1, 2}),  # 0.7 < 0.75 <= 0.9
        (0, 0.95, {0, 1, 2, 3}),
        (3, 0.75, {0, 1}),  # top_p over the top 3 renormalised: 0.44, 0.78 reaches it
        (2, 0.99, {0, 1}),
    ],
)
def test_top_p_keeps_exactly_the_nucleus(top_k: int, top_p: float, nucleus: set[int]) -> None:
    probs = [0.4, 0.3, 0.2, 0.06, 0.03, 0.01, 0.0, 0.0]
    tokens = draws(logits_for(probs), SamplingParams(top_k=top_k, top_p=top_p))
    assert set(tokens.tolist()) == nucleus


def test_a_token_tied_with_the_last_kept_one_is_kept() -> None:
    tied = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert set(draws(tied, SamplingParams(top_k=1), count=200).tolist()) == {0, 1}


def test_a_nucleus_wider_than_the_first_candidates_is_kept_whole() -> None:
    # 600 distinct, slowly falling logits: the 0.6 nucleus holds far more than the first
    # 256 candidates, so the sampler must widen its search.
    vocab = 600
    logits = [-i * 1e-3 for i in range(vocab)]
    cumulative = torch.tensor(logits, dtype=torch.float64).softmax(-1).cumsum(-1)
    nucleus_size = int((cumulative < 0.6).sum()) + 1
    assert nucleus_size > 256
    tokens = draws(logits, SamplingParams(top_p=0.6), count=4000)
    assert int(tokens.max()) < nucleus_size
    assert int(tokens.max()) > 256
    top_k_tokens = draws(logits, SamplingParams(top_k=300), count=4000)
    assert int(top_k_tokens.max()) < 300 and int(top_k_tokens.max()) > 256


def test_min_p_cuts_exactly_below_its_share_of_the_top_probability() -> None:
    probs = [0.5, 0.2, 0.1, 0.099, 0.05, 0.03, 0.011, 0.01]
    # Threshold 0.199 * 0.5 = 0.0995: 0.1 stays, 0.099 goes.
    tokens = draws(logits_for(probs), SamplingParams(min_p=0.199))
    assert set(tokens.tolist()) == {0, 1, 2}
    kept = torch.tensor(probs[:3], dtype=torch.float64)
    assert torch.allclose(frequencies(tokens, 8)[:3], kept / kept.sum(), atol=0.03)
    assert set(draws(logits_for(probs), SamplingParams(min_p=0.0)).tolist()) == set(range(8))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([[2.0, 1.5, -1.0, -1.2, 0.0, 0.5, 0.0, 0.0]])
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    processed = apply_logit_processors(logits, [row(params, prompt=[0, 4], output=[2, 2])])
    # Seen: 0 (prompt), 4 (prompt, zero stays zero), 2 (output, once or twice alike).
    expected = torch.tensor([[1.0, 1.5, -2.0, -1.2, 0.0, 0.5, 0.0, 0.0]])
    assert torch.equal(processed, expected)


@pytest.mark.parametrize(("penalty", "choice"), [(1.3, 0), (1.5, 1)])
def test_repetition_penalty_flips_the_greedy_choice_where_expected(penalty: float, choice: int) -> None:
    # 2.0 / 1.3 = 1.54 still beats 1.5; 2.0 / 1.5 = 1.33 does not.
    logits = torch.tensor([[2.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    params = SamplingParams(temperature=0, repetition_penalty=penalty)
    for where in ({"prompt": [0]}, {"output": [0]}):
        assert sampler()(logits, [row(params, **where)])[0].token_id == choice  # type: ignore[arg-type]
    assert sampler()(logits, [row(params, prompt=[3], output=[4])])[0].token_id == 0


def test_presence_and_frequency_penalties_subtract_exact_amounts_over_output_only() -> None:
    logits = torch.zeros((1, 8))
    params = SamplingParams(presence_penalty=0.25, frequency_penalty=0.5)
    processed = apply_logit_processors(logits, [row(params, prompt=[1, 1, 3], output=[3, 3, 3, 5])])
    expected = torch.zeros((1, 8))
    expected[0, 3] = -(0.25 + 3 * 0.5)
    expected[0, 5] = -(0.25 + 1 * 0.5)
    assert torch.equal(processed, expected)  # prompt-only token 1 untouched
    negative = SamplingParams(presence_penalty=-1.0, frequency_penalty=-0.5)
    boosted = apply_logit_processors(logits, [row(negative, output=[6, 6])])
    assert boosted[0, 6].item() == 2.0


def test_penalties_run_in_order_repetition_then_presence_and_frequency() -> None:
    logits = torch.tensor([[3.0, -1.0, 0.0, 0.0]])
    params = SamplingParams(repetition_penalty=1.5, presence_penalty=1.0, frequency_penalty=0.5)
    processed = apply_logit_processors(logits, [row(params, prompt=[1], output=[0, 0])])
    assert processed.tolist() == [[3.0 / 1.5 - 1.0 - 1.0, -1.5, 0.0, 0.0]]


def test_logit_bias_is_added_and_can_force_or_forbid_a_token() -> None:
    logits = torch.tensor([LOGITS])
    processed = apply_logit_processors(logits, [row(SamplingParams(logit_bias={3: 1.5, 0: -0.5, 99: 5.0}))])
    expected = torch.tensor([LOGITS])
    expected[0, 3] += 1.5
    expected[0, 0] -= 0.5
    assert torch.equal(processed, expected)  # id 99 is outside the vocabulary: ignored
    forced = draws(LOGITS, SamplingParams(temperature=1.0, logit_bias={7: 100.0}), count=200)
    assert set(forced.tolist()) == {7}
    forbidden = draws(LOGITS, SamplingParams(temperature=0, logit_bias={0: -100.0}), count=1)
    assert forbidden.tolist() == [1]


def test_min_tokens_blocks_eos_and_stop_tokens_until_reached() -> None:
    logits = torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0, 8.0, 1.0, 0.0]])  # EOS (2) then stop id 5 lead
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[5])
    early = apply_logit_processors(logits, [row(params, output=[1, 1])], [EOS])
    assert early[0, EOS].item() == float("-inf") and early[0, 5].item() == float("-inf")
    assert torch.equal(early[0, [0, 1, 3, 4, 6, 7]], logits[0, [0, 1, 3, 4, 6, 7]])
    assert sampler()(logits, [row(params, output=[1, 1])])[0].token_id == 6
    assert apply_logit_processors(logits, [row(params, output=[1, 1, 1])], [EOS]) is logits
    assert sampler()(logits, [row(params, output=[1, 1, 1])])[0].token_id == EOS
    ignoring = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[5], ignore_eos=True)
    assert sampler()(logits, [row(ignoring, output=[1])])[0].token_id == EOS  # only stop ids blocked


def test_logprobs_come_from_the_raw_logits_with_the_top_k_in_order() -> None:
    raw = torch.tensor([LOGITS, LOGITS[::-1], LOGITS])
    before = raw.clone()
    rows = [
        row(SamplingParams(temperature=0.5, logprobs=3, repetition_penalty=2.0, logit_bias={5: 9.0}), prompt=[0]),
        row(SamplingParams(temperature=0, logprobs=0)),
        row(SamplingParams(temperature=0)),
    ]
    results = sampler()(raw, rows)
    assert torch.equal(raw, before)  # the caller's logits are never modified
    reference = torch.log_softmax(raw, dim=-1)
    first, second, third = results
    assert first.logprob == pytest.approx(reference[0, first.token_id].item(), abs=1e-6)
    assert list(first.top_logprobs or {}) == [0, 1, 2]
    assert list((first.top_logprobs or {}).values()) == pytest.approx(reference[0, :3].tolist(), abs=1e-6)
    assert second.token_id == 7 and second.top_logprobs == {}
    assert second.logprob == pytest.approx(reference[1, 7].item(), abs=1e-6)
    assert third == SampledToken(0, None, None)


def test_a_seeded_row_gives_the_same_tokens_alone_or_in_any_batch() -> None:
    vocab = 512  # wider than the first top_p candidates
    torch.manual_seed(1234)
    steps = [torch.randn(8, vocab) * 2 for _ in range(5)]
    mine = SamplingParams(temperature=0.9, top_p=0.9, presence_penalty=0.3, seed=7)

    def run(position: int, neighbours: list[SamplingParams]) -> list[int]:
        generator = seeded(7)
        output: list[int] = []
        others = [row(p, output=[1, 2], generator=seeded(100 + i) if p.seed else None) for i, p in enumerate(neighbours)]
        shared = sampler(seed=position)  # the unseeded rows' noise differs run to run
        for logits in steps:
            rows = list(others)
            rows.insert(position, row(mine, prompt=[3], output=output, generator=generator))
            batch = logits[: len(rows)].clone()
            batch[position] = logits[7]  # my row always sees the same logits
            output.append(shared(batch, rows)[position].token_id)
        return output

    alone = run(0, [])
    assert len(set(alone)) > 1  # it really samples
    neighbours = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.2),
        SamplingParams(top_k=3, seed=5),
        SamplingParams(top_p=0.5, min_p=0.1, frequency_penalty=1.0),
        SamplingParams(temperature=0.7, seed=9, logprobs=2),
    ]
    for position in (0, 2, 5):
        assert run(position, neighbours) == alone
    assert run(1, neighbours[2:3]) == alone


def test_a_mixed_batch_gives_each_row_its_own_behaviour() -> None:
    count = 300
    logits = torch.tensor([LOGITS] * (5 * count))
    kinds = [
        row(SamplingParams(temperature=0)),
        row(SamplingParams(temperature=0, repetition_penalty=3.0), prompt=[0]),  # 2/3 < 1: token 1 wins
        row(SamplingParams(top_k=2)),
        row(SamplingParams(temperature=1.0, logit_bias={6: 50.0})),
        row(SamplingParams(temperature=5.0, frequency_penalty=2.0), output=[0, 0, 0]),
    ]
    rows = [kinds[i % 5] for i in range(5 * count)]
    tokens = [t.token_id for t in sampler()(logits, rows)]
    by_kind = [set(tokens[k::5]) for k in range(5)]
    assert by_kind[0] == {0}
    assert by_kind[1] == {1}
    assert by_kind[2] == {0, 1}
    assert by_kind[3] == {6}
    hot = frequencies(torch.tensor(tokens[4::5]), 8)
    penalised = torch.tensor(LOGITS, dtype=torch.float64)
    penalised[0] -= 2.0 * 3
    assert torch.allclose(hot, (penalised / 5.0).softmax(-1), atol=0.08)


def test_unseeded_rows_follow_the_sampler_generator() -> None:
    logits = torch.randn(16, 32)
    rows = [row(SamplingParams(temperature=1.0)) for _ in range(16)]
    first = [t.token_id for t in sampler(seed=3)(logits, rows)]
    assert first == [t.token_id for t in sampler(seed=3)(logits, rows)]
    assert first != [t.token_id for t in sampler(seed=4)(logits, rows)]


def test_logits_and_rows_must_match() -> None:
    with pytest.raises(ValueError):
        sampler()(torch.zeros((2, 8)), [row()])


def test_a_full_batch_of_a_real_vocabulary_runs(capsys: pytest.CaptureFixture[str]) -> None:
    vocab, count = 49152, 64
    torch.manual_seed(0)
    logits = torch.randn(count, vocab, dtype=torch.float32) * 3
    greedy = [row(SamplingParams(temperature=0)) for _ in range(count)]
    kinds = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0.8, top_p=0.95),
        SamplingParams(temperature=0.7, top_k=50, seed=1),
        SamplingParams(min_p=0.05, repetition_penalty=1.1, presence_penalty=0.5, logprobs=5),
        SamplingParams(temperature=0.9, top_p=0.9, top_k=40, logit_bias={5: 2.0}, min_tokens=10),
    ]
    mixed = [
        row(kinds[i % 5], prompt=range(i, i + 200), output=range(i, i + 50), generator=seeded(i) if kinds[i % 5].seed else None)
        for i in range(count)
    ]
    shared = sampler()
    for name, rows in (("greedy", greedy), ("mixed", mixed)):
        shared(logits, rows)
        start = time.perf_counter()
        results = shared(logits, rows)
        elapsed = time.perf_counter() - start
        assert len(results) == count and all(0 <= r.token_id < vocab for r in results)
        with capsys.disabled():
            print(f"\nsampler {count} x {vocab} {name}: {elapsed * 1e3:.1f} ms")
    assert [r.token_id for r in shared(logits, greedy)] == logits.argmax(-1).tolist()
