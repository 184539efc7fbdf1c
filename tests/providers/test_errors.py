from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from providers.errors import (
    ContextWindowExceeded,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRedirected,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamTimeout,
    error_from_response,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "body", "cls", "retryable", "fallback"),
    [
        (400, b'{"error": {"message": "bad", "type": "invalid_request_error"}}', UpstreamRejected, False, False),
        (401, b'{"error": {"message": "key"}}', UpstreamAuthFailed, False, True),
        (429, b"{}", UpstreamRateLimited, True, True),
        (500, b"oops", UpstreamServerError, True, True),
        (503, b"", UpstreamServerError, True, True),
        (408, b"", UpstreamTimeout, True, True),
        (302, b"", UpstreamRedirected, False, True),
    ],
)
def test_status_decides_the_class(status: int, body: bytes, cls: type, retryable: bool, fallback: bool) -> None:
    error = error_from_response(status, body)
    assert type(error) is cls
    assert (error.retryable, error.fallback_allowed) == (retryable, fallback)


def test_context_window_is_its_own_class() -> None:
    body = b'{"error": {"message": "too long", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}'
    error = error_from_response(400, body, provider="p")
    assert isinstance(error, ContextWindowExceeded)
    assert error.to_dict() == {
        "error": {"message": "too long", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
    }
    assert error.provider == "p"


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (b'{"error": "plain string"}', "plain string", None),
        (b'{"detail": "fastapi style"}', "fastapi style", None),
        (b'{"object": "error", "message": "vllm style", "type": "BadRequestError", "code": 400}', "vllm style", None),
        (b'{"error": {"message": "m", "code": "model_not_found"}}', "m", "model_not_found"),
        (b'[{"error": {"message": "listed"}}]', "listed", None),
        (b"[1, 2]", "[1, 2]", None),
        (b"<html>gateway timeout</html>", "<html>gateway timeout</html>", None),
        (b"", "upstream answered HTTP 400", None),
    ],
)
def test_other_error_shapes_are_normalised(body: bytes, message: str, code: str | None) -> None:
    error = error_from_response(400, body)
    assert error.message == message
    assert error.code == code
    assert set(error.to_dict()["error"]) == {"message", "type", "param", "code"}


def test_retry_after_headers() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < parse_retry_after({"retry-after": later}) <= 30  # type: ignore[operator]
    assert parse_retry_after({"retry-after": "soon"}) is None
    error = error_from_response(429, b"{}", {"retry-after": "2"})
    assert isinstance(error, UpstreamRateLimited) and error.retry_after == 2.0
    assert error.headers == {}  # the router writes the client's Retry-After, capped (tests/providers/test_retry_after.py)
