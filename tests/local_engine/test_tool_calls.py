"""Tool calling's pure parts: the grammar each tool_choice builds (checked on llguidance itself), the parsers,
the streamed deltas joined into valid JSON, and the prompt for templates with and without tools."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import llguidance
import llguidance.hf
import pytest
from transformers import PreTrainedTokenizerBase

from local_engine.errors import InvalidInput
from local_engine.structured_outputs import StructuredOutputsParams
from local_engine.tool_calls import (
    FRAMINGS,
    ToolPlan,
    render_prompt,
    resolve_format,
    template_renders_tools,
)
from local_engine.tool_parser import (
    ContentDelta,
    ToolCallDelta,
    ToolCallParser,
    parse_tool_calls,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
HERMES_CALL = f"<tool_call>\n{PARIS}\n</tool_call>"


@pytest.fixture(scope="module")
def ll_tokenizer(smollm2_tokenizer: PreTrainedTokenizerBase) -> Any:
    return llguidance.hf.from_tokenizer(smollm2_tokenizer)


def accepts(ll_tokenizer: Any, tokenizer: PreTrainedTokenizerBase, params: StructuredOutputsParams, text: str) -> bool:
    """Whether llguidance takes ``text`` as a whole output of the grammar (every token, then the end)."""
    grammar = llguidance.grammar_from("lark", params.grammar or "")
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    assert not is_error, messages
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
    tokens = tokenizer.encode(text, add_special_tokens=False)
    if matcher.validate_tokens(tokens) != len(tokens):
        return False
    assert matcher.consume_tokens(tokens)
    return matcher.is_accepting()


def plan(choice: object = "required", format: str = "generic", tools: list[Any] | None = None, **options: Any) -> ToolPlan:
    return ToolPlan.build(tools or [WEATHER, TIME], choice, format, **options)  # type: ignore[arg-type]


# --- grammars ---


def test_required_takes_calls_and_nothing_else(ll_tokenizer: Any, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    grammar = plan("required").structured_outputs()
    assert grammar is not None

    def ok(text: str) -> bool:
        return accepts(ll_tokenizer, smollm2_tokenizer, grammar, text)

    assert ok(HERMES_CALL)
    assert ok(HERMES_CALL + "\n" + '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert not ok("Sure! " + HERMES_CALL)  # no text
    assert not ok(HERMES_CALL.replace("celsius", "kelvin"))  # the enum
    assert not ok(HERMES_CALL.replace("get_weather", "get_wether"))  # a name not in tools
    assert not ok('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')  # required


def test_parallel_false_is_one_call(ll_tokenizer: Any, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    grammar = plan("required", parallel=False).structured_outputs()
    assert grammar is not None
    assert accepts(ll_tokenizer, smollm2_tokenizer, grammar, HERMES_CALL)
    assert not accepts(ll_tokenizer, smollm2_tokenizer, grammar, HERMES_CALL + "\n" + HERMES_CALL)


def test_a_named_function_is_that_function_once(ll_tokenizer: Any, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    grammar = plan({"type": "function", "function": {"name": "get_time"}}).structured_outputs()
    assert grammar is not None
    assert accepts(ll_tokenizer, smollm2_tokenizer, grammar, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    assert not accepts(ll_tokenizer, smollm2_tokenizer, grammar, HERMES_CALL)


def test_auto_takes_text_or_enforced_calls_after_the_trigger(
    ll_tokenizer: Any, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    grammar = plan("auto").structured_outputs()
    assert grammar is not None

    def ok(text: str) -> bool:
        return accepts(ll_tokenizer, smollm2_tokenizer, grammar, text)

    assert ok("It is sunny in Paris.")
    assert ok("Let me check. " + HERMES_CALL)
    assert not ok("Let me check. <tool_call>\n{\"name\": \"rm -rf\"")  # once triggered, a call
    assert not ok(HERMES_CALL + " and some text after")


def test_auto_with_a_json_answer_is_that_json_or_calls(ll_tokenizer: Any, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    answer = StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    grammar = plan("auto").structured_outputs(answer)
    assert grammar is not None
    assert accepts(ll_tokenizer, smollm2_tokenizer, grammar, '{"a": 1}')
    assert accepts(ll_tokenizer, smollm2_tokenizer, grammar, HERMES_CALL)
    assert not accepts(ll_tokenizer, smollm2_tokenizer, grammar, "plain text")


def test_none_leaves_the_answer_alone() -> None:
    answer = StructuredOutputsParams(json_object=True)
    assert plan("none").structured_outputs() is None
    assert plan("none").structured_outputs(answer) is answer


@pytest.mark.parametrize(
    ("format", "call"),
    [
        ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}'),
        ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]'),
        ("hermes", HERMES_CALL),
    ],
)
def test_each_format_frames_its_calls(
    format: str, call: str, ll_tokenizer: Any, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    for choice in ("required", "auto"):
        grammar = plan(choice, format).structured_outputs()
        assert grammar is not None
        assert accepts(ll_tokenizer, smollm2_tokenizer, grammar, call), (format, choice)
    assert accepts(ll_tokenizer, smollm2_tokenizer, plan("auto", format).structured_outputs(), "No call needed.")  # type: ignore[arg-type]
    assert parse_tool_calls(call, FRAMINGS[format].trigger).tool_calls[0].name == "get_weather"


def test_defs_in_a_tool_schema_still_resolve(ll_tokenizer: Any, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    tool = {"type": "function", "function": {"name": "move", "parameters": {
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
        "type": "object", "properties": {"to": {"$ref": "#/$defs/Point"}}, "required": ["to"]}}}  # fmt: skip
    grammar = plan("required", tools=[tool]).structured_outputs()
    call = '<tool_call>\n{"name": "move", "arguments": {"to": {"x": 3}}}\n</tool_call>'
    assert accepts(ll_tokenizer, smollm2_tokenizer, grammar, call)  # type: ignore[arg-type]
    assert not accepts(ll_tokenizer, smollm2_tokenizer, grammar, call.replace("3", '"3"'))  # type: ignore[arg-type]


# --- refusals ---


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "not": {}}}}], "auto",
         "tools[0].function.parameters"),
        ([WEATHER, {"type": "function", "function": {"name": "bad name"}}], "auto", "tools[1].function.name"),
        ([WEATHER, TIME, {"type": "function", "function": {"name": "u", "parameters": {
            "type": "array", "uniqueItems": True}}}], "auto", "tools[2].function.parameters"),
        ([{"type": "retrieval"}], "auto", "tools[0]"),
        ([], "auto", "tools"),
        ([WEATHER], {"type": "function", "function": {"name": "get_time"}}, "tool_choice"),
        ([WEATHER], "sometimes", "tool_choice"),
    ],
)  # fmt: skip
def test_bad_tools_and_choices_are_named(tools: list[Any], choice: object, param: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        ToolPlan.build(tools, choice, "generic")
    assert refused.value.param == param


# --- parsing ---


def test_a_finished_output_splits_into_content_and_calls() -> None:
    parsed = parse_tool_calls("Let me look.\n" + HERMES_CALL + "\n" + HERMES_CALL.replace("Paris", "Oslo"), "<tool_call>")
    assert parsed.content == "Let me look.\n"
    assert [json.loads(call.arguments)["city"] for call in parsed.tool_calls] == ["Paris", "Oslo"]
    ids = [call.id for call in parsed.tool_calls]
    assert all(len(i) == 29 and i.startswith("call_") for i in ids) and len(set(ids)) == 2
    only_calls = parse_tool_calls(HERMES_CALL, "<tool_call>")
    assert only_calls.content is None and only_calls.tool_calls[0].as_openai()["type"] == "function"


def test_text_without_calls_and_cut_calls_are_content() -> None:
    assert parse_tool_calls("Just text.", "<tool_call>").content == "Just text."
    cut = HERMES_CALL[:40]
    assert parse_tool_calls(cut, "<tool_call>").content == cut and not parse_tool_calls(cut, "<tool_call>").tool_calls
    assert parse_tool_calls("Hello there", None).content == "Hello there"  # llama3: text that does not start with {


def test_an_object_in_another_order_is_read_whole() -> None:
    parsed = parse_tool_calls('<tool_call>{"arguments": {"city": "Rome"}, "name": "get_weather"}</tool_call>', "<tool_call>")
    assert parsed.tool_calls[0].name == "get_weather" and json.loads(parsed.tool_calls[0].arguments) == {"city": "Rome"}


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_streamed_deltas_join_into_the_same_calls(step: int) -> None:
    text = 'Checking. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris}", "unit": "celsius"}}\n' \
           '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'  # fmt: skip
    parser = ToolCallParser("<tool_call>")
    deltas = [d for i in range(0, len(text), step) for d in parser.feed(text[i : i + step])] + parser.finish()
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    assert content == "Checking. "
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    headers = [d for d in calls if d.id is not None]
    assert [h.name for h in headers] == ["get_weather", "get_time"] and [h.index for h in headers] == [0, 1]
    assert calls[0].id is not None  # a call's header comes before its arguments
    for index, expected in enumerate([{"city": 'Pa"ris}', "unit": "celsius"}, {}]):
        joined = "".join(d.arguments for d in calls if d.index == index)
        assert json.loads(joined) == expected
    assert headers[0].as_openai() == {"index": 0, "id": headers[0].id, "type": "function",
                                      "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    assert calls[1].as_openai() == {"index": 0, "function": {"arguments": calls[1].arguments}}
    assert parser.result(text).tool_calls[0].id == headers[0].id


def test_a_partial_trigger_is_held_back_then_released() -> None:
    parser = ToolCallParser("<tool_call>")
    assert parser.feed("a <tool") == [ContentDelta("a ")]
    assert parser.feed("box") == [ContentDelta("<toolbox")]
    assert parser.feed(" <t") == [ContentDelta(" ")]
    assert parser.finish() == [ContentDelta("<t")]


# --- the prompt ---


def test_a_template_without_tools_gets_the_generic_text(smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    assert not template_renders_tools(smollm2_tokenizer) and resolve_format(smollm2_tokenizer) == "generic"
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]  # fmt: skip
    prompt = render_prompt(smollm2_tokenizer, messages, plan("auto"))
    assert prompt.startswith("<|im_start|>system\nYou can call these functions")
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt  # the call
    assert '<|im_start|>user\n<tool_response>\n{"name": "get_weather", "content": "18 C"}\n</tool_response>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "You can call" not in render_prompt(smollm2_tokenizer, messages[:1], plan("none"))


def test_a_template_with_tools_renders_them_its_own_way(smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    seen: dict[str, Any] = {}

    class ToolTemplate:
        chat_template = "{% for tool in tools %}<tool_call>{% endfor %}"
        added_tokens_decoder: ClassVar[dict[int, Any]] = {}

        def apply_chat_template(self, messages: list[Any], **options: Any) -> str:
            seen.update(options, messages=messages)
            return "rendered"

    tokenizer = ToolTemplate()
    assert resolve_format(tokenizer) == "hermes" and resolve_format(tokenizer, "mistral") == "mistral"
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    assert render_prompt(tokenizer, messages, plan("auto", "hermes")) == "rendered"
    assert seen["tools"][0]["function"]["name"] == "get_weather"
    assert seen["messages"][1]["content"] == "" and seen["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
