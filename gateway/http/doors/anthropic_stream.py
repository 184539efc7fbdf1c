"""A chat completions stream as Anthropic's Messages events, chunk by chunk.

Each chat chunk becomes the events it implies, written as it arrives::

    first chunk                    message_start (usage so far: none; the total comes in message_delta), ping
    delta.content                  content_block_start (text) once, then content_block_delta text_delta
    delta.tool_calls[i] (new)      content_block_stop of the open block, content_block_start (tool_use)
    delta.tool_calls[i].arguments  content_block_delta input_json_delta with partial_json
    finish_reason                  content_block_stop; the stop reason is kept for message_delta
    usage chunk (include_usage)    kept for message_delta
    [DONE]                         message_delta (stop_reason, stop_sequence, usage), message_stop

Invariant: at most one content block is open, and block indexes count up
from 0 in the order the blocks started, as Anthropic's stream has them.
Events are framed with an ``event:`` line, as Anthropic frames them (its
SDKs skip an event without one); a break mid-stream is an ``event: error``.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.http.doors.anthropic_messages import (
    error_body,
    message_id,
    messages_usage,
    stop_reason_of,
)
from gateway.http.doors.translation import ChatChunkEvents
from providers import UpstreamStream
from providers.errors import OpenAIError


def frame(kind: str, body: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **body}) + b"\n\n"


class MessageEvents(ChatChunkEvents):
    """Writes one chat stream, as it arrives, as the events of one Messages stream (``EventFraming``)."""

    def __init__(self, request: dict[str, Any]) -> None:
        self._request = request
        self._started = False
        self._open: int | None = None  # the index of the open content block
        self._blocks = 0  # content blocks started so far
        self._tool_blocks: dict[int, int] = {}  # a chat tool call's index -> its content block's index
        self._called = False
        self._finished: dict[str, Any] | None = None  # the chunk choice that had the finish_reason

    async def end(self, stream: UpstreamStream) -> bytes:
        """The upstream finished: close the open block and the message, with its usage."""
        out: list[bytes] = []
        self._start(None, out)
        self._close(out)
        choice = self._finished or {}
        stop_reason, stop_sequence = stop_reason_of(choice, self._request, self._called)
        usage = messages_usage(self._usage, stream.usage)
        out.append(frame("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage}))
        out.append(frame("message_stop", {}))
        return b"".join(out)

    def error(self, error: OpenAIError) -> bytes:
        return b"event: error\ndata: " + error_body(error) + b"\n\n"

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open is None or self._open in self._tool_blocks.values():
                self._open_block({"type": "text", "text": ""}, out)
            out.append(frame("content_block_delta", {"index": self._open, "delta": {"type": "text_delta", "text": text}}))
        for call in delta.get("tool_calls") or ():
            self._tool_delta(call, out)
        if choice.get("finish_reason") is not None:
            self._close(out)
            self._finished = choice

    def _tool_delta(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self._tool_blocks:
            self._called = True
            block = {"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "", "input": {}}
            self._open_block(block, out)
            self._tool_blocks[position] = self._blocks - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            index = self._tool_blocks[position]
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(frame("content_block_delta", {"index": index, "delta": delta}))

    def _start(self, chat_id: Any, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        message = {
            "id": message_id(chat_id), "type": "message", "role": "assistant", "model": self._request["model"],
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }  # fmt: skip
        out.append(frame("message_start", {"message": message}))
        out.append(frame("ping", {}))  # as Anthropic's stream has it after message_start

    def _open_block(self, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._open = self._blocks
        self._blocks += 1
        out.append(frame("content_block_start", {"index": self._open, "content_block": block}))

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(frame("content_block_stop", {"index": self._open}))
            self._open = None
