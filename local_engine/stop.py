"""When a sequence is done, and where its text ends.

With a grammar attached (``Sequence.matcher``), the grammar has the last
word: the output ends as soon as the grammar is complete, and EOS, a stop
token or a stop string ends it only where the grammar could end (the mask
lets EOS through only there).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .sequence import Sequence


@dataclass(frozen=True, slots=True)
class Stop:
    finish_reason: str  # "stop" or "length"
    stop_reason: int | str | None = None  # the stop token id or stop string, None for EOS or length
    text_end: int | None = None  # where the output text is cut (a stop string), None to keep it whole


def check_stop(
    seq: Sequence, text: str, new_text_len: int, eos_token_ids: Collection[int], max_model_len: int
) -> Stop | None:
    """Decide after ``seq`` got its newest token, whose text (``new_text_len`` chars) ends ``text``."""
    params = seq.params
    token_id = seq.token_ids[-1]
    matcher = seq.matcher
    if matcher is not None and matcher.is_stopped():  # complete: nothing more may follow
        return Stop("stop")
    if seq.num_output_tokens >= params.min_tokens and (matcher is None or matcher.is_accepting()):
        if token_id in eos_token_ids and not params.ignore_eos:
            return Stop("stop")
        if token_id in params.stop_token_ids:
            return Stop("stop", stop_reason=token_id)
        found = _find_stop_string(text, new_text_len, params.stop)
        if found is not None:
            index, stop = found
            end = index + len(stop) if params.include_stop_str_in_output else index
            return Stop("stop", stop_reason=stop, text_end=end)
    if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
        return Stop("length")
    if seq.num_tokens >= max_model_len:
        return Stop("length")
    return None


def _find_stop_string(text: str, new_text_len: int, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """The earliest stop string that the new text completes; it may begin in older text."""
    best: tuple[int, str] | None = None
    for stop in stops:
        start = max(0, len(text) - new_text_len - len(stop) + 1)
        index = text.find(stop, start)
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop)
    return best


def stream_holdback(stops: tuple[str, ...]) -> int:
    """Characters to keep back from a stream: they may yet become a stop string."""
    return max((len(stop) for stop in stops), default=1) - 1
