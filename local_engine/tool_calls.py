"""Tool calling on the local engine: tools into the prompt, a grammar for the calls, calls out of the text.

::

    ToolPlan.build(tools, tool_choice, format, ...)   checked: InvalidInput naming tools[i]... or tool_choice
       ├── .render(tokenizer, messages)               the prompt: the template's own tools, or the generic text
       ├── .structured_outputs(answer)                the Lark grammar tool_choice asks for (None: free text)
       └── .parser()                                  a ToolCallParser for the output (tool_parser.py)

A format is how a model family writes calls, as vLLM's ``--tool-call-parser``
names them::

    hermes    <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>     Qwen 2.5/3, Hermes, ...
    llama3    {"name": ..., "parameters": {...}}; {...}                         Llama 3.1-3.3 (JSON tool calling)
    mistral   [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]              Mistral, Mixtral
    generic   hermes's framing, with the tools described in the system prompt  templates without tools (SmolLM2)

``auto`` picks from the chat template: a template that never mentions
``tools`` gets ``generic``, and then constrained decoding is what makes a
small model's calls well formed. The grammar bounds every repetition (at
most ``MAX_PARALLEL_CALLS`` calls, one space between JSON tokens) so
that even a random model ends; the tools' own schemas bound the rest, and
``max_tokens`` what they leave open.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InvalidInput
from .sampling_params import SamplingParams
from .structured_outputs import StructuredOutputsParams
from .tool_parser import ParsedOutput, ToolCallParser, parse_tool_calls

ToolCallFormat = Literal["hermes", "llama3", "mistral", "generic"]
TOOL_CALL_FORMATS: tuple[str, ...] = ("auto", "hermes", "llama3", "mistral", "generic")
ChoiceKind = Literal["none", "auto", "required", "function"]
# Parallel calls in one answer: a bound that keeps a grammar finite for a model that never stops by itself.
MAX_PARALLEL_CALLS = 8
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # OpenAI's rule for function names
# A call is read by a program, not a person: at most one space between JSON tokens, as models trained on tool
# calls write them (`{"name": "f", "arguments": {...}}`), where structured outputs allow 8 characters of any
# whitespace. Fewer tokens per call, and no room for a weak model to pad.
CALL_WHITESPACE = r"[\x20]{0,1}"


@dataclass(frozen=True, slots=True)
class Framing:
    """How a format writes its calls: ``trigger`` starts them (None: the output starts with the first call);
    ``open`` follows it, ``close`` ends each call (``per_call``) or all of them, ``separator`` goes between."""

    trigger: str | None
    per_call: bool
    open: str
    close: str
    separator: str
    arguments_key: str


_HERMES = Framing("<tool_call>", True, "\n", "\n</tool_call>", "\n", "arguments")
FRAMINGS: dict[str, Framing] = {
    "hermes": _HERMES,
    "generic": _HERMES,
    "llama3": Framing(None, False, "", "", "; ", "parameters"),
    "mistral": Framing("[TOOL_CALLS]", False, "[", "]", ", ", "arguments"),
}


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None
    parameters: Mapping[str, Any]  # a JSON schema of the arguments object

    @classmethod
    def from_openai(cls, entry: object, index: int) -> Tool:
        """One of OpenAI's ``tools`` entries, ``{"type": "function", "function": {...}}``; InvalidInput naming it."""
        where = f"tools[{index}]"
        if not isinstance(entry, dict) or entry.get("type") != "function" or not isinstance(entry.get("function"), dict):
            raise InvalidInput(f"`{where}` must be {{\"type\": \"function\", \"function\": {{...}}}}.", param=where)
        function = entry["function"]
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidInput(
                f"`{where}.function.name` must be 1-64 characters of a-z, A-Z, 0-9, _ and -.", param=f"{where}.function.name"
            )
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidInput(f"`{where}.function.description` must be a string.", param=f"{where}.function.description")
        # OpenAI: parameters left out describe a function that takes none.
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise InvalidInput(f"`{where}.function.parameters` must be a JSON schema object.", param=f"{where}.function.parameters")
        problem = schema_problem(json.dumps(parameters, sort_keys=True))
        if problem:
            raise InvalidInput(
                f"`{where}.function.parameters` cannot be enforced: {problem}", param=f"{where}.function.parameters"
            )
        return cls(name, description, parameters)

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    kind: ChoiceKind
    name: str | None = None  # kind "function": the one function to call

    @classmethod
    def from_openai(cls, value: object, tools: Sequence[Tool]) -> ToolChoice:
        """``none``, ``auto``, ``required`` or ``{"type": "function", "function": {"name": ...}}`` (default auto)."""
        if value is None:
            return cls("auto")
        if value in ("none", "auto", "required"):
            return cls(value)  # type: ignore[arg-type]
        name = value.get("function", {}).get("name") if isinstance(value, dict) else None
        if not (isinstance(value, dict) and value.get("type") == "function" and isinstance(name, str)):
            raise InvalidInput(
                '`tool_choice` must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.',
                param="tool_choice",
            )
        if name not in {tool.name for tool in tools}:
            raise InvalidInput(f"`tool_choice` names the function {name!r}, which is not in `tools`.", param="tool_choice")
        return cls("function", name)


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """One request's tools, what it asks of them, and how this model writes calls."""

    tools: tuple[Tool, ...]
    choice: ToolChoice
    format: ToolCallFormat
    parallel: bool = True
    # The format's trigger as a special token of the tokenizer (Mistral's [TOOL_CALLS]): matched as that
    # token, and kept in the output's text for the parser.
    trigger_token_id: int | None = None

    @classmethod
    def build(
        cls,
        tools: object,
        tool_choice: object,
        format: ToolCallFormat,
        *,
        parallel: object = True,
        trigger_token_id: int | None = None,
    ) -> ToolPlan:
        if not isinstance(tools, list) or not tools:
            raise InvalidInput("`tools` must be a non-empty list of tools.", param="tools")
        parsed = tuple(Tool.from_openai(entry, index) for index, entry in enumerate(tools))
        if not isinstance(parallel, bool):
            raise InvalidInput("`parallel_tool_calls` must be true or false.", param="parallel_tool_calls")
        return cls(parsed, ToolChoice.from_openai(tool_choice, parsed), format, parallel, trigger_token_id)

    @property
    def framing(self) -> Framing:
        return FRAMINGS[self.format]

    @property
    def calls_tools(self) -> bool:
        """Whether the output may hold calls (and so is parsed for them)."""
        return self.choice.kind != "none"

    @property
    def keeps_special_tokens(self) -> bool:
        return self.trigger_token_id is not None

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.framing.trigger)

    def parse(self, text: str) -> ParsedOutput:
        if not self.calls_tools:
            return ParsedOutput(text, ())
        return parse_tool_calls(text, self.framing.trigger)

    def render(self, tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt: the template's own tool rendering for a tool-aware format, else the generic text."""
        return render_prompt(tokenizer, messages, self, add_generation_prompt)

    def sampling_params(self, params: SamplingParams) -> SamplingParams:
        """``params`` constrained as tool_choice asks (their own constraint kept for an answer that is no call);
        a trigger that is a special token kept in the text, for the parser to find the calls."""
        return dataclasses.replace(
            params,
            structured_outputs=self.structured_outputs(params.structured_outputs),
            skip_special_tokens=params.skip_special_tokens and not self.keeps_special_tokens,
        )

    def structured_outputs(self, answer: StructuredOutputsParams | None = None) -> StructuredOutputsParams | None:
        """The constraint for this request's output; ``answer`` is response_format's, for an answer that is no call.

        none: ``answer`` alone. required: one call or more (one without parallel calls). function: that one
        call. auto: free text, or calls once the model writes the trigger; with ``answer`` (JSON), that or calls.
        """
        kind = self.choice.kind
        if kind == "none":
            return answer
        if answer is not None and answer.kind not in ("json", "json_object"):
            raise InvalidInput("Beside tools, an answer's format can only be a JSON schema or a JSON object.",
                               param="structured_outputs")  # fmt: skip
        tools = [tool for tool in self.tools if kind != "function" or tool.name == self.choice.name]
        most = 1 if kind == "function" or not self.parallel else MAX_PARALLEL_CALLS
        trigger = self._trigger_literal()
        rules = ["%llguidance {}", f"tool_json: %json {call_schema(tools, self.framing.arguments_key)}"]
        if kind == "auto" and answer is None and self.framing.trigger is None:
            # llama3: the output is calls when it starts with "{", and text when it starts with anything else.
            rules += ["start: TEXT | calls", f"calls: {self._calls(trigger, most)}", "TEXT: /([^{](.|\\n)*)?/"]
        elif kind == "auto" and answer is None:
            # Free text until the trigger is written, then the calls are enforced (llguidance's lazy lexeme). A
            # special-token trigger needs no laziness: text cannot spell it.
            head = "call_trigger" if self.trigger_token_id is not None else "call_trigger[lazy]"
            rules += ["start: TEXT | calls", f"calls: {self._calls('call_trigger', most)}",
                      f"{head}: TEXT {trigger}", "TEXT: /(.|\\n)*/"]  # fmt: skip
        elif kind == "auto":
            assert answer is not None
            rules += ["start: answer | calls", f"calls: {self._calls(trigger, most)}", f"answer: %json {answer.source()[1]}"]
        else:
            rules += ["start: calls", f"calls: {self._calls(trigger, most)}"]
        return StructuredOutputsParams(grammar="\n".join(rules) + "\n")

    def _calls(self, first_trigger: str, most: int) -> str:
        """A Lark expression for 1..most calls in the format's framing; the first one opened by ``first_trigger``."""
        framing = self.framing
        open_, close, separator = _literal(framing.open), _literal(framing.close), _literal(framing.separator)
        if framing.per_call:
            first = _sequence(first_trigger, open_, "tool_json", close)
            again, tail = _sequence(separator, self._trigger_literal(), open_, "tool_json", close), ""
        else:
            first, again, tail = _sequence(first_trigger, open_, "tool_json"), _sequence(separator, "tool_json"), close
        return _sequence(first, f"({again}){{0,{most - 1}}}" if most > 1 else "", tail)

    def _trigger_literal(self) -> str:
        if self.framing.trigger is None:
            return ""
        return f"<[{self.trigger_token_id}]>" if self.trigger_token_id is not None else _literal(self.framing.trigger)


def call_schema(tools: Sequence[Tool], arguments_key: str) -> str:
    """The JSON schema of one call to any of ``tools``, its name first; whitespace bounded as structured outputs'.

    Each tool's ``$defs`` move to the root under ``t<i>_`` names (its ``$ref``s follow): the parameters
    schema is no longer the root its references point into.
    """
    calls: list[dict[str, Any]] = []
    definitions: dict[str, Any] = {}
    for index, tool in enumerate(tools):
        parameters = dict(tool.parameters)
        for key in ("$defs", "definitions"):
            for name, value in (parameters.pop(key, None) or {}).items():
                definitions[f"t{index}_{name}"] = _rehome_refs(value, index)
        calls.append({
            "type": "object",
            "properties": {"name": {"const": tool.name}, arguments_key: _rehome_refs(parameters, index)},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        })  # fmt: skip
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if definitions:
        schema = {**schema, "$defs": definitions}
    return json.dumps({**schema, "x-guidance": {"whitespace_pattern": CALL_WHITESPACE}})


def _rehome_refs(value: Any, index: int) -> Any:
    if isinstance(value, dict):
        return {key: _rehome_ref(item, index) if key == "$ref" else _rehome_refs(item, index) for key, item in value.items()}
    if isinstance(value, list):
        return [_rehome_refs(item, index) for item in value]
    return value


def _rehome_ref(ref: Any, index: int) -> Any:
    for prefix in ("#/$defs/", "#/definitions/"):
        if isinstance(ref, str) and ref.startswith(prefix):
            return f"#/$defs/t{index}_{ref[len(prefix):]}"
    return ref


@functools.lru_cache(maxsize=256)
def schema_problem(schema_text: str) -> str | None:
    """Why llguidance cannot enforce this JSON schema (``not``, ``uniqueItems``, a bad ``pattern``), or None."""
    import llguidance  # the engine's grammar library; imported when the first tool comes

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text)
    except ValueError as error:
        return str(error)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return "; ".join(messages) if is_error else None


def _literal(text: str) -> str:
    return json.dumps(text) if text else ""


def _sequence(*parts: str) -> str:
    return " ".join(part for part in parts if part)


# --- the prompt ---


def chat_template_text(tokenizer: Any) -> str:
    """The tokenizer's chat template as text (several named ones joined), or "" without one."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(value) for value in template.values())
    return template or ""


def template_renders_tools(tokenizer: Any) -> bool:
    return "tools" in chat_template_text(tokenizer)


def resolve_format(tokenizer: Any, requested: str = "auto") -> ToolCallFormat:
    """The format a model writes calls in: ``requested``, or for ``auto`` the one its chat template shows."""
    if requested != "auto":
        if requested not in FRAMINGS:
            raise ValueError(f"tool_call_format must be one of {', '.join(TOOL_CALL_FORMATS)}, got {requested!r}")
        return requested  # type: ignore[return-value]
    template = chat_template_text(tokenizer)
    if "tools" not in template:
        return "generic"
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or '"parameters"' in template:
        return "llama3"
    return "generic"  # a template that knows tools, in a format no parser here reads: described our own way


def trigger_token_id(tokenizer: Any, format: ToolCallFormat) -> int | None:
    """The format's trigger as one of the tokenizer's special tokens, if it is one."""
    trigger = FRAMINGS[format].trigger
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "content", None) == trigger and getattr(token, "special", False):
            return int(token_id)
    return None


def render_prompt(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], plan: ToolPlan | None, add_generation_prompt: bool = True
) -> str:
    """The conversation through the chat template, with ``plan``'s tools.

    Messages are OpenAI's, text content: an assistant's ``tool_calls`` (``arguments`` as JSON text) and
    ``role: "tool"`` results with ``tool_call_id``. A format the template renders gets them the template's way
    (tools as OpenAI's list, arguments as objects, as vLLM passes them); ``generic`` writes the tools into
    the system prompt, the calls as the model is asked to write them, and results as
    ``<tool_response>`` in a user turn.
    """
    if plan is not None and plan.format != "generic" and template_renders_tools(tokenizer):
        conversation = [_template_message(message) for message in messages]
        tools = [tool.as_openai() for tool in plan.tools]
        return str(tokenizer.apply_chat_template(conversation, tools=tools, add_generation_prompt=add_generation_prompt,
                                                 tokenize=False))  # fmt: skip
    framing = plan.framing if plan is not None else _HERMES
    conversation = _generic_conversation(messages, framing)
    if plan is not None and plan.calls_tools:
        conversation = _with_system_text(conversation, generic_tools_text(plan))
    return str(tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False))


def generic_tools_text(plan: ToolPlan) -> str:
    """The tools and how to call them, for a model whose template has no tools (docs/local.md shows it)."""
    key = plan.framing.arguments_key
    described = "\n".join(json.dumps(tool.as_openai()["function"], ensure_ascii=False) for tool in plan.tools)
    example = _written_calls(plan.framing, [("<function name>", "{<arguments as JSON>}")])
    return (
        "You can call these functions (each described as JSON, its parameters as a JSON schema):\n"
        f"{described}\n\n"
        f"To call one, answer with exactly:\n{example}\n"
        f'where "{key}" is a JSON object matching the function\'s parameters. Results come back as '
        "<tool_response>...</tool_response>."
    )


def _written_calls(framing: Framing, calls: Sequence[tuple[str, str]]) -> str:
    """Calls as the format writes them: ``calls`` are (name, arguments as JSON text)."""
    objects = [f'{{"name": {json.dumps(name)}, "{framing.arguments_key}": {arguments}}}' for name, arguments in calls]
    trigger = framing.trigger or ""
    if framing.per_call:
        return framing.separator.join(f"{trigger}{framing.open}{obj}{framing.close}" for obj in objects)
    return f"{trigger}{framing.open}{framing.separator.join(objects)}{framing.close}"


def _generic_conversation(messages: Sequence[Mapping[str, Any]], framing: Framing) -> list[dict[str, Any]]:
    """Calls written into the assistant's text, results (consecutive ones together) into a user turn."""
    names = {call.get("id"): call["function"]["name"] for m in messages for call in m.get("tool_calls") or ()}
    conversation: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "tool":
            result = json.dumps({"name": names.get(message.get("tool_call_id"), ""), "content": message.get("content") or ""},
                                ensure_ascii=False)  # fmt: skip
            text = f"<tool_response>\n{result}\n</tool_response>"
            if conversation and conversation[-1].get("tool_results"):
                conversation[-1]["content"] += "\n" + text
            else:
                conversation.append({"role": "user", "content": text, "tool_results": True})
            continue
        content = message.get("content") or ""
        calls = message.get("tool_calls")
        if calls:
            written = _written_calls(framing, [(c["function"]["name"], c["function"]["arguments"]) for c in calls])
            content = f"{content}\n{written}" if content else written
        conversation.append({"role": message.get("role"), "content": content})
    for message in conversation:
        message.pop("tool_results", None)
    return conversation


def _with_system_text(conversation: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if conversation and conversation[0].get("role") == "system":
        first = conversation[0]
        return [{**first, "content": f"{first['content']}\n\n{text}" if first["content"] else text}, *conversation[1:]]
    return [{"role": "system", "content": text}, *conversation]


def _template_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as tool-aware templates take it: arguments as objects, content never None."""
    shaped = {key: value for key, value in message.items() if value is not None}
    shaped["content"] = message.get("content") or ""
    if message.get("tool_calls"):
        shaped["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _arguments_object(call["function"]["arguments"])}}
            for call in message["tool_calls"]
        ]
    return shaped


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments
