"""The relay's doors: each URL it answers, the API spoken there, and how that maps onto the router's endpoints.

::

    POST /v1/chat/completions, /v1/completions,   OpenAI's: the body checked and routed as it is,
         /v1/embeddings, /v1/moderations          the upstream's answer and events untouched
    POST /v1/responses                            OpenAI's Responses, routed as chat/completions:
                                                  translated in and out (openai_responses.py,
                                                  openai_responses_stream.py), answers kept for
                                                  previous_response_id (gateway.conversations)
    POST /v1/messages                             Anthropic's Messages, routed as chat/completions:
                                                  translated in and out (anthropic_messages.py,
                                                  anthropic_stream.py), errors in Anthropic's shape
    POST /v1/messages/count_tokens                Anthropic's token count, answered here (token_count.py)

A deployment that speaks a door's API itself (``SpeaksDoor``: the anthropic
provider for Messages, the openai preset for Responses) gets the client's
request untranslated and its answer goes back as it is (``native.py``).

A door is data the relay reads (``Door``): one mechanism serves them all,
so a request through any door is routed, retried, limited and counted the
same way, and labelled in metrics and the ledger by the door's name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import PreviousResponseNotFound
from gateway.http.doors import anthropic_messages, openai_responses
from gateway.http.doors.anthropic_messages import CountTokensRequest, MessagesRequest
from gateway.http.doors.anthropic_stream import MessageEvents
from gateway.http.doors.native import NativeEvents
from gateway.http.doors.openai_responses import ResponsesRequest
from gateway.http.doors.openai_responses_stream import ResponseEvents, error_event
from gateway.http.doors.token_count import count_input_tokens
from gateway.http.doors.translation import Translated, upstream_object
from gateway.http.streaming import EventFraming, OpenAIFraming
from gateway.http.validation import (
    REQUEST_MODELS,
    BodyLimits,
    check_payload,
    decode_body,
    parse_body,
)
from providers import Endpoint, OpenAIError
from providers.wire import Door as DoorName
from providers.wire import Usage, usage_requested

if TYPE_CHECKING:
    from pydantic import BaseModel

    from gateway.conversations import ResponseStore
    from gateway.pricing import Cost
    from gateway.routing.table import ModelTable

logger = logging.getLogger(__name__)

STREAMABLE = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})


@dataclass(frozen=True, slots=True)
class DoorContext:
    """What a door reads and answers one request with, beside its body."""

    limits: BodyLimits
    responses: ResponseStore | None  # where Responses answers are kept; None: nowhere (server.store_responses off)
    owner: str | None  # the key's name: a stored response is its key's only
    # Once routed: what a usage cost on the deployment that answered (None: no price known).
    price: Callable[[Usage], Cost | None] | None = None


@dataclass(frozen=True, slots=True)
class Door:
    """One URL of the relay: how its body is read, its answer and events written, its errors shaped."""

    label: Endpoint | DoorName  # the endpoint label of metrics and the ledger
    endpoint: Endpoint  # what the router is asked for
    request_model: type[BaseModel]  # the body's fields the gateway checks (also the API description's)
    read: Callable[[bytes, DoorContext], Awaitable[Translated]]
    framing: Callable[[Translated, DoorContext], EventFraming]
    # None: the upstream's answer goes out byte for byte.
    answer: Callable[[bytes, Translated, Usage | None, DoorContext], Awaitable[bytes]] | None = None
    error_body: Callable[[OpenAIError], bytes] = OpenAIError.to_json
    # Set for a door the gateway answers itself, without routing (count_tokens).
    answer_here: Callable[[Translated, ModelTable], Awaitable[bytes]] | None = None
    # A deployment that speaks the door's API answered (Routed.native): its answer, its events.
    native_answer: Callable[[bytes, Translated, DoorContext], Awaitable[bytes]] | None = None
    native_framing: Callable[[Translated, DoorContext], EventFraming] | None = None

    @property
    def streams(self) -> bool:
        return self.endpoint in STREAMABLE and self.answer_here is None


def _openai_door(endpoint: Endpoint) -> Door:
    async def read(body: bytes, context: DoorContext) -> Translated:
        payload = parse_body(body, endpoint, context.limits)
        return Translated(payload, payload)

    def framing(translated: Translated, context: DoorContext) -> EventFraming:
        return OpenAIFraming(usage_requested(translated.payload), context.price)

    return Door(endpoint, endpoint, REQUEST_MODELS[endpoint], read, framing)


def _messages_reader(model: type[BaseModel]) -> Callable[[bytes, DoorContext], Awaitable[Translated]]:
    async def read(body: bytes, context: DoorContext) -> Translated:
        request = check_payload(decode_body(body, context.limits), model)
        return anthropic_messages.messages_to_chat(request)

    return read


async def _message_answer(body: bytes, translated: Translated, usage: Usage | None, context: DoorContext) -> bytes:
    return orjson.dumps(anthropic_messages.chat_to_message(upstream_object(body, "answer"), translated.request, usage))


def _message_events(translated: Translated, context: DoorContext) -> EventFraming:
    return MessageEvents(translated.request)


async def _native_message(body: bytes, translated: Translated, context: DoorContext) -> bytes:
    return body


def _native_message_events(translated: Translated, context: DoorContext) -> EventFraming:
    return NativeEvents(lambda error, _: b"event: error\ndata: " + anthropic_messages.error_body(error) + b"\n\n")


async def _read_response_request(body: bytes, context: DoorContext) -> Translated:
    request = check_payload(decode_body(body, context.limits), ResponsesRequest)
    previous = None
    if request.get("previous_response_id") is not None:
        if context.responses is not None:
            previous = await context.responses.get(request["previous_response_id"], context.owner)
        if previous is None:
            raise PreviousResponseNotFound(request["previous_response_id"])
    return openai_responses.responses_to_chat(request, previous)


def _keeper(translated: Translated, context: DoorContext) -> Callable[[dict[str, Any]], Awaitable[None]] | None:
    """How the answer to ``translated`` is kept: None when the client said ``store: false`` (or nothing keeps)."""
    store = context.responses
    if store is None or translated.request.get("store") is False:
        return None

    async def keep(response: dict[str, Any]) -> None:
        try:
            await store.put(openai_responses.stored(translated, response, context.owner))
        except Exception as error:  # the answer matters more than its copy: it still goes out
            logger.warning("response %s was answered but could not be kept (%s): %s",
                           response.get("id"), store.description, error.__class__.__name__)  # fmt: skip

    return keep


async def _response_answer(body: bytes, translated: Translated, usage: Usage | None, context: DoorContext) -> bytes:
    response = openai_responses.chat_to_response(upstream_object(body, "answer"), translated, usage)
    keep = _keeper(translated, context)
    if keep is not None:
        await keep(response)  # before the answer: the client's next turn may name it at once
    return orjson.dumps(response)


def _response_events(translated: Translated, context: DoorContext) -> EventFraming:
    return ResponseEvents(translated, _keeper(translated, context))


async def _native_response(body: bytes, translated: Translated, context: DoorContext) -> bytes:
    keep = _keeper(translated, context)
    if keep is not None:
        await keep(upstream_object(body, "answer"))  # a Response object, as the upstream wrote it
    return body


def _native_response_events(translated: Translated, context: DoorContext) -> EventFraming:
    return NativeEvents(error_event, _keeper(translated, context))


RESPONSES_DOOR = Door(
    DoorName.RESPONSES, Endpoint.CHAT, ResponsesRequest, _read_response_request, _response_events, _response_answer,
    native_answer=_native_response, native_framing=_native_response_events,
)  # fmt: skip
MESSAGES_DOOR = Door(
    DoorName.MESSAGES, Endpoint.CHAT, MessagesRequest, _messages_reader(MessagesRequest),
    _message_events, _message_answer, anthropic_messages.error_body,
    native_answer=_native_message, native_framing=_native_message_events,
)  # fmt: skip
COUNT_TOKENS_DOOR = Door(
    DoorName.MESSAGES, Endpoint.CHAT, CountTokensRequest, _messages_reader(CountTokensRequest),
    _message_events, None, anthropic_messages.error_body, count_input_tokens,
)  # fmt: skip
DOORS: dict[str, Door] = {
    **{f"/v1/{endpoint.value}": _openai_door(endpoint) for endpoint in REQUEST_MODELS},  # audio, images: http/media/
    "/v1/responses": RESPONSES_DOOR,
    "/v1/messages": MESSAGES_DOOR,
    "/v1/messages/count_tokens": COUNT_TOKENS_DOOR,
}


def error_body_for(path: str) -> Callable[[OpenAIError], bytes]:
    """How an error is written at ``path``: the door's shape (Anthropic's under ``/v1/messages/``, the Message
    Batches' URLs too), OpenAI's anywhere else."""
    door = DOORS.get(path) or (MESSAGES_DOOR if path.startswith("/v1/messages/") else None)
    return OpenAIError.to_json if door is None else door.error_body
