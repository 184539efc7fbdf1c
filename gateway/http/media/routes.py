"""The media URLs, each as data: its endpoint, the body it takes, the fields the gateway checks, and whether it streams.

::

    POST /v1/audio/transcriptions   multipart: file, model   -> JSON, text, SRT, VTT; events with stream=true
    POST /v1/audio/translations     multipart: file, model   -> JSON, text, SRT, VTT
    POST /v1/audio/speech           JSON: model, input       -> audio, relayed as it arrives
    POST /v1/images/generations     JSON: model, prompt      -> JSON; events with stream=true
    POST /v1/images/edits           multipart: image, prompt -> JSON; events with stream=true

The models check the fields the gateway knows and let every other through
(forwarded unchanged, as for chat). A form's values are text, so its models
read "0.2" as a number and "true" as a boolean (lax); the forwarded form
keeps the client's own text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from providers.wire import Endpoint

_FILE = {"type": "string", "format": "binary"}  # how the API description shows a file part
_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})  # what pydantic's lax bool reads as true


class _Form(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Json(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


AudioFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]


class TranscriptionRequest(_Form):
    file: Any = Field(json_schema_extra=_FILE, description="The audio file.")
    model: str = Field(min_length=1)
    language: str | None = None
    prompt: str | None = None
    response_format: AudioFormat | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    stream: bool | None = None


class TranslationRequest(_Form):
    file: Any = Field(json_schema_extra=_FILE, description="The audio file.")
    model: str = Field(min_length=1)
    prompt: str | None = None
    response_format: AudioFormat | None = None
    temperature: float | None = Field(None, ge=0, le=1)


class SpeechRequest(_Json):
    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=4096)
    voice: str | dict[str, Any]
    instructions: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | None = None
    speed: float | None = Field(None, ge=0.25, le=4)
    stream_format: Literal["sse", "audio"] | None = None


class ImageRequest(_Json):
    # OpenAI lets `model` default; a gateway must know where to route, so it is required here.
    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    n: int | None = Field(None, ge=1, le=10)
    size: str | None = None
    quality: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    style: str | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=3)
    user: str | None = None


class ImageEditRequest(_Form):
    image: Any = Field(None, json_schema_extra=_FILE, description="The image to edit (or several, as `image[]`).")
    mask: Any = Field(None, json_schema_extra=_FILE)
    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    n: int | None = Field(None, ge=1, le=10)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=3)
    user: str | None = None


@dataclass(frozen=True, slots=True)
class MediaRoute:
    """One media URL: what the router is asked for and how its body is read."""

    endpoint: Endpoint
    request_model: type[BaseModel]
    multipart: bool
    # Form fields that must be files; at least one of ``files_one_of`` must be sent (a name, or name[] for several).
    files_one_of: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    always_streams: bool = False  # speech: the audio goes out as it arrives, whatever the request says
    summary: str = ""

    def streams(self, payload: dict[str, Any]) -> bool:
        """Whether the answer is relayed as it arrives (speech always; the others when ``stream`` is true)."""
        if self.always_streams:
            return True
        asked = payload.get("stream")
        return asked is True or (isinstance(asked, str) and asked.lower() in _TRUE)


MEDIA_ROUTES: dict[str, MediaRoute] = {
    "/v1/audio/transcriptions": MediaRoute(
        Endpoint.TRANSCRIPTIONS, TranscriptionRequest, multipart=True, files_one_of=("file",),
        summary="Create transcription",
    ),
    "/v1/audio/translations": MediaRoute(
        Endpoint.TRANSLATIONS, TranslationRequest, multipart=True, files_one_of=("file",), summary="Create translation"
    ),
    "/v1/audio/speech": MediaRoute(Endpoint.SPEECH, SpeechRequest, multipart=False, always_streams=True,
                                   summary="Create speech"),
    "/v1/images/generations": MediaRoute(Endpoint.IMAGES, ImageRequest, multipart=False, summary="Create image"),
    "/v1/images/edits": MediaRoute(
        Endpoint.IMAGE_EDITS, ImageEditRequest, multipart=True, files_one_of=("image", "image[]"), files=("mask",),
        summary="Create image edit",
    ),
}  # fmt: skip
