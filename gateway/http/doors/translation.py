"""What every translating door shares: the translated request, and what a translation leaves out.

A door that speaks another API (Anthropic's Messages, OpenAI's Responses)
reads its request into the chat completions payload the router takes
(``Translated.payload``), keeping the client's own form beside it
(``NativeForm``) for a deployment that speaks that API. A field with no
place in chat completions is noted (``Losses``), not refused here: whether
it is lost depends on the deployment the router picks. Sent translated, it
is a 400 naming it, or, when the model's ``unsupported_params`` is ``drop``,
left out and named in ``x-switchyard-dropped-params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.http.validation import shown_key
from gateway.routing.router import Lost, NativeForm
from providers.errors import UpstreamProtocolError

_WHY = "has no equivalent in chat completions"


@dataclass(frozen=True, slots=True)
class Translated:
    """A request as the router takes it (``payload``), the client's own (``request``), and its native form.

    ``state``: what the door's answer needs beyond the request (Responses: the
    response's id and the conversation it continues); None for the others.
    """

    payload: dict[str, Any]
    request: dict[str, Any]
    native: NativeForm | None = None
    state: Any = None

    @property
    def dropped(self) -> tuple[str, ...]:
        """The fields the translation leaves out, as x-switchyard-dropped-params names them."""
        if self.native is None:
            return ()
        # A client's key may hold any character, a header value may not.
        return tuple("".join(c if "!" <= c <= "~" and c != "," else "?" for c in lost.param) for lost in self.native.lost)


class Losses:
    """What a translation leaves out, as (param, why), in the order met."""

    def __init__(self) -> None:
        self.lost: list[Lost] = []

    def __call__(self, param: str, why: str = _WHY, *, droppable: bool = True) -> None:
        self.lost.append(Lost(shown_key(param), why, droppable))  # a client's key: cut short if long


def string_field(value: dict[str, Any], name: str, where: str) -> str:
    """``value[name]``, which must be a string: a 400 naming ``where.name`` otherwise."""
    found = value.get(name)
    if not isinstance(found, str):
        param = f"{where}.{name}" if where else name
        if found is None:
            raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
        raise InvalidRequest(f"Invalid value for '{param}': it must be a string.", param=param)
    return found


def upstream_object(data: bytes, what: str) -> dict[str, Any]:
    """An upstream's answer or event, which must be a JSON object: a 502 (UpstreamProtocolError) otherwise."""
    try:
        found = orjson.loads(data)
    except orjson.JSONDecodeError:
        found = None
    if not isinstance(found, dict):
        raise UpstreamProtocolError(f"the upstream's {what} is not a JSON object")
    return found


class ChatChunkEvents:
    """What every translating stream shares: each chat chunk read as the object it must be, its usage kept,
    and its first choice handed to ``_choice`` once the stream has started (``_start``)."""

    _usage: Any = None  # the usage chunk's usage (include_usage), once it came

    def events(self, chunks: list[bytes]) -> bytes:
        out: list[bytes] = []
        for data in chunks:
            chunk = upstream_object(data, "stream event")
            self._start(chunk.get("id"), out)
            if chunk.get("usage") is not None:
                self._usage = chunk["usage"]
            choices = chunk.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                self._choice(choices[0], out)  # else the usage chunk, or a keep-alive
        return b"".join(out)

    def _start(self, chat_id: Any, out: list[bytes]) -> None:
        """Append the stream's first events, once."""
        raise NotImplementedError

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        """Append the events a chunk's choice implies."""
        raise NotImplementedError
