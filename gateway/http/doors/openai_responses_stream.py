"""A chat completions stream as the Responses API's typed events, chunk by chunk.

Each chat chunk becomes the events it implies, written as it arrives::

    first chunk                    response.created, response.in_progress (status in_progress, no output)
    delta.content                  output_item.added (message) and content_part.added once,
                                   then response.output_text.delta
    delta.tool_calls[i] (new)      the open item's closing events, output_item.added (function_call)
    delta.tool_calls[i].arguments  response.function_call_arguments.delta
    finish_reason                  the open item's closing events: output_text.done, content_part.done,
                                   output_item.done (a message); function_call_arguments.done,
                                   output_item.done (a function call)
    [DONE]                         response.completed (response.incomplete when cut by max_output_tokens),
                                   with the whole output and the usage
    a break after the start        error, then response.failed

Every event carries ``sequence_number``, counting from 0, and is framed
with an ``event:`` line as OpenAI frames them. At most one output item is
open at a time; output indexes count up in the order the items started.
The finished response is kept (``store``) before response.completed is sent,
so a client that continues from it at once finds it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.http.doors.openai_responses import (
    error_of,
    finished,
    function_call_item,
    message_item,
    new_id,
    output_logprobs,
    response_object,
    responses_usage,
)
from gateway.http.doors.translation import ChatChunkEvents, Translated
from providers import UpstreamStream
from providers.errors import OpenAIError

Keep = Callable[[dict[str, Any]], Awaitable[None]]


def error_event(error: OpenAIError, sequence_number: int) -> bytes:
    """The ``error`` event that says a stream broke."""
    body = {"type": "error", "sequence_number": sequence_number, "code": error.code, "message": error.message,
            "param": error.param}  # fmt: skip
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


class ResponseEvents(ChatChunkEvents):
    """Writes one chat stream, as it arrives, as the events of one Responses stream (``EventFraming``)."""

    def __init__(self, translated: Translated, keep: Keep | None) -> None:
        self._translated = translated
        self._keep = keep
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # every item started, as it stands
        self._open: dict[str, Any] | None = None  # the item still being written
        self._text: list[str] = []  # the open message's text so far
        self._logprobs: list[dict[str, Any]] = []
        self._calls: dict[int, dict[str, Any]] = {}  # a chat tool call's index -> its function_call item
        self._finish: Any = None

    async def end(self, stream: UpstreamStream) -> bytes:
        out: list[bytes] = []
        self._start(None, out)
        self._close(out)
        status, incomplete = finished(self._finish)
        usage = responses_usage(self._usage, stream.usage)
        response = response_object(self._translated, status, self._output, usage, incomplete=incomplete)
        if self._keep is not None:
            await self._keep(response)
        self._emit(out, "response.completed" if status == "completed" else "response.incomplete", response=response)
        return b"".join(out)

    def error(self, error: OpenAIError) -> bytes:
        out = [error_event(error, self._sequence)]
        self._sequence += 1
        failed = response_object(self._translated, "failed", self._output, None, error=error_of(error))
        self._emit(out, "response.failed", response=failed)
        return b"".join(out)

    def _emit(self, out: list[bytes], kind: str, **fields: Any) -> None:
        body = orjson.dumps({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n")

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._text_delta(text, choice.get("logprobs"), out)
        for call in delta.get("tool_calls") or ():
            self._tool_delta(call, out)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
            self._close(out)

    def _text_delta(self, text: str, logprobs: Any, out: list[bytes]) -> None:
        if self._open is None or self._open["type"] != "message":
            self._open_item(message_item(new_id("msg"), "", "in_progress", []), out)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self._emit(out, "response.content_part.added", **self._at(), content_index=0, part=part)
        wanted = output_logprobs(logprobs) if self._translated.state.logprobs else []
        self._text.append(text)
        self._logprobs += wanted
        self._emit(out, "response.output_text.delta", **self._at(), content_index=0, delta=text, logprobs=wanted)

    def _tool_delta(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self._calls:
            item = function_call_item(new_id("fc"), call.get("id") or new_id("call"), function, "in_progress")
            item["arguments"] = ""
            self._open_item(item, out)
            self._calls[position] = item
        arguments = function.get("arguments")
        item = self._calls[position]
        if isinstance(arguments, str) and arguments and item is self._open:
            item["arguments"] += arguments
            self._emit(out, "response.function_call_arguments.delta", **self._at(), delta=arguments)

    def _start(self, chat_id: Any, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        response = response_object(self._translated, "in_progress", [], None)
        self._emit(out, "response.created", response=response)
        self._emit(out, "response.in_progress", response=response)

    def _at(self) -> dict[str, Any]:
        """The open item's address, as the events about it name it."""
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._output) - 1}

    def _open_item(self, item: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._output.append(item)
        self._open = item
        self._emit(out, "response.output_item.added", output_index=len(self._output) - 1, item=dict(item))

    def _close(self, out: list[bytes]) -> None:
        item = self._open
        if item is None:
            return
        at = self._at()
        if item["type"] == "message":
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": self._logprobs}
            self._emit(out, "response.output_text.done", **at, content_index=0, text=text, logprobs=self._logprobs)
            self._emit(out, "response.content_part.done", **at, content_index=0, part=part)
            item["content"] = [part]
            self._text, self._logprobs = [], []
        else:
            self._emit(out, "response.function_call_arguments.done", **at, name=item["name"], arguments=item["arguments"])
        item["status"] = finished(self._finish)[0] if self._finish is not None else "completed"
        self._emit(out, "response.output_item.done", output_index=at["output_index"], item=item)
        self._open = None
