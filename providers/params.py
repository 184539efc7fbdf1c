"""A provider's parameter map: what it does with each OpenAI request parameter.

A parameter a preset does not mention is forwarded as the client sent it.
The others follow one rule each::

    Translate("max_tokens")                  send it under another name
    Translate("tool_choice", {"required": "any"})   ... or with other values
    Unsupported()                            the provider does not take it
    Unsupported(allowed=(1,))                ... except for these values (Groq's ``n``)

An unsupported parameter is dropped or rejected as the model's
``unsupported_params`` says: dropped ones are named in the response header
``x-switchyard-dropped-params`` (``Header.DROPPED_PARAMS``, by
:func:`dropped_header`); a rejected one is an ``UnsupportedParameter``, a
400 naming the parameter and the provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from providers.base import UnsupportedPolicy
from providers.errors import UnsupportedParameter
from providers.wire import Header


@dataclass(frozen=True, slots=True)
class Translate:
    to: str
    values: Mapping[Any, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unsupported:
    allowed: tuple[Any, ...] = ()  # values the provider does take (e.g. the default)


Rule = Translate | Unsupported


def dropped_header(dropped: list[str]) -> dict[str, str]:
    """The response header that names the parameters dropped from a request; none when none were."""
    return {Header.DROPPED_PARAMS: ",".join(dropped)} if dropped else {}


def adapt(
    payload: dict[str, Any], rules: Mapping[str, Rule], policy: UnsupportedPolicy, provider: str
) -> tuple[dict[str, Any], list[str]]:
    """``payload`` as the provider takes it, and the names of the parameters dropped from it.

    Only the rules are walked (a handful), not the payload; ``payload`` itself
    is not changed: a copy is made when a rule applies.
    """
    adapted = payload
    dropped: list[str] = []
    for name, rule in rules.items():
        if name not in payload:
            continue
        value = payload[name]
        if isinstance(rule, Unsupported):
            if value in rule.allowed:
                continue
            if value is not None:  # an explicit null is removed without a word: it asked for nothing
                if policy == "reject":
                    raise UnsupportedParameter(name, provider)
                dropped.append(name)
        if adapted is payload:
            adapted = dict(payload)
        del adapted[name]
        if isinstance(rule, Translate) and (rule.to == name or rule.to not in payload):
            adapted[rule.to] = rule.values.get(value, value) if _hashable(value) else value
    return adapted, dropped


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None
