"""The Responses door's pure translations, as tables: requests in, Response objects out."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.conversations import StoredResponse
from gateway.errors import InvalidRequest
from gateway.http.doors.openai_responses import chat_to_response, responses_to_chat
from providers.wire import Door, Usage
from tests.support.openai_spec.spec import validate

BASE = {"model": "m"}
CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"x":1}'}
CHAT_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}

# (Responses request fields, the chat payload's fields beside model)
REQUESTS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"input": "hi"}, {"messages": [{"role": "user", "content": "hi"}]}),
    ({"input": "hi", "instructions": "Be brief."},
     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}),
    ({"input": [{"role": "developer", "content": "Rules."}, {"type": "message", "role": "user", "content": "hi"}]},
     {"messages": [{"role": "system", "content": "Rules."}, {"role": "user", "content": "hi"}]}),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                                             {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}]}]}),
    ({"input": [{"role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}]},
     {"messages": [{"role": "assistant", "content": "ok"}]}),
    # Consecutive calls are one assistant message; their results follow as tool messages.
    ({"input": [{"role": "user", "content": "go"}, CALL, {**CALL, "call_id": "call_2"},
                {"type": "function_call_output", "call_id": "call_1", "output": "one"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "two"}]}]},
     {"messages": [{"role": "user", "content": "go"},
                   {"role": "assistant", "content": None, "tool_calls": [CHAT_CALL, {**CHAT_CALL, "id": "call_2"}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                   {"role": "tool", "tool_call_id": "call_2", "content": "two"}]}),
    ({"input": "x", "max_output_tokens": 9, "temperature": 0.2, "top_p": 0.5, "user": "u"},
     {"messages": [{"role": "user", "content": "x"}], "max_tokens": 9, "temperature": 0.2, "top_p": 0.5, "user": "u"}),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": SCHEMA, "strict": True}],
      "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False},
     {"messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA, "strict": True}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False}),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": SCHEMA}}},
     {"messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}}),
    ({"input": "x", "text": {"format": {"type": "json_object"}}},
     {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
    ({"input": "x", "reasoning": {"effort": "low"}}, {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "low"}),
    ({"input": "x", "include": ["message.output_text.logprobs", "reasoning.encrypted_content"], "top_logprobs": 2},
     {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 2}),
    ({"input": "x", "stream": True, "store": False, "metadata": {"a": "b"}, "stream_options": {"include_obfuscation": False}},
     {"messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": True}}),
    ({"input": "x", "background": False, "truncation": "disabled"}, {"messages": [{"role": "user", "content": "x"}]}),
    ({"input": "x", "text": {"verbosity": "low"}, "service_tier": "flex", "prompt_cache_key": "k", "safety_identifier": "s"},
     {"messages": [{"role": "user", "content": "x"}], "verbosity": "low", "service_tier": "flex", "prompt_cache_key": "k",
      "safety_identifier": "s"}),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "expected"), REQUESTS)
def test_a_request_becomes_a_chat_payload(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    translated = responses_to_chat({**BASE, **fields}, None)
    assert translated.payload == {**BASE, **expected}
    assert translated.dropped == ()
    assert translated.native is not None and translated.native.door is Door.RESPONSES
    assert translated.native.payload == {**BASE, **fields}  # for a deployment that speaks Responses


# (Responses request fields, the param that cannot be translated)
UNTRANSLATABLE: list[tuple[dict[str, Any], str]] = [
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0]"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0]"),
    ({"input": "x", "include": ["file_search_call.results"]}, "include[0]"),
    ({"input": "x", "reasoning": {"summary": "auto"}}, "reasoning.summary"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "param"), UNTRANSLATABLE)
def test_what_cannot_be_translated_is_noted_for_the_router(fields: dict[str, Any], param: str) -> None:
    translated = responses_to_chat({**BASE, **fields}, None)
    assert translated.native is not None and [lost.param for lost in translated.native.lost] == [param]
    assert translated.dropped == (param,)
    assert translated.native.lost[0].droppable


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
])  # fmt: skip
def test_state_kept_at_openai_may_not_be_dropped(fields: dict[str, Any], param: str) -> None:
    translated = responses_to_chat({**BASE, **fields}, None)
    assert translated.native is not None
    (lost,) = translated.native.lost
    assert (lost.param, lost.droppable) == (param, False)


def test_a_message_left_with_no_part_is_left_out() -> None:
    only_a_file = [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}, {"role": "user", "content": "hi"}]
    translated = responses_to_chat({**BASE, "input": only_a_file}, None)
    assert translated.payload["messages"] == [{"role": "user", "content": "hi"}]
    assert translated.dropped == ("input[0].content[0]",)


@pytest.mark.parametrize(("item", "param"), [
    ({"role": "robot", "content": "x"}, "input[0].role"),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id"),
    ({"type": "function_call_output", "output": "x"}, "input[0].call_id"),
    ({"role": "user", "content": 5}, "input[0].content"),
])  # fmt: skip
def test_a_malformed_item_is_a_400_naming_it(item: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        responses_to_chat({**BASE, "input": [item]}, None)
    assert caught.value.param == param


def test_a_previous_response_comes_before_the_new_input() -> None:
    earlier = [{"type": "message", "role": "user", "content": "one"}]
    output = [{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "ONE", "annotations": [], "logprobs": []}]}]  # fmt: skip
    previous = StoredResponse("resp_1", None, {"id": "resp_1", "output": output}, earlier, 0.0)
    translated = responses_to_chat({**BASE, "input": "two", "previous_response_id": "resp_1"}, previous)
    assert translated.payload["messages"] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "ONE"}, {"role": "user", "content": "two"},
    ]  # fmt: skip
    assert translated.native is not None and "previous_response_id" not in translated.native.payload
    assert translated.native.payload["input"] == [*earlier, *output, {"type": "message", "role": "user", "content": "two"}]


def _answer(message: dict[str, Any], finish: str = "stop", logprobs: Any = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, "logprobs": logprobs}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 6},
                      "completion_tokens_details": {"reasoning_tokens": 1}}}  # fmt: skip


def test_an_answer_with_text_and_calls_becomes_a_response() -> None:
    translated = responses_to_chat({**BASE, "input": "x", "metadata": {"k": "v"}}, None)
    response = chat_to_response(_answer({"content": "hello", "tool_calls": [CHAT_CALL]}, "tool_calls"), translated, None)
    validate("Response", response)
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][0]["content"][0]["text"] == "hello"
    call = response["output"][1]
    assert (call["call_id"], call["name"], call["arguments"], call["status"]) == ("call_1", "f", '{"x":1}', "completed")
    assert response["status"] == "completed" and response["metadata"] == {"k": "v"}
    assert response["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 0},
                                 "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 14}  # fmt: skip
    assert response["id"] == translated.state.id


def test_an_answer_cut_by_max_tokens_is_incomplete() -> None:
    translated = responses_to_chat({**BASE, "input": "x"}, None)
    response = chat_to_response(_answer({"content": "hel"}, "length"), translated, None)
    validate("Response", response)
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"  # the message was cut too


def test_logprobs_come_back_when_asked_for() -> None:
    logprobs = {"content": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105],
                             "top_logprobs": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105]}]}]}  # fmt: skip
    asked = responses_to_chat({**BASE, "input": "x", "include": ["message.output_text.logprobs"]}, None)
    response = chat_to_response(_answer({"content": "hi"}, logprobs=logprobs), asked, None)
    validate("Response", response)
    assert response["output"][0]["content"][0]["logprobs"] == logprobs["content"]
    unasked = responses_to_chat({**BASE, "input": "x"}, None)
    assert chat_to_response(_answer({"content": "hi"}, logprobs=logprobs), unasked, None)["output"][0]["content"][0]["logprobs"] == []


def test_an_answer_without_usage_is_counted_by_the_gateway() -> None:
    answer = _answer({"content": "hi"})
    del answer["usage"]
    response = chat_to_response(answer, responses_to_chat({**BASE, "input": "x"}, None), Usage(5, 2, estimated=True))
    assert (response["usage"]["input_tokens"], response["usage"]["output_tokens"]) == (5, 2)
