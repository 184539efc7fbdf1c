from __future__ import annotations

from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence
from local_engine.stop import Stop, check_stop, stream_holdback

EOS = {2}


def seq_with(output: list[int], **params: object) -> Sequence:
    prompt = [10, 11, 12]
    return Sequence("r", 0, prompt + output, len(prompt), SamplingParams(**params))  # type: ignore[arg-type]


def test_eos_stops_unless_ignored() -> None:
    assert check_stop(seq_with([5, 2]), "ab", 0, EOS, 100) == Stop("stop")
    assert check_stop(seq_with([5, 2], ignore_eos=True), "ab", 0, EOS, 100) is None


def test_stop_token_ids_report_the_token() -> None:
    assert check_stop(seq_with([5, 7], stop_token_ids=[7]), "ab", 1, EOS, 100) == Stop("stop", stop_reason=7)


def test_stop_string_found_across_token_boundaries_and_cut() -> None:
    # "wor" came with the previous token, "ld!" with this one.
    stop = check_stop(seq_with([5, 6], stop=["world"]), "Hello world!", 3, EOS, 100)
    assert stop == Stop("stop", stop_reason="world", text_end=6)
    kept = check_stop(seq_with([5, 6], stop=["world"], include_stop_str_in_output=True), "Hello world!", 3, EOS, 100)
    assert kept is not None and kept.text_end == 11


def test_earliest_stop_string_wins() -> None:
    stop = check_stop(seq_with([5], stop=["c", "ab"]), "xabc", 4, EOS, 100)
    assert stop == Stop("stop", stop_reason="ab", text_end=1)


def test_old_text_is_not_searched_again() -> None:
    # "ab" ended well before the new text: it was already checked when it arrived.
    assert check_stop(seq_with([5], stop=["ab"]), "ab then more", 4, EOS, 100) is None


def test_min_tokens_defers_every_stop_but_length() -> None:
    seq = seq_with([2], min_tokens=2, stop=["x"], stop_token_ids=[2])
    assert check_stop(seq, "x", 1, EOS, 100) is None
    assert check_stop(seq_with([5, 2], min_tokens=2), "ab", 0, EOS, 100) == Stop("stop")


def test_length_limits() -> None:
    assert check_stop(seq_with([5, 6], max_tokens=2), "ab", 1, EOS, 100) == Stop("length")
    assert check_stop(seq_with([5], max_tokens=None), "a", 1, EOS, 4) == Stop("length")
    assert check_stop(seq_with([5], max_tokens=None), "a", 1, EOS, 5) is None


def test_stream_holdback() -> None:
    assert stream_holdback(()) == 0
    assert stream_holdback(("END", "x")) == 2
