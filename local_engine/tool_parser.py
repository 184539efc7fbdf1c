"""Tool calls read back out of a model's text, whole or as it streams.

One parser serves every format (``tool_calls.FRAMINGS``): the text before the
format's trigger (``<tool_call>``, ``[TOOL_CALLS]``) is content; after it,
each JSON object is one call and everything between objects (closing tags,
separators, brackets) is framing, skipped. Llama 3's JSON format has no
trigger: an output whose first character is ``{`` is calls, any other output
is content. Fed deltas, it emits OpenAI's stream shape::

    ContentDelta("Let me check. ")
    ToolCallDelta(index=0, id="call_<24 hex>", name="get_weather", arguments="")   the header, once
    ToolCallDelta(index=0, arguments='{"city": ')                                    then fragments
    ToolCallDelta(index=0, arguments='"Paris"}')

A call's fragments join into its ``arguments`` exactly as the model wrote
them (constrained decoding makes that valid JSON); a whole output parsed at
once gives the same calls (``parse_tool_calls``). A call whose object never
closes (the output was cut) or is not JSON makes the whole output content,
as vLLM's parsers do.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

# The name first, as constrained decoding writes it (the grammar's schema lists it first): its header can go
# out before the arguments are written. An object in another order is sent whole once it closes.
_NAME = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGUMENTS_KEY = re.compile(r'\s*,\s*"(?:arguments|parameters)"\s*:')
_PYTHON_TAG = "<|python_tag|>"  # Llama 3.1's marker before a call, when special tokens are kept


def new_call_id() -> str:
    """OpenAI's shape: ``call_`` and 24 characters."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object's text

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A call's header (``id`` and ``name`` set, ``arguments`` empty) or a fragment of its arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def as_openai(self) -> dict[str, Any]:
        if self.id is not None:
            return {"index": self.index, "id": self.id, "type": "function",
                    "function": {"name": self.name, "arguments": self.arguments}}  # fmt: skip
        return {"index": self.index, "function": {"arguments": self.arguments}}


Delta = ContentDelta | ToolCallDelta


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    content: str | None  # None when the output was only calls
    tool_calls: tuple[ToolCall, ...]


@dataclass(slots=True)
class _Call:
    id: str
    name: str | None = None
    arguments_sent: int = 0  # characters of the arguments value sent so far
    fragments: list[str] = field(default_factory=list)


class ToolCallParser:
    """Incremental: ``feed`` each delta of text, then ``finish``; each returns the deltas it can now send.

    Content that might be the start of the trigger is held back until the next delta settles it.
    """

    def __init__(self, trigger: str | None) -> None:
        self._trigger = trigger
        self._buffer = ""  # text not yet turned into deltas
        self._mode = "content" if trigger else "start"  # start: llama3, undecided until the first character
        self._call: _Call | None = None  # the object being read
        self.calls: list[_Call] = []
        self.content: list[str] = []
        self.broken = False  # an object closed that is not a call, or the output ended inside one

    def feed(self, text: str) -> list[Delta]:
        self._buffer += text
        deltas: list[Delta] = []
        while self._step(deltas):
            pass
        return deltas

    def finish(self) -> list[Delta]:
        deltas: list[Delta] = []
        if self._mode in ("content", "start") and self._buffer:
            deltas.append(self._content(self._buffer))  # a held-back partial trigger was content after all
        elif self._call is not None:
            self.broken = True  # cut inside a call: what was sent stays sent
        self._buffer = ""
        return deltas

    def result(self, text: str) -> ParsedOutput:
        """The whole output's content and calls (``text`` is what was fed); all content if a call is broken."""
        calls = tuple(ToolCall(call.id, call.name or "", "".join(call.fragments)) for call in self.calls)
        if self.broken or not calls or not all(_is_json_object(call.arguments) for call in calls):
            return ParsedOutput(text, ())
        content = "".join(self.content)
        return ParsedOutput(content if content.strip() else None, calls)

    def _step(self, deltas: list[Delta]) -> bool:
        """One move on the buffer; False when it needs more text."""
        if self._mode == "start":
            stripped = self._buffer.lstrip()
            if not stripped or _PYTHON_TAG.startswith(stripped):
                return False
            if stripped.startswith(_PYTHON_TAG):
                stripped = stripped[len(_PYTHON_TAG) :].lstrip()
                if not stripped:
                    return False
            self._mode = "calls" if stripped.startswith("{") else "content"
            if self._mode == "calls":
                self._buffer = stripped
            return True
        if self._mode == "content":
            return self._step_content(deltas)
        return self._step_calls(deltas)

    def _step_content(self, deltas: list[Delta]) -> bool:
        if self._trigger is None:
            if self._buffer:
                deltas.append(self._content(self._buffer))
                self._buffer = ""
            return False
        found = self._buffer.find(self._trigger)
        if found >= 0:
            if found:
                deltas.append(self._content(self._buffer[:found]))
            self._buffer = self._buffer[found + len(self._trigger) :]
            self._mode = "calls"
            return True
        keep = _partial_suffix(self._buffer, self._trigger)
        if len(self._buffer) > keep:
            deltas.append(self._content(self._buffer[: len(self._buffer) - keep]))
            self._buffer = self._buffer[len(self._buffer) - keep :]
        return False

    def _step_calls(self, deltas: list[Delta]) -> bool:
        if self._call is None:
            start = self._buffer.find("{")
            if start < 0:
                self._buffer = ""  # framing between calls: tags, separators, brackets
                return False
            self._buffer = self._buffer[start:]
            self._call = _Call(new_call_id())
        call, text = self._call, self._buffer
        end = value_end(text, 0)
        obj = text if end is None else text[:end]
        if call.name is None:
            named = _NAME.match(obj)
            if named:
                call.name = json.loads(f'"{named.group(1)}"')
                deltas.append(ToolCallDelta(len(self.calls), id=call.id, name=call.name))
        if call.name is not None:
            self._stream_arguments(call, obj, end is not None, deltas)
        if end is None:
            return False
        # Never streamed (written in another order, or without arguments): sent whole, if it is a call.
        if not call.fragments and not self._whole_object(call, obj, deltas):
            self.broken = True
        else:
            self.calls.append(call)
        self._buffer = text[end:]
        self._call = None
        return True

    def _stream_arguments(self, call: _Call, obj: str, closed: bool, deltas: list[Delta]) -> None:
        """Send what is new of the arguments value: from the first character after its key, to its end."""
        named = _NAME.match(obj)
        assert named is not None
        key = _ARGUMENTS_KEY.match(obj, named.end())
        if key is None:
            return
        start = key.end()
        while start < len(obj) and obj[start].isspace():
            start += 1
        if start == len(obj):
            return
        end = value_end(obj, start)
        if end is None:
            if closed:
                return  # the object closed around a value that never did: not JSON, left to _whole_object
            end = len(obj)
            if obj[start] not in '{["':
                return  # a number or a literal: sent once it ends
        fragment = obj[start + call.arguments_sent : end]
        if fragment:
            call.arguments_sent += len(fragment)
            call.fragments.append(fragment)
            deltas.append(ToolCallDelta(len(self.calls), arguments=fragment))

    def _whole_object(self, call: _Call, obj: str, deltas: list[Delta]) -> bool:
        """A closed object not written name first: its call sent in one go. False if it is no call."""
        try:
            value = json.loads(obj)
        except json.JSONDecodeError:
            return False
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return False
        arguments = value.get("arguments", value.get("parameters", {}))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        if call.name is None:
            call.name = value["name"]
            deltas.append(ToolCallDelta(len(self.calls), id=call.id, name=call.name))
        if not call.fragments:
            call.fragments.append(text)
            deltas.append(ToolCallDelta(len(self.calls), arguments=text))
        return True

    def _content(self, text: str) -> ContentDelta:
        self.content.append(text)
        return ContentDelta(text)


def parse_tool_calls(text: str, trigger: str | None) -> ParsedOutput:
    """A finished output's content and calls, as the streaming parser would have sent them."""
    parser = ToolCallParser(trigger)
    parser.feed(text)
    parser.finish()
    return parser.result(text)


def value_end(text: str, start: int) -> int | None:
    """Where the JSON value that begins at ``text[start]`` ends (one past it), or None if it has not yet.

    Only brackets and strings are tracked: it finds the end, it does not validate. A number or a literal
    ends at the first character that cannot continue it.
    """
    first = text[start]
    if first not in '{["':
        for index in range(start, len(text)):
            if text[index] in ",}] \t\r\n":
                return index
        return None
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if depth == 0:
                    return index + 1
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def _partial_suffix(text: str, trigger: str) -> int:
    """The length of the longest end of ``text`` that begins ``trigger`` (held back: it may become it)."""
    for length in range(min(len(text), len(trigger) - 1), 0, -1):
        if text.endswith(trigger[:length]):
            return length
    return 0


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False
