"""A streamed answer folded into one ``chat.completion``, and a kept one streamed again.

Folding reads each ``chat.completion.chunk`` as OpenAI's streaming
reference describes it: per choice, ``delta.content`` (and ``refusal``,
``reasoning_content``) appended, ``tool_calls`` merged by their ``index``
(the id, type and name from the first piece, ``arguments`` appended),
``logprobs.content`` appended, the last ``finish_reason`` kept; a chunk
with no choices and a ``usage`` carries the usage. Replay writes the
answer back as few chunks as the format allows: per choice its role and
whole content, then its finish; the usage chunk when the client asked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from providers.wire import RequestTimings, Usage

_TEXT_FIELDS = ("content", "refusal", "reasoning_content")


class ChunkFolder:
    """Reads a chat stream's event payloads and gives the answer they add up to."""

    __slots__ = ("_broken", "_choices", "_head", "_usage")

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None
        self._broken = False  # a chunk that was not a chat chunk: the answer is not kept

    def read(self, events: list[bytes]) -> None:
        for data in events:
            try:
                chunk = orjson.loads(data)
                self._fold(chunk)
            except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError, ValueError):
                self._broken = True

    def completion(self) -> dict[str, Any] | None:
        """The ``chat.completion`` the stream added up to; None when a chunk could not be read, or none came."""
        if self._broken or not self._choices:
            return None
        choices = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            message = {"role": choice["role"], **{name: "".join(parts) for name, parts in choice["text"].items()}}
            message.setdefault("content", None)
            message.setdefault("refusal", None)  # the spec requires it, null when the model did not refuse
            if choice["tool_calls"]:
                message["tool_calls"] = [choice["tool_calls"][i] for i in sorted(choice["tool_calls"])]
            folded: dict[str, Any] = {"index": index, "message": message, "finish_reason": choice["finish_reason"]}
            folded["logprobs"] = {"content": choice["logprobs"]} if choice["logprobs"] is not None else None
            choices.append(folded)
        answer = {**self._head, "object": "chat.completion", "choices": choices}
        if self._usage is not None:
            answer["usage"] = self._usage
        return answer

    def _fold(self, chunk: dict[str, Any]) -> None:
        if not self._head:
            self._head = {name: chunk[name] for name in ("id", "created", "model", "system_fingerprint") if name in chunk}
        if chunk.get("usage") and not chunk.get("choices"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            held = self._choices.setdefault(
                int(choice["index"]),
                {"role": "assistant", "text": {}, "tool_calls": {}, "logprobs": None, "finish_reason": None},
            )
            delta = choice.get("delta") or {}
            if delta.get("role"):
                held["role"] = delta["role"]
            for name in _TEXT_FIELDS:
                if isinstance(delta.get(name), str):
                    held["text"].setdefault(name, []).append(delta[name])
            for call in delta.get("tool_calls") or ():
                _merge_call(held["tool_calls"], call)
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                held["logprobs"] = (held["logprobs"] or []) + logprobs["content"]
            if choice.get("finish_reason"):
                held["finish_reason"] = choice["finish_reason"]


def _merge_call(calls: dict[int, dict[str, Any]], piece: dict[str, Any]) -> None:
    index = int(piece.get("index", len(calls)))
    function = piece.get("function") or {}
    call = calls.get(index)
    if call is None:
        calls[index] = {"id": piece.get("id"), "type": piece.get("type", "function"),
                        "function": {"name": function.get("name", ""), "arguments": function.get("arguments") or ""}}  # fmt: skip
        return
    call["function"]["arguments"] += function.get("arguments") or ""
    if function.get("name"):
        call["function"]["name"] = function["name"]


def replay_chunks(answer: dict[str, Any]) -> list[bytes]:
    """``answer`` (a ``chat.completion``) as the chunks of a stream, without the usage chunk."""
    head = {"id": answer.get("id"), "object": "chat.completion.chunk", "created": answer.get("created"),
            "model": answer.get("model")}  # fmt: skip
    if answer.get("system_fingerprint") is not None:
        head["system_fingerprint"] = answer["system_fingerprint"]
    chunks = []
    for choice in answer.get("choices") or ():
        message = dict(choice.get("message") or {})
        calls = message.pop("tool_calls", None)
        delta = {name: value for name, value in message.items() if value is not None}
        if calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
        first = {"index": choice["index"], "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}
        last = {"index": choice["index"], "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}
        chunks += [orjson.dumps({**head, "choices": [first]}), orjson.dumps({**head, "choices": [last]})]
    return chunks


class ReplayedStream:
    """A kept answer as an ``UpstreamStream``: its chunks in one read, then the end."""

    def __init__(self, answer: dict[str, Any], usage: Usage | None, include_usage: bool) -> None:
        self.headers: dict[str, str] = {}
        self._answer = answer
        self._usage = usage
        self._include_usage = include_usage

    @property
    def usage(self) -> Usage | None:
        return self._usage

    @property
    def usage_reported(self) -> bool:
        return False

    @property
    def timings(self) -> tuple[RequestTimings, ...]:
        return ()

    def usage_chunk(self) -> bytes | None:
        usage = self._answer.get("usage")
        if not self._include_usage or usage is None:
            return None
        head = {name: self._answer.get(name) for name in ("id", "created", "model")}
        return orjson.dumps({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        yield replay_chunks(self._answer)

    async def aclose(self) -> None:
        return None


class FoldingStream:
    """An upstream stream passed through as it is, folded on the way; ``on_end(answer, usage)`` once it finished whole."""

    def __init__(self, upstream: Any, on_end: Callable[[dict[str, Any], Usage | None], None]) -> None:
        self._upstream = upstream
        self.headers: dict[str, str] = upstream.headers
        self._on_end = on_end
        self._folder = ChunkFolder()
        self._whole = False

    @property
    def usage(self) -> Usage | None:
        return self._upstream.usage

    @property
    def usage_reported(self) -> bool:
        return bool(self._upstream.usage_reported)

    @property
    def timings(self) -> tuple[RequestTimings, ...]:
        return tuple(self._upstream.timings)

    def usage_chunk(self) -> bytes | None:
        return self._upstream.usage_chunk()  # type: ignore[no-any-return]

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        async for events in self._upstream:
            self._folder.read(events)
            yield events
        self._whole = True  # only once the upstream sent [DONE]: a stream that broke or was left is never kept

    async def aclose(self) -> None:
        await self._upstream.aclose()  # an estimated usage is final from here
        answer = self._folder.completion() if self._whole else None
        if answer is not None:
            self._on_end(answer, self._upstream.usage)
            self._whole = False
