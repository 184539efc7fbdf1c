"""Parameter maps: translate, drop or reject what a provider does not take."""

from __future__ import annotations

import pytest

from providers.errors import UnsupportedParameter
from providers.params import Translate, Unsupported, adapt

RULES = {
    "max_completion_tokens": Translate("max_tokens"),
    "tool_choice": Translate("tool_choice", {"required": "any"}),
    "logit_bias": Unsupported(),
    "n": Unsupported(allowed=(1,)),
}


def test_translate_renames_and_maps_values() -> None:
    payload = {"model": "m", "max_completion_tokens": 5, "tool_choice": "required"}
    adapted, dropped = adapt(payload, RULES, "drop", "p")
    assert adapted == {"model": "m", "max_tokens": 5, "tool_choice": "any"}
    assert dropped == []
    assert payload == {"model": "m", "max_completion_tokens": 5, "tool_choice": "required"}  # not changed
    tools = {"type": "function", "function": {"name": "f"}}
    assert adapt({"tool_choice": tools}, RULES, "drop", "p")[0] == {"tool_choice": tools}  # objects pass as they are


def test_an_explicit_max_tokens_wins_over_the_translated_one() -> None:
    adapted, _ = adapt({"max_tokens": 3, "max_completion_tokens": 5}, RULES, "drop", "p")
    assert adapted == {"max_tokens": 3}


def test_unsupported_is_dropped_and_named_or_rejected() -> None:
    payload = {"model": "m", "logit_bias": {"1": 2}, "n": 1}
    adapted, dropped = adapt(payload, RULES, "drop", "p")
    assert adapted == {"model": "m", "n": 1} and dropped == ["logit_bias"]
    assert adapt({"n": 3}, RULES, "drop", "p") == ({}, ["n"])
    assert adapt({"logit_bias": None}, RULES, "reject", "p") == ({}, [])  # a null asks for nothing
    with pytest.raises(UnsupportedParameter) as caught:
        adapt({"n": 2}, RULES, "reject", "groq")
    assert caught.value.status_code == 400 and caught.value.param == "n" and "'groq'" in caught.value.message


def test_a_payload_without_mapped_parameters_is_not_copied() -> None:
    payload = {"model": "m", "messages": []}
    assert adapt(payload, RULES, "reject", "p")[0] is payload
