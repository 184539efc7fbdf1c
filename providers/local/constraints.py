"""What an OpenAI request asks its output to be, for the local engine: response_format, tools, vLLM's extras.

::

    response_format   {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}   chat
    tools, tool_choice, parallel_tool_calls                                                                   chat
    structured_outputs {"json" | "regex" | "choice" | "grammar" | "json_object": ..., "disable_any_whitespace"}  vLLM's, both
    guided_json, guided_regex, guided_choice, guided_grammar                                                  vLLM's older names

At most one of the answer's constraints is given; tools are planned with the
model's tokenizer (``local_engine.tool_calls``), the rest is pure. A refusal
names the field the client used (``constraint_field``), never the engine's
``structured_outputs`` when the client said ``response_format``.
"""

from __future__ import annotations

from typing import Any

from local_engine import InvalidInput
from local_engine.structured_outputs import StructuredOutputsParams
from local_engine.tool_calls import ToolPlan, resolve_format, trigger_token_id
from providers.wire import Endpoint

_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
ANSWER_FIELDS = ("response_format", "structured_outputs", *_GUIDED)


def answer_fields(endpoint: Endpoint, payload: dict[str, Any]) -> list[str]:
    """The constraint fields the request sets (response_format on chat only; ``{"type": "text"}`` sets nothing)."""
    given = [name for name in ANSWER_FIELDS if payload.get(name) is not None]
    if "response_format" in given and (endpoint is not Endpoint.CHAT or _is_text(payload["response_format"])):
        given.remove("response_format")
    return given


def constraint_field(endpoint: Endpoint, payload: dict[str, Any]) -> str:
    """The field an engine refusal of ``structured_outputs`` is about, in the client's terms."""
    given = answer_fields(endpoint, payload)
    if given:
        return given[0]
    return "tools" if endpoint is Endpoint.CHAT and payload.get("tools") else "structured_outputs"


def answer_constraint(endpoint: Endpoint, payload: dict[str, Any]) -> StructuredOutputsParams | None:
    """The answer's constraint, or None; InvalidInput naming the field (``param`` as the client sent it)."""
    given = answer_fields(endpoint, payload)
    if len(given) > 1:
        raise InvalidInput(f"Give one of {', '.join(given)}: each constrains the whole answer.", param=given[1])
    if not given:
        return None
    name = given[0]
    value = payload[name]
    try:
        if name == "response_format":
            constraint = _response_format(value)
        elif name == "structured_outputs":
            constraint = StructuredOutputsParams.from_dict(value)
        else:
            kind = _GUIDED[name]
            constraint = StructuredOutputsParams(**{kind: value})  # type: ignore[arg-type]
    except InvalidInput as error:
        raise InvalidInput(str(error), param=name) from None
    # Compiled by the engine on its tokenizer thread, never here on the event loop: a schema it cannot enforce
    # comes back as its refusal of `structured_outputs`, which RequestOrigin renames to this field.
    return constraint


def _is_text(response_format: object) -> bool:
    return isinstance(response_format, dict) and response_format.get("type") == "text"


def _response_format(value: object) -> StructuredOutputsParams:
    if not isinstance(value, dict):
        raise InvalidInput("`response_format` must be an object with a `type`.", param="response_format")
    kind = value.get("type")
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInput("`response_format.json_schema` must be an object with a `name`.", param="response_format")
        schema = spec.get("schema", {})  # OpenAI: no schema is any JSON
        if not isinstance(schema, dict):
            raise InvalidInput("`response_format.json_schema.schema` must be a JSON schema object.", param="response_format")
        return StructuredOutputsParams(json=schema)
    raise InvalidInput(
        f"`response_format.type` must be text, json_object or json_schema, got {kind!r}.", param="response_format"
    )


def tool_plan(payload: dict[str, Any], tokenizer: Any, tool_call_format: str) -> ToolPlan | None:
    """The request's tools as the model writes calls (None without tools); InvalidInput naming the field."""
    tools = payload.get("tools")
    if tools is None:
        if payload.get("tool_choice") not in (None, "none"):
            raise InvalidInput("`tool_choice` needs `tools`.", param="tool_choice")
        return None
    format = resolve_format(tokenizer, tool_call_format)
    parallel = payload.get("parallel_tool_calls")
    return ToolPlan.build(
        tools,
        payload.get("tool_choice"),
        format,
        parallel=True if parallel is None else parallel,
        trigger_token_id=trigger_token_id(tokenizer, format),
    )
