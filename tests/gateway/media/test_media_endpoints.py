"""Audio and images through the router, end to end: the openai SDK -> the gateway on a real port -> fakes on 127.0.0.1.

The fake (tests/support/fakes/media_upstream.py) parses what arrives with
Starlette's form parser, so a file that reaches it byte for byte went
through the gateway's own multipart reading, spooling and re-sending.
Every figure a test checks is what the fake answered, at the price the
config below names.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from gateway.ledger.records import COLUMNS
from tests.support.fakes.media_upstream import (
    SPEECH_CHUNKS,
    TRANSCRIPT,
    FakeMediaUpstream,
)
from tests.support.servers import ServedApp

MEDIA_KEY = "sk-media-upstream-0123456789"
AZURE_KEY = "azure-media-upstream-0123456789"
TEAM_KEY = "sk-media-team-0123456789"
WHISPER_ONLY_KEY = "sk-media-whisper-only-0123456789"
BUDGET_KEY = "sk-media-budgeted-0123456789"
MAX_BODY = 2 * 1024 * 1024
CONFIG = """
server:
  data_dir: ${DATA_DIR}
  ledger_flush_interval: 0.05
  max_body_bytes: 2097152
  api_keys:
    - {key: "${TEAM_KEY}", name: media-team, models: ["*"]}
    - {key: "${WHISPER_ONLY_KEY}", name: whisper-only, models: [whisper]}
    - {key: "${BUDGET_KEY}", name: budgeted, model_budgets_usd: {tts: 0.0002, gpt-image: 1}}
router:
  retries: {attempts: 1}
  cooldown: {failures: 1000}
providers:
  openai-fake: {type: openai, base_url: "${MEDIA_URL}/v1", api_key: "${MEDIA_KEY}"}
  groq-fake: {type: groq, base_url: "${MEDIA_URL}/v1", api_key: "${MEDIA_KEY}"}
  azure-fake: {type: azure, base_url: "${MEDIA_URL}", api_key: "${AZURE_KEY}", api_version: 2025-04-01-preview}
models:
  whisper:
    price: {input_per_mtok: 0, output_per_mtok: 0, per_audio_minute: 0.006}
    deployments: [{provider: openai-fake, model: whisper-1}]
  busy-whisper:
    routing: ordered
    deployments:
      - {provider: openai-fake, model: retry-after-1}
      - {provider: groq-fake, model: whisper-large-v3}
  only-busy:
    deployments: [{provider: openai-fake, model: retry-after-7}]
  azure-whisper:
    deployments: [{provider: azure-fake, model: my-whisper}]
  tts:
    price: {input_per_mtok: 0, output_per_mtok: 0, per_million_characters: 15}
    deployments: [{provider: openai-fake, model: tts-1}]
  groq-tts:
    deployments: [{provider: groq-fake, model: playai-tts}]
  dall-e:
    price: {input_per_mtok: 0, output_per_mtok: 0, per_image: 0.04}
    deployments: [{provider: openai-fake, model: dall-e-3}]
  gpt-image:
    price: {input_per_mtok: 5, output_per_mtok: 40}
    deployments: [{provider: openai-fake, model: gpt-image-1}]
"""
AUDIO = os.urandom(1536 * 1024)  # past the 1 MiB in-memory spool: this one goes to disk
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeMediaUpstream, str, Path]]:
    fake = FakeMediaUpstream(api_key=MEDIA_KEY, azure_key=AZURE_KEY)
    fake.release_last_chunk.set()
    data_dir = tmp_path_factory.mktemp("media-data")
    with ServedApp(fake) as upstream:
        environ = {"MEDIA_URL": upstream.url, "MEDIA_KEY": MEDIA_KEY, "AZURE_KEY": AZURE_KEY, "TEAM_KEY": TEAM_KEY,
                   "WHISPER_ONLY_KEY": WHISPER_ONLY_KEY, "BUDGET_KEY": BUDGET_KEY, "DATA_DIR": str(data_dir)}  # fmt: skip
        config = parse_config(CONFIG, environ=environ)
        with ServedApp(create_app(config), server=config.server) as gateway:
            yield fake, gateway.url, data_dir


@pytest.fixture()
def fake(media: tuple[FakeMediaUpstream, str, Path]) -> FakeMediaUpstream:
    media[0].requests.clear()
    media[0].release_last_chunk.set()
    return media[0]


@pytest.fixture()
def client(media: tuple[FakeMediaUpstream, str, Path]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{media[1]}/v1", api_key=TEAM_KEY, max_retries=0)


def record(media: tuple[FakeMediaUpstream, str, Path], request_id: str) -> dict[str, Any]:
    """The ledger's record of one request, once the writer has flushed it."""
    deadline = time.monotonic() + 5
    while True:
        path = media[2] / "usage.sqlite3"
        if path.exists():
            with sqlite3.connect(path) as db:
                row = db.execute(f"SELECT {', '.join(COLUMNS)} FROM usage_records WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None:
                return dict(zip(COLUMNS, row, strict=True))
        assert time.monotonic() < deadline, f"no ledger record for {request_id}"
        time.sleep(0.05)


def test_a_transcription_reaches_the_upstream_intact_and_is_counted_in_seconds(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("speech.mp3", AUDIO, "audio/mpeg"), language="en", temperature=0.2
    )
    assert raw.parse().text == TRANSCRIPT
    (sent,) = fake.requests
    assert (sent.method, sent.path) == ("POST", "/v1/audio/transcriptions")
    assert sent.headers["authorization"] == f"Bearer {MEDIA_KEY}"
    assert sent.headers["content-length"] == str(int(sent.headers["content-length"]))  # sized, not chunked
    assert sent.fields["model"] == ["whisper-1"]  # the deployment's name, not the public one
    assert (sent.fields["language"], sent.fields["temperature"]) == (["en"], ["0.2"])
    ((filename, content_type, received),) = sent.files["file"]
    assert (filename, content_type, received == AUDIO) == ("speech.mp3", "audio/mpeg", True)
    assert raw.headers["x-switchyard-provider"] == "openai-fake"
    assert raw.headers["x-switchyard-cost-usd"] == f"{4.5 / 60 * 0.006:.8f}"
    row = record(media, raw.headers["x-request-id"])
    assert (row["endpoint"], row["unit"], row["units"], row["status"]) == ("audio/transcriptions", "seconds", 4.5, 200)
    assert row["cost_usd"] == pytest.approx(4.5 / 60 * 0.006) and row["price_source"] == "config"
    assert not list((media[2] / "uploads").iterdir())  # the spool is gone with the request


@pytest.mark.parametrize(
    ("response_format", "expected", "units", "estimated"),
    [("text", TRANSCRIPT + "\n", None, False), ("srt", "00:00:04,500", 4.5, True), ("vtt", "WEBVTT", 4.5, True)],
)
def test_each_text_format_comes_back_as_the_upstream_wrote_it(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI,
    response_format: str, expected: str, units: float | None, estimated: bool,
) -> None:  # fmt: skip
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("a.wav", b"RIFF0000WAVE", "audio/wav"), response_format=response_format  # type: ignore[arg-type]
    )
    text = raw.parse()
    assert isinstance(text, str) and expected in text
    assert raw.headers["content-type"].startswith("text/plain")
    assert fake.requests[0].fields["response_format"] == [response_format]
    row = record(media, raw.headers["x-request-id"])
    assert (row["units"] or None, row["estimated"] == 1) == (units, estimated)
    if units is None:  # a plain text answer says nothing of the audio's length: its cost is unknown, never $0
        assert row["cost_usd"] is None and "x-switchyard-cost-usd" not in raw.headers
    else:
        assert raw.headers.get("x-switchyard-usage-estimated") == "true"


def test_verbose_json_and_translations_count_the_duration(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    verbose = client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("a.wav", b"RIFF", "audio/wav"), response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )  # fmt: skip
    assert verbose.parse().duration == 4.5
    assert fake.requests[0].fields["timestamp_granularities[]"] == ["word", "segment"]  # a repeated field, in order
    translated = client.audio.translations.with_raw_response.create(model="whisper", file=("b.wav", b"RIFF", "audio/wav"),
                                                                    response_format="verbose_json")  # fmt: skip
    assert fake.requests[1].path == "/v1/audio/translations"
    for raw, endpoint in ((verbose, "audio/transcriptions"), (translated, "audio/translations")):
        row = record(media, raw.headers["x-request-id"])
        assert (row["endpoint"], row["unit"], row["units"]) == (endpoint, "seconds", 4.5)


def test_a_streamed_transcription_relays_the_events_and_counts_their_tokens(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    with client.audio.transcriptions.with_streaming_response.create(
        model="whisper", file=("a.wav", b"RIFF", "audio/wav"), stream=True
    ) as response:
        events = list(response.parse())
        request_id = response.headers["x-request-id"]
    assert [event.type for event in events] == ["transcript.text.delta", "transcript.text.delta", "transcript.text.done"]
    assert events[-1].text == TRANSCRIPT  # type: ignore[union-attr]
    assert fake.requests[0].fields["stream"] == ["true"]
    row = record(media, request_id)
    assert (row["stream"], row["prompt_tokens"], row["completion_tokens"], row["unit"]) == (1, 14, 6, None)


def test_a_429_with_retry_after_falls_back_and_the_file_is_sent_again(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(model="busy-whisper", file=("speech.mp3", AUDIO, "audio/mpeg"))
    assert raw.parse().text == TRANSCRIPT
    assert (raw.headers["x-switchyard-provider"], raw.headers["x-switchyard-attempts"]) == ("groq-fake", "2")
    assert [sent.fields["model"] for sent in fake.requests] == [["retry-after-1"], ["whisper-large-v3"]]
    assert all(sent.files["file"][0][2] == AUDIO for sent in fake.requests)  # the spool, read again from its start
    with pytest.raises(openai.RateLimitError) as refused:
        client.audio.transcriptions.create(model="only-busy", file=("a.wav", b"RIFF", "audio/wav"))
    assert refused.value.response.headers["retry-after"] == "7"
    assert refused.value.body["type"] == "rate_limit_error"  # type: ignore[index]


def test_speech_is_streamed_to_the_client_as_it_arrives(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    fake.release_last_chunk.clear()  # the fake holds its last chunk back until the client has the first
    fake.last_chunk_sent_at.clear()
    with client.audio.speech.with_streaming_response.create(model="tts", voice="alloy", input="Hello there") as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        assert first and not fake.last_chunk_sent_at  # the client has audio; the upstream has not finished
        fake.release_last_chunk.set()
        audio = first + b"".join(chunks)
        assert response.headers["content-type"] == "audio/mpeg"
        request_id = response.headers["x-request-id"]
    assert audio == b"".join(SPEECH_CHUNKS)
    assert fake.requests[0].json == {"model": "tts-1", "voice": "alloy", "input": "Hello there"}
    row = record(media, request_id)
    assert (row["endpoint"], row["unit"], row["units"], row["stream"]) == ("audio/speech", "characters", 11, 1)
    assert row["cost_usd"] == pytest.approx(11 * 15 / 1e6)


def test_images_are_counted_by_the_image_and_gpt_image_by_its_tokens_too(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    made = client.images.with_raw_response.generate(model="dall-e", prompt="a lighthouse", n=2, size="1024x1024")
    assert len(made.parse().data or []) == 2
    assert fake.requests[0].json == {"model": "dall-e-3", "prompt": "a lighthouse", "n": 2, "size": "1024x1024"}
    assert made.headers["x-switchyard-cost-usd"] == f"{0.08:.8f}"
    row = record(media, made.headers["x-request-id"])
    assert (row["endpoint"], row["unit"], row["units"], row["cost_usd"]) == ("images/generations", "images", 2, pytest.approx(0.08))
    edited = client.images.with_raw_response.edit(model="gpt-image", image=("cat.png", PNG, "image/png"), prompt="add a hat")
    assert edited.parse().usage.output_tokens == 4160  # type: ignore[union-attr]
    sent = fake.requests[1]
    assert (sent.path, sent.fields["model"], sent.fields["prompt"]) == ("/v1/images/edits", ["gpt-image-1"], ["add a hat"])
    assert sent.files["image"] == [("cat.png", "image/png", PNG)]
    row = record(media, edited.headers["x-request-id"])
    assert (row["unit"], row["units"], row["prompt_tokens"], row["completion_tokens"]) == ("images", 1, 50, 4160)
    assert row["cost_usd"] == pytest.approx((50 * 5 + 4160 * 40) / 1e6)  # tokens at the model's rates; no per_image


def test_several_images_under_one_field_reach_the_upstream_each_once(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    # The SDK sends a list of images as `image[]` parts, one per file (gpt-image-1 takes up to 16).
    edited = client.images.edit(model="gpt-image", image=[("a.png", PNG, "image/png"), ("b.png", PNG + b"2", "image/png")],
                                prompt="merge them")  # fmt: skip
    assert edited.data
    sent = fake.requests[-1]
    assert sent.files["image[]"] == [("a.png", "image/png", PNG), ("b.png", "image/png", PNG + b"2")]


def test_a_streamed_image_is_relayed_and_counted_from_its_completed_event(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    with client.images.with_streaming_response.generate(model="gpt-image", prompt="a lighthouse", stream=True) as response:
        events = list(response.parse())
        request_id = response.headers["x-request-id"]
    assert [event.type for event in events] == ["image_generation.partial_image", "image_generation.completed"]
    row = record(media, request_id)
    assert (row["stream"], row["unit"], row["units"], row["prompt_tokens"], row["completion_tokens"]) == (1, "images", 1, 50, 4160)
    assert row["cost_usd"] == pytest.approx((50 * 5 + 4160 * 40) / 1e6)


def test_azure_gets_its_deployment_url_api_version_and_api_key(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    assert client.audio.transcriptions.create(model="azure-whisper", file=("a.wav", b"RIFF", "audio/wav")).text == TRANSCRIPT
    (sent,) = fake.requests
    assert (sent.path, sent.query) == ("/openai/deployments/my-whisper/audio/transcriptions", "api-version=2025-04-01-preview")
    assert sent.headers["api-key"] == AZURE_KEY and "authorization" not in sent.headers
    assert sent.files["file"][0][2] == b"RIFF"


def test_a_body_past_max_body_bytes_is_refused_413_before_any_upstream_call(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        client.audio.transcriptions.create(model="whisper", file=("big.wav", os.urandom(MAX_BODY + 1), "audio/wav"))
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "request_too_large"  # type: ignore[index]
    assert fake.requests == []


def test_what_the_gateway_refuses_is_named_in_openais_shape(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as bad_format:
        client.audio.transcriptions.create(model="whisper", file=("a.wav", b"RIFF", "audio/wav"), response_format="mp4")  # type: ignore[arg-type]
    assert bad_format.value.body["param"] == "response_format"  # type: ignore[index]
    auth = {"authorization": f"Bearer {TEAM_KEY}"}
    no_file = httpx.post(f"{media[1]}/v1/audio/transcriptions", data={"model": "whisper"},
                         files={"attachment": ("a.wav", b"RIFF")}, headers=auth)  # fmt: skip
    assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
    as_text = httpx.post(f"{media[1]}/v1/audio/transcriptions", files={"model": (None, "whisper"), "file": (None, "RIFF")},
                         headers=auth)  # fmt: skip
    assert (as_text.status_code, as_text.json()["error"]["param"]) == (400, "file")  # a text field is not a file
    with pytest.raises(openai.BadRequestError) as not_offered:  # Groq documents no speech endpoint
        client.audio.speech.create(model="groq-tts", voice="alloy", input="hi")
    assert not_offered.value.body["code"] == "unsupported_endpoint"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="no-such-model", prompt="x")
    json_body = httpx.post(f"{media[1]}/v1/audio/transcriptions", json={"model": "whisper"}, headers=auth)
    assert json_body.status_code == 415 and json_body.json()["error"]["code"] == "unsupported_media_type"
    form = httpx.post(f"{media[1]}/v1/audio/transcriptions", data={"model": "whisper"}, files={"file": ("a.wav", b"RIFF")})
    assert form.status_code == 401  # what a web page's cross-site form sends: no key header, so no upload
    narrow = openai.OpenAI(base_url=f"{media[1]}/v1", api_key=WHISPER_ONLY_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):  # the key's models rule, as for chat
        narrow.images.generate(model="dall-e", prompt="x")
    assert fake.requests == []


def test_a_dollar_budget_holds_what_the_request_names_in_its_unit(
    media: tuple[FakeMediaUpstream, str, Path], fake: FakeMediaUpstream
) -> None:
    budgeted = openai.OpenAI(base_url=f"{media[1]}/v1", api_key=BUDGET_KEY, max_retries=0)
    spoken = budgeted.audio.speech.with_raw_response.create(model="tts", voice="alloy", input="Hello there")
    assert spoken.content == b"".join(SPEECH_CHUNKS)  # 11 characters at $15 per million: $0.000165 of $0.0002
    with pytest.raises(openai.RateLimitError) as spent:  # 11 more would pass the budget: refused before any call
        budgeted.audio.speech.create(model="tts", voice="alloy", input="Hello again")
    assert spent.value.code == "insufficient_quota"
    with pytest.raises(openai.PermissionDeniedError) as unpriced:  # gpt-image has token rates, no per_image
        budgeted.images.generate(model="gpt-image", prompt="x")
    assert unpriced.value.code == "model_not_priced"
    assert len(fake.requests) == 1


def test_a_model_served_only_by_the_local_engine_says_it_offers_no_audio_or_images(tiny_model_dir: Path) -> None:
    config = parse_config(f"""
server: {{usage_ledger: false}}
providers:
  engine: {{type: local, model: "{tiny_model_dir}"}}
models:
  tiny: {{deployments: [{{provider: engine, model: tiny}}]}}
""", environ={})  # fmt: skip
    with ServedApp(create_app(config), server=config.server) as gateway:
        local = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as speech:
            local.audio.speech.create(model="tiny", voice="alloy", input="hi")
        with pytest.raises(openai.BadRequestError) as transcription:
            local.audio.transcriptions.create(model="tiny", file=("a.wav", b"RIFF", "audio/wav"))
        with pytest.raises(openai.BadRequestError) as image:
            local.images.generate(model="tiny", prompt="x")
    for refused, path in ((speech, "audio/speech"), (transcription, "audio/transcriptions"), (image, "images/generations")):
        assert refused.value.body["code"] == "unsupported_endpoint"  # type: ignore[index]
        assert refused.value.body["message"] == f"Provider 'engine' does not offer /v1/{path}."  # type: ignore[index]
