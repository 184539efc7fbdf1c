"""The relay's doors: each URL it answers, the API spoken there, and how that maps onto the router's endpoints.

::

    POST /v1/chat/completions, /v1/completions,   OpenAI's: the body checked and routed as it is,
         /v1/embeddings, /v1/moderations          the upstream's answer and events untouched
    POST /v1/messages                             Anthropic's Messages, routed as chat/completions:
                                                  translated in and out (anthropic_messages.py,
                                                  anthropic_stream.py), errors in Anthropic's shape
    POST /v1/messages/count_tokens                Anthropic's token count, answered here (token_count.py)

A door is data the relay reads (``Door``): one mechanism serves them all,
so a request through any door is routed, retried, limited and counted the
same way, and labelled in metrics and the ledger by the door's name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.http.doors import anthropic_messages
from gateway.http.doors.anthropic_messages import (
    CountTokensRequest,
    MessagesRequest,
    PolicyOf,
    Translated,
)
from gateway.http.doors.anthropic_stream import MessageEvents
from gateway.http.doors.token_count import count_input_tokens
from gateway.http.streaming import EventFraming, OpenAIFraming
from gateway.http.validation import (
    REQUEST_MODELS,
    BodyLimits,
    check_payload,
    decode_body,
    parse_body,
)
from providers import Endpoint, OpenAIError
from providers.errors import UpstreamProtocolError
from providers.wire import Door as DoorName
from providers.wire import Usage, usage_requested

if TYPE_CHECKING:
    from pydantic import BaseModel

    from gateway.routing.table import ModelTable

STREAMABLE = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})


@dataclass(frozen=True, slots=True)
class Door:
    """One URL of the relay: how its body is read, its answer and events written, its errors shaped."""

    label: Endpoint | DoorName  # the endpoint label of metrics and the ledger
    endpoint: Endpoint  # what the router is asked for
    request_model: type[BaseModel]  # the body's fields the gateway checks (also the API description's)
    read: Callable[[bytes, BodyLimits, PolicyOf], Translated]
    framing: Callable[[Translated], EventFraming]
    # None: the upstream's answer goes out byte for byte.
    answer: Callable[[bytes, Translated, Usage | None], bytes] | None = None
    error_body: Callable[[OpenAIError], bytes] = OpenAIError.to_json
    # Set for a door the gateway answers itself, without routing (count_tokens).
    answer_here: Callable[[Translated, ModelTable], Awaitable[bytes]] | None = None

    @property
    def streams(self) -> bool:
        return self.endpoint in STREAMABLE and self.answer_here is None


def _openai_door(endpoint: Endpoint) -> Door:
    def read(body: bytes, limits: BodyLimits, policy_of: PolicyOf) -> Translated:
        payload = parse_body(body, endpoint, limits)
        return Translated(payload, payload)

    return Door(endpoint, endpoint, REQUEST_MODELS[endpoint], read, lambda t: OpenAIFraming(usage_requested(t.payload)))


def _messages_reader(model: type[BaseModel]) -> Callable[[bytes, BodyLimits, PolicyOf], Translated]:
    def read(body: bytes, limits: BodyLimits, policy_of: PolicyOf) -> Translated:
        request = check_payload(decode_body(body, limits), model)
        return anthropic_messages.messages_to_chat(request, policy_of(request["model"]))

    return read


def _message_answer(body: bytes, translated: Translated, usage: Usage | None) -> bytes:
    try:
        answer: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("the upstream's chat answer is not JSON") from None
    return orjson.dumps(anthropic_messages.chat_to_message(answer, translated.request, usage))


MESSAGES_DOOR = Door(
    DoorName.MESSAGES, Endpoint.CHAT, MessagesRequest, _messages_reader(MessagesRequest),
    lambda t: MessageEvents(t.request), _message_answer, anthropic_messages.error_body,
)  # fmt: skip
COUNT_TOKENS_DOOR = Door(
    DoorName.MESSAGES, Endpoint.CHAT, CountTokensRequest, _messages_reader(CountTokensRequest),
    lambda t: MessageEvents(t.request), None, anthropic_messages.error_body, count_input_tokens,
)  # fmt: skip
DOORS: dict[str, Door] = {
    **{f"/v1/{endpoint.value}": _openai_door(endpoint) for endpoint in Endpoint},
    "/v1/messages": MESSAGES_DOOR,
    "/v1/messages/count_tokens": COUNT_TOKENS_DOOR,
}


def error_body_for(path: str) -> Callable[[OpenAIError], bytes]:
    """How an error is written at ``path``: the door's shape, OpenAI's anywhere else."""
    door = DOORS.get(path)
    return OpenAIError.to_json if door is None else door.error_body
