"""OpenAI's Responses API and Anthropic's Messages API, through their official SDKs, answered by the local engine.

The model is the tiny random Llama: whatever it emits that parses (a JSON
answer, a tool call's arguments) is constrained decoding's doing, so these
tests show the doors carry the constraints all the way to the engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import jsonschema
import openai
import orjson
import pytest
from transformers import PreTrainedTokenizerBase

from tests.providers.local.conftest import tiny_1k_gateway
from tests.support.openai_spec.spec import validate

CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
        "additionalProperties": False}  # fmt: skip
ANSWER = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
          "additionalProperties": False}  # fmt: skip


@pytest.fixture(scope="module")
def local_url(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: PreTrainedTokenizerBase) -> Iterator[str]:
    server = f'{{ledger_flush_interval: 0.05, data_dir: "{tmp_path_factory.mktemp("doors-data")}"}}'
    with tiny_1k_gateway(tmp_path_factory, smollm2_tokenizer, server) as url:
        yield url


def responses(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def messages(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="none", max_retries=0, timeout=120)


def test_a_json_schema_response_parses(local_url: str) -> None:
    fmt = {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}
    raw = responses(local_url).responses.with_raw_response.create(
        model="tiny", input="What is 2 + 2?", text={"format": fmt}, temperature=0, max_output_tokens=40,  # type: ignore[typeddict-item]
    )  # fmt: skip
    validate("Response", orjson.loads(raw.content))
    response = raw.parse()
    if response.status == "completed":
        jsonschema.validate(json.loads(response.output_text), ANSWER)
    else:  # the random model may ramble in whitespace until max_output_tokens: then the answer is cut, and says so
        assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_a_required_function_call_has_arguments_that_fit(local_url: str) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": CITY, "strict": True}
    api = responses(local_url)
    first = api.responses.create(model="tiny", input="Weather in Paris?", tools=[tool], tool_choice="required",  # type: ignore[list-item]
                                 temperature=0, max_output_tokens=60)  # fmt: skip
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and all(call.name == "get_weather" for call in calls)
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), CITY)
    second = api.responses.create(model="tiny", previous_response_id=first.id, tools=[tool], temperature=0,  # type: ignore[list-item]
                                  max_output_tokens=8, input=[
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}])  # fmt: skip
    assert second.status in ("completed", "incomplete") and second.previous_response_id == first.id


def test_a_responses_stream_from_the_engine_is_event_by_event(local_url: str) -> None:
    with responses(local_url).responses.stream(model="tiny", input="Say hi", temperature=0, max_output_tokens=12) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    # Cut by max_output_tokens, OpenAI's last event is response.incomplete (the SDK's get_final_response wants completed).
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == final.output_text
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert responses(local_url).responses.retrieve(final.id).output_text == final.output_text


def test_a_messages_tool_use_from_the_engine_fits_its_schema(local_url: str) -> None:
    tool = {"name": "get_weather", "description": "The weather.", "input_schema": CITY}
    message = messages(local_url).messages.create(
        model="tiny", max_tokens=60, tools=[tool], tool_choice={"type": "any", "disable_parallel_tool_use": True},  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Weather in Rome?"}], extra_body={"temperature": 0},
    )  # fmt: skip
    uses = [block for block in message.content if block.type == "tool_use"]
    assert len(uses) == 1 and message.stop_reason == "tool_use"
    for use in uses:
        jsonschema.validate(use.input, CITY)


def test_a_messages_stream_from_the_engine_is_event_by_event(local_url: str) -> None:
    with messages(local_url).messages.stream(model="tiny", max_tokens=12, extra_body={"temperature": 0},
                                             messages=[{"role": "user", "content": "Say hi"}]) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    text = "".join(event.delta.text for event in events if event.type == "content_block_delta")  # type: ignore[union-attr]
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0


def test_count_tokens_uses_the_engines_tokenizer(local_url: str, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    asked = [{"role": "user", "content": "How many tokens is this?"}]
    counted = messages(local_url).messages.count_tokens(model="tiny", messages=asked)  # type: ignore[arg-type]
    prompt = smollm2_tokenizer.apply_chat_template(asked, add_generation_prompt=True, tokenize=False)
    expected = len(smollm2_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert counted.input_tokens == expected
