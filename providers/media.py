"""Audio and images at an OpenAI-compatible upstream: what goes out, and what an answer used.

The router carries a media request as it carries chat: one payload dict.
A multipart endpoint's payload holds its form fields as strings (a field
sent several times, as a list) and each file as an :class:`Upload`, a
spool the gateway wrote while the client sent it. Every attempt (a retry,
a fallback to another deployment) reads the spool again from its start::

    payload {"model": ..., "file": Upload}  ->  multipart_chunks()  ->  the upstream, 64 KiB at a time
    the answer (JSON, text, audio, events)  ->  media_usage() / MediaStream  ->  Usage in the endpoint's unit

Units, as the providers bill them: a transcription's audio in ``seconds``
(OpenAI's ``usage: {type: duration}``, or ``duration`` in verbose_json;
``usage: {type: tokens}`` for gpt-4o-transcribe is counted as tokens), speech
in ``characters`` of its ``input``, images by the ``images`` answered (with
gpt-image-1's token ``usage`` beside them).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any

import aiohttp
import orjson

from providers.http_upstream import TRANSPORT_ERRORS, release, stream_interrupted
from providers.sse import SSEDecoder
from providers.wire import Endpoint, RequestTimings, Usage

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# The end of the last cue of an SRT or WebVTT transcript ("00:01:02,500 --> 00:01:05,250").
_CUE_END = re.compile(rb"--> (\d+):(\d{2}):(\d{2})[.,](\d{3})")
SECONDS, CHARACTERS, IMAGES = "seconds", "characters", "images"


class Upload:
    """One file of a multipart request, spooled (in memory up to a threshold, then a temporary file).

    The gateway owns the spool and closes it once the request ended; a
    provider only reads it, from its start, once per attempt.
    """

    __slots__ = ("content_type", "filename", "size", "spool")

    def __init__(self, filename: str, content_type: str, spool: IO[bytes], size: int) -> None:
        self.filename = filename
        self.content_type = content_type
        self.spool = spool
        self.size = size

    def chunks(self) -> Iterator[bytes]:
        # Read on the event loop: 64 KiB from a file just written is a page-cache copy, microseconds.
        self.spool.seek(0)
        while chunk := self.spool.read(CHUNK_BYTES):
            yield chunk

    def close(self) -> None:
        self.spool.close()


class MultipartBody:
    """A payload as multipart/form-data: its length known up front, so the upstream gets a Content-Length."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.boundary = f"switchyard-{secrets.token_hex(16)}"
        self._parts: list[tuple[bytes, Upload | bytes]] = []
        for name, value in payload.items():
            for item in value if isinstance(value, list) else [value]:
                self._parts.append((self._head(name, item), item if isinstance(item, Upload) else _text(item)))
        self._tail = f"--{self.boundary}--\r\n".encode()
        self.size = len(self._tail) + sum(
            len(head) + (part.size if isinstance(part, Upload) else len(part)) + 2 for head, part in self._parts
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": f"multipart/form-data; boundary={self.boundary}", "content-length": str(self.size)}

    def _head(self, name: str, value: object) -> bytes:
        disposition = f'form-data; name="{_quoted(name)}"'
        if isinstance(value, Upload):
            disposition += f'; filename="{_quoted(value.filename)}"'
            return f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {value.content_type}\r\n\r\n".encode()
        return f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for head, part in self._parts:
            yield head
            if isinstance(part, Upload):
                for chunk in part.chunks():
                    yield chunk
            else:
                yield part
            yield b"\r\n"
        yield self._tail


def _text(value: object) -> bytes:
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode()


def _quoted(text: str) -> str:
    """A name or filename inside a quoted header parameter (WHATWG's form encoding: quote and newlines escaped)."""
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def is_multipart(payload: dict[str, Any]) -> bool:
    """The payload carries a file: a field's value, or one of a field's values (``image[]`` sent twice)."""
    return any(isinstance(value, Upload) or (isinstance(value, list) and any(isinstance(item, Upload) for item in value))
               for value in payload.values())  # fmt: skip


def requested_usage(endpoint: Endpoint, payload: dict[str, Any]) -> Usage | None:
    """What a request will be billed whatever its answer says: speech, by the characters of its ``input``."""
    if endpoint is Endpoint.SPEECH and isinstance(text := payload.get("input"), str):
        return Usage(0, 0, unit=CHARACTERS, units=len(text))
    return None


def media_usage(endpoint: Endpoint, payload: dict[str, Any], body: bytes, content_type: str) -> Usage | None:
    """What a whole media answer used, in its endpoint's unit; None when the answer does not say."""
    known = requested_usage(endpoint, payload)
    if known is not None:
        return known
    if not content_type.startswith("application/json"):
        return _cue_usage(body) if endpoint in (Endpoint.TRANSCRIPTIONS, Endpoint.TRANSLATIONS) else None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    if endpoint in (Endpoint.IMAGES, Endpoint.IMAGE_EDITS):
        data = answer.get("data")
        made = len(data) if isinstance(data, list) else 0
        tokens = _tokens(answer.get("usage"))
        return Usage(*(tokens or (0, 0)), unit=IMAGES, units=made)
    return transcript_usage(answer)


def transcript_usage(answer: dict[str, Any]) -> Usage | None:
    """A transcription's usage: OpenAI's ``usage`` (duration or tokens), else verbose_json's ``duration``."""
    usage = answer.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "duration" and _number(usage.get("seconds")):
        return Usage(0, 0, unit=SECONDS, units=float(usage["seconds"]))
    if (tokens := _tokens(usage)) is not None:
        return Usage(*tokens)
    if _number(answer.get("duration")):
        return Usage(0, 0, unit=SECONDS, units=float(answer["duration"]))
    return None


def _tokens(usage: object) -> tuple[int, int] | None:
    """(input, output) tokens of a media usage object (``input_tokens``/``output_tokens``), if it has them."""
    if not isinstance(usage, dict):
        return None
    given, made = usage.get("input_tokens"), usage.get("output_tokens", 0)
    if isinstance(given, int) and isinstance(made, int) and given >= 0 and made >= 0:
        return given, made
    return None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _cue_usage(body: bytes) -> Usage | None:
    """An SRT or WebVTT transcript's length: the end of its last cue, estimated (trailing silence is not in it)."""
    ends = _CUE_END.findall(body)
    if not ends:
        return None
    hours, minutes, seconds, millis = (int(part) for part in ends[-1])
    return Usage(0, 0, estimated=True, unit=SECONDS, units=hours * 3600 + minutes * 60 + seconds + millis / 1000)


class MediaStream:
    """A media answer relayed as it arrives (speech audio, a transcription's events); see ``UpstreamStream``.

    Each read from the upstream is one item, ``[bytes]``, passed on byte for
    byte. ``events``: the answer is an event stream, watched for the events
    that carry usage: the transcript's last (``transcript.text.done``), and
    each finished image (``image_generation.completed``, ``image_edit.completed``).
    """

    timings: tuple[RequestTimings, ...] = ()
    usage_reported = True  # a media stream has no usage chunk to add

    def __init__(
        self, response: aiohttp.ClientResponse, provider_name: str, headers: dict[str, str], usage: Usage | None,
        events: bool,
    ) -> None:  # fmt: skip
        self.headers = headers
        self._response = response
        self._provider_name = provider_name
        self._usage = usage
        self._decoder = SSEDecoder() if events else None
        self._finished = False

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def usage_chunk(self) -> bytes | None:
        return None

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        try:
            async for chunk in self._response.content.iter_any():
                if self._decoder is not None:
                    self._watch(self._decoder.feed(chunk))
                yield [chunk]
        except TRANSPORT_ERRORS as exc:
            raise stream_interrupted(self._provider_name, exc) from None
        self._finished = True  # the body ended whole: aiohttp raises on one cut short of its length or chunks

    def _watch(self, events: list[bytes]) -> None:
        for data in events:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # relayed as it is: the client's SDK judges it
            if not isinstance(event, dict):
                continue
            kind = event.get("type")
            if kind == "transcript.text.done":
                self._usage = transcript_usage(event) or self._usage
            elif isinstance(kind, str) and kind.startswith("image_") and kind.endswith(".completed"):
                # One image finished (image_generation.completed, image_edit.completed), with its tokens.
                given, made = _tokens(event.get("usage")) or (0, 0)
                held = self._usage or Usage(0, 0, unit=IMAGES)
                self._usage = Usage(held.prompt_tokens + given, held.completion_tokens + made, unit=IMAGES,
                                    units=held.units + 1)  # fmt: skip

    async def aclose(self) -> None:
        await release(self._response, self._finished)
