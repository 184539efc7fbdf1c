"""What a request's output must match: vLLM's ``StructuredOutputsParams``.

Exactly one constraint is given::

    json            a JSON schema (a dict, or its text)
    json_object     any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)
    regex           a regular expression the whole output matches (Rust regex syntax)
    choice          one of these strings
    grammar         a context-free grammar: Lark in llguidance's dialect, or GBNF as llama.cpp writes it

The grammar is compiled by llguidance (local_engine/grammar.py) when the
request is added, so a constraint that cannot be compiled is an
``InvalidInput`` naming it before the request joins a batch; here only the
shape is checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput

PARAM = "structured_outputs"
_KINDS = ("json", "json_object", "regex", "choice", "grammar")
# Longer texts are refused before compiling: a grammar is compiled on the tokenizer thread, per request.
MAX_CONSTRAINT_CHARS = 200_000
# Between JSON tokens: nothing, one space, or a newline and up to 8 spaces or tabs of indentation. Compact,
# spaced and pretty-printed JSON all fit; padding does not (a weak model given any whitespace pads until max_tokens).
WHITESPACE = r"\x20|\n[\x20\x09]{0,8}"


@dataclass(frozen=True, slots=True)
class StructuredOutputsParams:
    json: dict[str, Any] | str | None = None
    json_object: bool | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    # vLLM's: no whitespace between JSON tokens (the default lets the model put it where JSON allows).
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        given = [kind for kind in _KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise InvalidInput(f"structured_outputs takes exactly one of {', '.join(_KINDS)}; got {found}.", param=PARAM)
        kind = given[0]
        value = getattr(self, kind)
        if kind == "json" and not isinstance(value, (dict, str)):
            raise InvalidInput("structured_outputs.json must be a JSON schema (an object, or its text).", param=PARAM)
        if kind == "json_object" and value is not True:
            raise InvalidInput("structured_outputs.json_object must be true.", param=PARAM)
        if kind in ("regex", "grammar") and not (isinstance(value, str) and value):
            raise InvalidInput(f"structured_outputs.{kind} must be a non-empty string.", param=PARAM)
        if kind == "choice":
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
                raise InvalidInput("structured_outputs.choice must be a non-empty list of strings.", param=PARAM)
            if not all(isinstance(item, str) and item for item in value):
                raise InvalidInput("structured_outputs.choice must hold non-empty strings only.", param=PARAM)
            object.__setattr__(self, "choice", tuple(value))
        if not isinstance(self.disable_any_whitespace, bool):
            raise InvalidInput("structured_outputs.disable_any_whitespace must be a boolean.", param=PARAM)
        if len(self.source()[1]) > MAX_CONSTRAINT_CHARS:
            raise InvalidInput(f"structured_outputs.{kind} is longer than {MAX_CONSTRAINT_CHARS} characters.", param=PARAM)

    @property
    def kind(self) -> str:
        return next(kind for kind in _KINDS if getattr(self, kind) not in (None, False))

    def source(self) -> tuple[str, str]:
        """(llguidance's format name, the text it compiles): also the key of the compiled-grammar cache."""
        kind = self.kind
        if kind == "json":
            # Never sort_keys: llguidance writes properties in the schema's order, and clients rely on it
            # (a `reasoning` key before the `answer`), as OpenAI's structured outputs keep it.
            text = self.json if isinstance(self.json, str) else json.dumps(self.json)
            return "json", _with_whitespace_option(text, self.disable_any_whitespace)
        if kind == "json_object":
            return "json", _with_whitespace_option('{"type": "object"}', self.disable_any_whitespace)
        if kind == "choice":
            return "choice", json.dumps(list(self.choice or ()))
        if kind == "regex":
            return "regex", self.regex or ""
        return "grammar", self.grammar or ""

    @classmethod
    def from_dict(cls, value: object) -> StructuredOutputsParams:
        """From the JSON a client sends (``extra_body={"structured_outputs": {...}}``): unknown keys are named."""
        if isinstance(value, StructuredOutputsParams):
            return value
        if not isinstance(value, dict):
            raise InvalidInput("structured_outputs must be an object.", param=PARAM)
        known = {*_KINDS, "disable_any_whitespace"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidInput(
                f"structured_outputs takes {', '.join(sorted(known))}; unknown: {', '.join(unknown)}.", param=PARAM
            )
        return cls(**value)


def _with_whitespace_option(schema_text: str, compact: bool) -> str:
    """A JSON schema with llguidance's ``x-guidance`` options: whitespace as the request wants it."""
    try:
        schema = json.loads(schema_text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"structured_outputs.json is not valid JSON: {error}.", param=PARAM) from None
    if not isinstance(schema, dict):
        raise InvalidInput("structured_outputs.json must be a JSON object (a schema).", param=PARAM)
    # disable_any_whitespace: compact JSON; else WHITESPACE. A schema's own x-guidance options win.
    options: dict[str, Any] = {"whitespace_flexible": False} if compact else {"whitespace_pattern": WHITESPACE}
    return json.dumps({**schema, "x-guidance": {**options, **schema.get("x-guidance", {})}})
