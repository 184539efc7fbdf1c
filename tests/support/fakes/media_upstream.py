"""A fake of OpenAI's (and Azure's) audio and image endpoints, served for real on 127.0.0.1 by the tests.

It parses what it receives with Starlette's own form parser (not the
gateway's), checks the key (``Authorization: Bearer`` at ``/v1/...``,
Azure's ``api-key`` at ``/openai/deployments/{name}/...?api-version=``), and
records each request. The model name chooses a behaviour:

    any name          a normal answer in the asked ``response_format``
    retry-after-<s>   429 with ``Retry-After: <s>`` and OpenAI's error body
    status-<code>     that status with OpenAI's error body

Answers, as OpenAI documents them: a transcription's JSON carries
``usage: {type: duration, seconds: 4.5}`` (``verbose_json`` a ``duration``
of 4.5), its text, SRT and VTT end at 4.5 s; with ``stream=true`` it sends
``transcript.text.delta`` events then ``transcript.text.done`` with token
usage. Speech sends ``SPEECH_CHUNKS`` of audio bytes, the last only once
``release_last_chunk`` is set (so a test sees the first arrive before it).
Images answer ``n`` images (gpt-image-1 with token ``usage``).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .asgi import serve_lifespan

SPEECH_CHUNKS = [b"ID3-first-chunk-" + bytes(range(256)) * 4, b"middle-chunk-" * 300, b"last-chunk"]
TRANSCRIPT = "Hello from the fake upstream."
SRT = b"1\n00:00:00,000 --> 00:00:02,000\nHello from\n\n2\n00:00:02,000 --> 00:00:04,500\nthe fake upstream.\n\n"
VTT = b"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nHello from\n\n00:00:02.000 --> 00:00:04.500\nthe fake upstream.\n\n"
IMAGE_B64 = "iVBORw0KGgo="  # the first bytes of a PNG, base64


@dataclass
class MediaRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    fields: dict[str, list[str]]  # text fields (a field sent twice has two values)
    files: dict[str, list[tuple[str, str, bytes]]]  # file fields: (filename, content type, bytes)
    json: Any


@dataclass
class FakeMediaUpstream:
    api_key: str
    azure_key: str
    requests: list[MediaRequest] = field(default_factory=list)
    release_last_chunk: threading.Event = field(default_factory=threading.Event)
    last_chunk_sent_at: list[float] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        request = Request(scope, receive)
        recorded = await self._record(request)
        azure = scope["path"].startswith("/openai/deployments/")
        if azure:
            authorized = recorded.headers.get("api-key") == self.azure_key and "api-version=" in recorded.query
        else:
            authorized = recorded.headers.get("authorization") == f"Bearer {self.api_key}"
        if not authorized:
            await _json(send, 401, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
            return
        endpoint = scope["path"].split("/", 4)[-1] if azure else scope["path"].removeprefix("/v1/")
        model = (recorded.json or {}).get("model") if recorded.json is not None else (recorded.fields.get("model") or [""])[0]
        if azure:
            model = scope["path"].split("/")[3]
        kind, _, argument = str(model).partition("-")
        if kind == "retry" and argument.startswith("after-"):
            await _json(send, 429, _error("slow down", "rate_limit_error"), [(b"retry-after", argument[6:].encode())])
            return
        if kind == "status":
            await _json(send, int(argument), _error(f"fake upstream error {argument}", "invalid_request_error"))
            return
        if endpoint in ("audio/transcriptions", "audio/translations"):
            await self._transcript(recorded, send, endpoint)
        elif endpoint == "audio/speech":
            await self._speech(send)
        elif endpoint in ("images/generations", "images/edits"):
            await _images(recorded, str(model), send)
        else:
            await _json(send, 404, _error(f"Invalid URL ({scope['method']} {scope['path']})", "invalid_request_error"))

    async def _record(self, request: Request) -> MediaRequest:
        headers = {name: value for name, value in request.headers.items()}
        fields: dict[str, list[str]] = {}
        files: dict[str, list[tuple[str, str, bytes]]] = {}
        payload = None
        if headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_part_size=16 * 1024 * 1024)
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.setdefault(name, []).append((value.filename or "", value.content_type or "", await value.read()))
                else:
                    fields.setdefault(name, []).append(value)
        else:
            body = await request.body()
            payload = orjson.loads(body) if body else None
        recorded = MediaRequest(request.method, request.url.path, request.url.query, headers, fields, files, payload)
        self.requests.append(recorded)
        return recorded

    async def _transcript(self, recorded: MediaRequest, send: Any, endpoint: str) -> None:
        form = {name: values[-1] for name, values in recorded.fields.items()}
        if form.get("stream") == "true":
            events = [{"type": "transcript.text.delta", "delta": "Hello from "},
                      {"type": "transcript.text.delta", "delta": "the fake upstream."},
                      {"type": "transcript.text.done", "text": TRANSCRIPT,
                       "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 6, "total_tokens": 20,
                                 "input_token_details": {"audio_tokens": 14, "text_tokens": 0}}}]  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            for event in events:
                data = b"data: " + orjson.dumps(event) + b"\n\n"
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        response_format = form.get("response_format", "json")
        if response_format == "text":
            await _raw(send, 200, TRANSCRIPT.encode() + b"\n", b"text/plain; charset=utf-8")
        elif response_format == "srt":
            await _raw(send, 200, SRT, b"text/plain; charset=utf-8")
        elif response_format == "vtt":
            await _raw(send, 200, VTT, b"text/plain; charset=utf-8")
        elif response_format == "verbose_json":
            task = "transcribe" if endpoint == "audio/transcriptions" else "translate"
            await _json(send, 200, {"task": task, "language": "english", "duration": 4.5, "text": TRANSCRIPT,
                                    "segments": [], "words": []})
        else:
            await _json(send, 200, {"text": TRANSCRIPT, "usage": {"type": "duration", "seconds": 4.5}})

    async def _speech(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"audio/mpeg")]})
        for chunk in SPEECH_CHUNKS[:-1]:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.to_thread(self.release_last_chunk.wait, 10)
        self.last_chunk_sent_at.append(asyncio.get_running_loop().time())
        await send({"type": "http.response.body", "body": SPEECH_CHUNKS[-1], "more_body": False})


async def _images(recorded: MediaRequest, model: str, send: Any) -> None:
    if recorded.json is not None:
        n = recorded.json.get("n", 1)
    else:
        n = int((recorded.fields.get("n") or ["1"])[0])
    if recorded.json is not None and recorded.json.get("stream"):  # gpt-image-1's events: a partial, then the image
        usage = {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                 "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}  # fmt: skip
        events = [{"type": "image_generation.partial_image", "b64_json": IMAGE_B64, "partial_image_index": 0,
                   "created_at": 1700000000, "size": "1024x1024", "quality": "low", "background": "opaque",
                   "output_format": "png"},
                  {"type": "image_generation.completed", "b64_json": IMAGE_B64, "created_at": 1700000000,
                   "size": "1024x1024", "quality": "low", "background": "opaque", "output_format": "png",
                   "usage": usage}]  # fmt: skip
        body = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
        await _raw(send, 200, body, b"text/event-stream")
        return
    answer: dict[str, Any] = {"created": 1700000000, "data": [{"b64_json": IMAGE_B64} for _ in range(n)]}
    if model.startswith("gpt-image"):
        answer["usage"] = {"input_tokens": 50, "output_tokens": 4160 * n, "total_tokens": 50 + 4160 * n,
                           "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}  # fmt: skip
    await _json(send, 200, answer)


def _error(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


async def _json(send: Any, status: int, content: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await _raw(send, status, orjson.dumps(content), b"application/json", headers)


async def _raw(send: Any, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
