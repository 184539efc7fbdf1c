"""Tools and structured outputs on a local model, through the gateway with the official SDK.

The tiny random Llama has SmolLM2's template (no tools), so its tools take the generic format and only
constrained decoding makes its calls valid: the schemas here are bounded (enums, short strings) so that a
random model ends within max_tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from transformers import PreTrainedTokenizerBase

from local_engine.tool_calls import ToolPlan, render_prompt
from tests.providers.local.conftest import tiny_1k_gateway

CITY = {"type": "string", "maxLength": 6}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": CITY, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}}}  # fmt: skip
TOOLS = [WEATHER, TIME]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
RUN = {"model": "tiny", "temperature": 0, "max_tokens": 320}  # room for 8 parallel calls


@pytest.fixture(scope="module")
def local_client(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase) -> Iterator[openai.OpenAI]:
    with tiny_1k_gateway(tmp_path_factory, smollm2_tokenizer) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def assert_valid_calls(message: Any, most: int = 8) -> list[Any]:
    calls = message.tool_calls or []
    assert 1 <= len(calls) <= most, message
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and len(call.id) == 29
        assert call.function.name in SCHEMAS
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return calls


def test_required_answers_with_valid_calls_only(local_client: openai.OpenAI) -> None:
    answer = local_client.chat.completions.create(messages=ASK, tools=TOOLS, tool_choice="required", **RUN)  # type: ignore[arg-type]
    choice = answer.choices[0]
    assert_valid_calls(choice.message)
    assert choice.finish_reason == "tool_calls" and choice.message.content is None


def test_a_named_function_is_called_once(local_client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    answer = local_client.chat.completions.create(messages=ASK, tools=TOOLS, tool_choice=named, **RUN)  # type: ignore[arg-type]
    calls = assert_valid_calls(answer.choices[0].message, most=1)
    assert calls[0].function.name == "get_time"


def test_parallel_tool_calls_false_is_one_call(local_client: openai.OpenAI) -> None:
    answer = local_client.chat.completions.create(
        messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=1, temperature=1.0,
        model="tiny", max_tokens=96,
    )  # type: ignore[arg-type]
    assert_valid_calls(answer.choices[0].message, most=1)


def test_auto_answers_in_text_or_with_valid_calls(local_client: openai.OpenAI) -> None:
    for seed in range(3):
        answer = local_client.chat.completions.create(
            messages=ASK, tools=TOOLS, tool_choice="auto", seed=seed, model="tiny", max_tokens=48  # type: ignore[arg-type]
        )
        choice = answer.choices[0]
        if choice.message.tool_calls:
            assert_valid_calls(choice.message)
            assert choice.finish_reason in ("tool_calls", "length")
        else:
            assert "<tool_call>" not in (choice.message.content or "")  # a trigger is always a call
            assert choice.finish_reason in ("stop", "length")


def test_a_call_cut_by_max_tokens_is_length_with_the_raw_text(local_client: openai.OpenAI) -> None:
    answer = local_client.chat.completions.create(
        messages=ASK, tools=TOOLS, tool_choice="required", model="tiny", temperature=0, max_tokens=4  # type: ignore[arg-type]
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    assert choice.message.content is not None and answer.usage.completion_tokens == 4  # type: ignore[union-attr]


def test_streamed_calls_arrive_as_openai_deltas(local_client: openai.OpenAI) -> None:
    whole = local_client.chat.completions.create(messages=ASK, tools=TOOLS, tool_choice="required", **RUN)  # type: ignore[arg-type]
    stream = local_client.chat.completions.create(
        messages=ASK, tools=TOOLS, tool_choice="required", stream=True, **RUN  # type: ignore[arg-type]
    )
    headers: dict[int, Any] = {}
    arguments: dict[int, str] = {}
    finish = None
    events = 0
    for chunk in stream:
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            events += 1
            if call.index not in headers:
                # The first delta of a call: its id, type and name, and no arguments yet.
                assert call.id and call.id.startswith("call_") and call.type == "function"
                assert call.function is not None and call.function.name and call.function.arguments == ""
                headers[call.index] = call
                arguments[call.index] = ""
            else:
                assert call.id is None and call.function is not None and call.function.name is None
                arguments[call.index] += call.function.arguments or ""
        assert not delta.content  # only calls: no content deltas
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and events > len(headers)  # fragments, not one blob
    expected = whole.choices[0].message.tool_calls or []
    assert [headers[i].function.name for i in sorted(headers)] == [call.function.name for call in expected]
    for index, call in enumerate(expected):
        assert json.loads(arguments[index]) == json.loads(call.function.arguments)  # the same greedy output


def test_a_tool_result_goes_back_into_the_prompt(local_client: openai.OpenAI, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    call = {"id": "call_0123456789abcdef01234567", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}  # fmt: skip
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees, sunny"}]  # fmt: skip
    answer = local_client.chat.completions.create(messages=messages, tools=TOOLS, **RUN)  # type: ignore[arg-type]
    # The prompt is the generic rendering: the call in the assistant's turn, the result in a user turn.
    expected = render_prompt(smollm2_tokenizer, messages, ToolPlan.build(TOOLS, "auto", "generic"))
    assert "<tool_response>" in expected and "18 degrees, sunny" in expected
    assert answer.usage.prompt_tokens == len(smollm2_tokenizer.encode(expected, add_special_tokens=False))  # type: ignore[union-attr]


# --- response_format and vLLM's structured outputs ---

ANSWER = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
          "required": ["answer", "sure"], "additionalProperties": False}  # fmt: skip


def test_response_format_json_schema_is_valid_json(local_client: openai.OpenAI) -> None:
    answer = local_client.chat.completions.create(
        messages=ASK, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER, "strict": True}},
        **RUN,
    )  # type: ignore[arg-type]
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), ANSWER)
    assert answer.choices[0].finish_reason == "stop"


def test_a_streamed_json_schema_answer_joins_into_valid_json(local_client: openai.OpenAI) -> None:
    stream = local_client.chat.completions.create(
        messages=ASK, stream=True, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}},
        **RUN,
    )  # type: ignore[arg-type]
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([piece for piece in pieces if piece]) > 1  # event by event, not one block
    assert finish == "stop"
    jsonschema.validate(json.loads("".join(pieces)), ANSWER)


def test_response_format_json_object_is_an_object_when_it_ends(local_client: openai.OpenAI) -> None:
    answer = local_client.chat.completions.create(messages=ASK, response_format={"type": "json_object"}, **RUN)  # type: ignore[arg-type]
    choice = answer.choices[0]
    if choice.finish_reason == "stop":  # a random model may write one long string until max_tokens
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:
        assert choice.finish_reason == "length" and (choice.message.content or "").lstrip().startswith("{")


@pytest.mark.parametrize(
    "extra",
    [{"structured_outputs": {"regex": "[ab]{3}-[0-9]"}}, {"guided_regex": "[ab]{3}-[0-9]"}],
)
def test_a_regex_via_extra_body_on_chat_and_completions(local_client: openai.OpenAI, extra: dict[str, Any]) -> None:
    import re

    chat = local_client.chat.completions.create(messages=ASK, extra_body=extra, **RUN)  # type: ignore[arg-type]
    assert re.fullmatch("[ab]{3}-[0-9]", chat.choices[0].message.content or ""), chat.choices[0].message.content
    completion = local_client.completions.create(model="tiny", prompt="Hello", max_tokens=16, temperature=0, extra_body=extra)
    assert re.fullmatch("[ab]{3}-[0-9]", completion.choices[0].text), completion.choices[0].text


def test_a_choice_via_extra_body(local_client: openai.OpenAI) -> None:
    for extra in ({"structured_outputs": {"choice": ["red", "green"]}}, {"guided_choice": ["red", "green"]}):
        answer = local_client.chat.completions.create(messages=ASK, extra_body=extra, seed=3, model="tiny", max_tokens=8)  # type: ignore[arg-type]
        assert answer.choices[0].message.content in ("red", "green") and answer.choices[0].finish_reason == "stop"


# --- refusals name the client's field ---

BAD_SCHEMA = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": BAD_SCHEMA}}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"tools": [WEATHER, TIME, {"type": "function", "function": {"name": "u", "parameters": {
            "type": "object", "properties": {"l": {"type": "array", "uniqueItems": True}}}}}]},
         "tools[2].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_stock"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"extra_body": {"structured_outputs": {"regex": "a", "nonsense": 1}}}, "structured_outputs"),
        ({"extra_body": {"guided_json": BAD_SCHEMA}}, "guided_json"),
        ({"response_format": {"type": "json_object"}, "extra_body": {"guided_regex": "a+"}}, "guided_regex"),
    ],
)  # fmt: skip
def test_bad_constraints_are_400s_naming_the_field(local_client: openai.OpenAI, options: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        local_client.chat.completions.create(messages=ASK, model="tiny", max_tokens=4, **options)
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == param, refused.value.body  # type: ignore[index]


def test_a_bad_assistant_call_in_the_history_is_named(local_client: openai.OpenAI) -> None:
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                             "function": {"name": "f", "arguments": {}}}]}]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as refused:
        local_client.chat.completions.create(messages=messages, model="tiny", max_tokens=4)  # type: ignore[arg-type]
    assert refused.value.body["param"] == "messages[1].tool_calls[0].function.arguments"  # type: ignore[index]
