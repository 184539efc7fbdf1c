"""A media request's body, read as it arrives: a JSON object, or multipart/form-data with its files spooled.

A multipart form is parsed while it streams in (python-multipart, as
Starlette uses it): text fields are kept as strings, each file is written
to an ``Upload`` spool (memory up to ``SPOOL_MEMORY_BYTES``, then an unlinked
temporary file in ``server.data_dir``/uploads). The whole body is never in
memory, and past ``server.max_body_bytes`` it is refused (413) and read no
further. The request is routed only once the body ended: ``model`` may come
after the file, and a retry or a fallback sends the spool again.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Receive, Scope

from gateway.errors import InvalidRequest, RequestTooLarge
from gateway.http.validation import BodyLimits
from providers.media import Upload

# A file this small stays in memory; a larger one goes to disk as it arrives.
SPOOL_MEMORY_BYTES = 1024 * 1024
# A text field longer than this is no parameter (a prompt is a few KB): refused before it grows.
MAX_FIELD_BYTES = 256 * 1024


async def body_chunks(scope: Scope, receive: Receive, limit: int) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive; RequestTooLarge once it passes ``limit`` bytes."""
    if _declared_length(scope) > limit:
        raise RequestTooLarge(limit)
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # The client left mid-body: a prefix must never be taken for the request.
            raise asyncio.CancelledError("the client disconnected before its body ended")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(limit)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def multipart_boundary(scope: Scope) -> bytes | None:
    """The boundary of a ``multipart/form-data`` body; None for any other content type."""
    value = next((value for name, value in scope["headers"] if name == b"content-type"), b"")
    media_type, params = parse_options_header(value)
    boundary = params.get(b"boundary")
    return boundary if media_type == b"multipart/form-data" and boundary else None


class FormReader:
    """Parses one multipart body fed chunk by chunk into ``fields``: strings, lists of them, and Uploads."""

    def __init__(self, boundary: bytes, limits: BodyLimits, spool_dir: Path) -> None:
        self.fields: dict[str, Any] = {}
        self.uploads: list[Upload] = []  # every spool opened, to be closed whatever happens
        self._limits = limits
        self._spool_dir = spool_dir
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._spool: IO[bytes] | None = None
        self._filename = ""
        self._size = 0
        self._text = bytearray()
        self.ended = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._data, "on_part_end": self._part_end,
            "on_end": self._end,
        })  # fmt: skip

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except InvalidRequest:
            raise
        except Exception as exc:  # python-multipart's parse errors: the client's framing, not a bug
            raise InvalidRequest(f"The multipart/form-data body could not be parsed: {exc}") from None

    def finish(self) -> dict[str, Any]:
        self._parser.finalize()
        if not self.ended:
            raise InvalidRequest("The multipart/form-data body ended before its closing boundary.")
        model = self.fields.get("model")
        if isinstance(model, str) and len(model) > self._limits.max_model_chars:
            raise InvalidRequest(
                f"Invalid value for 'model': longer than {self._limits.max_model_chars} characters "
                "(server.max_model_chars).", param="model",
            )  # fmt: skip
        return self.fields

    def close_partial(self) -> None:
        """Close the spool of a file whose part never ended (``uploads`` are their owner's to close)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _begin(self) -> None:
        self._headers, self._name, self._filename, self._spool, self._size = {}, "", "", None, 0
        self._text.clear()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if not self._name:
            raise InvalidRequest("A multipart/form-data part has no name.")
        filename = options.get(b"filename")
        if filename is not None:
            self._filename = filename.decode("utf-8", "replace") or "upload"
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            # Not a context manager: the spool outlives this call, its Upload closes it once the request ended.
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, dir=self._spool_dir)  # noqa: SIM115

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._spool is not None:
            self._spool.write(data[start:end])  # past the threshold, a write to the page cache
            self._size += end - start
            return
        self._text += data[start:end]
        if len(self._text) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"The form field '{self._name[:64]}' is longer than {MAX_FIELD_BYTES} bytes.",
                                 param=self._name[:64])  # fmt: skip

    def _part_end(self) -> None:
        value: str | Upload
        if self._spool is not None:
            content_type = self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            value = Upload(self._filename, content_type, self._spool, self._size)
            self.uploads.append(value)
            self._spool = None
        else:
            try:
                value = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"The form field '{self._name[:64]}' is not UTF-8 text.", param=self._name[:64]) from None
        held = self.fields.get(self._name)
        if held is None:
            self.fields[self._name] = value
        else:  # a field sent again (timestamp_granularities[], image[]): all of them, in order
            self.fields[self._name] = [*held, value] if isinstance(held, list) else [held, value]

    def _end(self) -> None:
        self.ended = True


def _declared_length(scope: Scope) -> int:
    """The body's Content-Length, or 0 without a usable one (chunked)."""
    value = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
    return int(value) if value.isdigit() and len(value) <= 18 else 0
