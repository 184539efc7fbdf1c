"""Chat messages in the GenAI conventions' shape (gen-ai-input-messages.json, gen-ai-output-messages.json)."""

from __future__ import annotations

from gateway.telemetry.genai_messages import input_messages, output_messages


def test_a_tool_conversation_in_parts() -> None:
    payload = {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"city": "Paris"}'}},
                        {"id": "call_2", "type": "function", "function": {"name": "get", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]}  # fmt: skip
    assert input_messages(payload) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "weather?"},
                                   {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get", "arguments": {"city": "Paris"}},
                                        {"type": "tool_call", "id": "call_2", "name": "get", "arguments": "{not json"}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "sunny"}]},
    ]  # fmt: skip


def test_answers_with_their_finish_reasons_as_the_conventions_spell_them() -> None:
    answer = {"choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"},
        {"index": 2, "message": {"role": "assistant", "content": "cut"}, "finish_reason": None},
    ]}  # fmt: skip
    assert output_messages(answer) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "hi"}], "finish_reason": "stop"},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c", "name": "f", "arguments": {}}],
         "finish_reason": "tool_call"},
        {"role": "assistant", "parts": [{"type": "text", "content": "cut"}], "finish_reason": "error"},
    ]  # fmt: skip


def test_a_completion_prompt_and_its_text() -> None:
    assert input_messages({"prompt": ["a", "b"]}) == [
        {"role": "user", "parts": [{"type": "text", "content": "a"}]},
        {"role": "user", "parts": [{"type": "text", "content": "b"}]},
    ]
    assert output_messages({"choices": [{"text": "c", "finish_reason": "length"}]}) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "c"}], "finish_reason": "length"}
    ]
