"""OpenAI's Agents SDK (``openai-agents``) running an agent with a function tool through /v1/responses.

As a user's program would: an ``Agent`` with a ``@function_tool``, run by
``Runner``, its model an ``OpenAIResponsesModel`` on an ``AsyncOpenAI``
client pointed at a served gateway. The gateway routes ``tool-test`` to the
fake upstream's ``tool-caller``, which calls the first tool with
{"city": <the user's text>} and then answers "You said: <the tool's output>".
The model is given to each agent (not ``set_default_openai_client``) and
tracing is turned off per run, so no SDK-wide setting outlives a test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import orjson
import pytest
from agents import (
    Agent,
    FunctionTool,
    MessageOutputItem,
    OpenAIResponsesModel,
    RawResponsesStreamEvent,
    RunConfig,
    RunItemStreamEvent,
    Runner,
    ToolCallItem,
    ToolCallOutputItem,
    function_tool,
)
from openai.types.responses import ResponseTextDeltaEvent

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from tests.conftest import GATEWAY_YAML
from tests.support.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServedApp

AGENTS_KEY = "sk-agents-team-0123456789"
SERVER_YAML = """server:
  data_dir: ${DATA_DIR}
  api_keys:
    - {key: "${AGENTS_KEY}", name: agents-team, models: ["*"]}
"""
MODELS_YAML = """
  tool-test:
    deployments: [{provider: fake, model: tool-caller}]
"""
NO_TRACING = RunConfig(tracing_disabled=True)  # the SDK would send its traces to OpenAI


@pytest.fixture(scope="module")
def agents_gateway(
    gateway_config: GatewayConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("agents-data")
    environ = {"FAKE_URL": "http://unused", "FAKE_KEY": "x", "WRONG_KEY": "y",
               "AGENTS_KEY": AGENTS_KEY, "DATA_DIR": str(data_dir)}  # fmt: skip
    config = parse_config(SERVER_YAML + GATEWAY_YAML + MODELS_YAML, environ=environ)
    # The session's fake upstream, in place of the unused URL above.
    config = config.model_copy(update={"providers": gateway_config.providers})
    with ServedApp(create_app(config), server=config.server) as served:
        yield served.url


@pytest.fixture()
async def api(agents_gateway: str) -> AsyncIterator[openai.AsyncOpenAI]:
    url = f"{agents_gateway}/v1"
    async with openai.AsyncOpenAI(
        base_url=url, api_key=AGENTS_KEY, max_retries=0
    ) as client:
        yield client


def weather_agent(api: openai.AsyncOpenAI, cities: list[str]) -> Agent:
    """An agent whose one tool notes each city it is asked about in ``cities``."""

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"sunny in {city}"

    model = OpenAIResponsesModel(model="tool-test", openai_client=api)
    return Agent(
        name="weather", instructions="Use the tool.", tools=[get_weather], model=model
    )


def the_tool_round_trip(city: str) -> list[dict[str, object]]:
    """The chat messages the fake upstream gets once the tool's output goes back."""
    arguments = orjson.dumps({"city": city}).decode()
    call = {
        "id": "call_fake1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }
    return [
        {"role": "system", "content": "Use the tool."},
        {"role": "user", "content": city},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_fake1", "content": f"sunny in {city}"},
    ]


async def test_runner_run_calls_the_tool_and_answers_with_its_output(
    api: openai.AsyncOpenAI, fake: FakeOpenAI
) -> None:
    cities: list[str] = []
    agent = weather_agent(api, cities)
    result = await Runner.run(agent, "Paris", run_config=NO_TRACING)
    assert cities == ["Paris"]
    assert result.final_output == "You said: sunny in Paris"
    kinds = [type(item) for item in result.new_items]
    assert kinds == [ToolCallItem, ToolCallOutputItem, MessageOutputItem]
    assert (result.last_response_id or "").startswith("resp_")
    first, second = (request.body for request in fake.requests)
    (tool,) = agent.tools
    assert isinstance(tool, FunctionTool)
    function = {"name": "get_weather", "description": "The weather in a city.",
                "parameters": tool.params_json_schema, "strict": True}  # fmt: skip
    assert first["tools"] == [{"type": "function", "function": function}]
    assert second["messages"] == the_tool_round_trip("Paris")


async def test_a_streamed_run_sends_the_events_of_both_turns(
    api: openai.AsyncOpenAI, fake: FakeOpenAI
) -> None:
    cities: list[str] = []
    agent = weather_agent(api, cities)
    result = Runner.run_streamed(agent, "Rome", run_config=NO_TRACING)
    raw: list[str] = []
    items: list[str] = []
    text: list[str] = []
    async for event in result.stream_events():
        if isinstance(event, RawResponsesStreamEvent):
            raw.append(event.data.type)
            if isinstance(event.data, ResponseTextDeltaEvent):
                text.append(event.data.delta)
        elif isinstance(event, RunItemStreamEvent):
            items.append(event.name)
    assert cities == ["Rome"]
    assert result.final_output == "You said: sunny in Rome" == "".join(text)
    assert items == ["tool_called", "tool_output", "message_output_created"]
    assert raw.count("response.created") == raw.count("response.completed") == 2
    assert "response.function_call_arguments.delta" in raw
    # The answer's text comes in the second turn, after the tool call's arguments.
    arguments_done = raw.index("response.function_call_arguments.done")
    assert raw.index("response.output_text.delta") > arguments_done
    assert all(request.body["stream"] is True for request in fake.requests)
    assert fake.requests[-1].body["messages"] == the_tool_round_trip("Rome")


async def test_a_run_continues_a_kept_response(
    api: openai.AsyncOpenAI, fake: FakeOpenAI
) -> None:
    """With previous_response_id the SDK sends only what is new; the gateway puts back the rest."""
    cities: list[str] = []
    agent = weather_agent(api, cities)
    first = await Runner.run(agent, "Oslo", run_config=NO_TRACING)
    fake.requests.clear()
    previous = first.last_response_id
    second = await Runner.run(
        agent, "Lima", previous_response_id=previous, run_config=NO_TRACING
    )
    assert cities == ["Oslo", "Lima"]
    assert second.final_output == "You said: sunny in Lima"
    assert fake.requests[-1].body["messages"] == [
        *the_tool_round_trip("Oslo"),
        {"role": "assistant", "content": "You said: sunny in Oslo"},
        *the_tool_round_trip("Lima")[1:],
    ]
