"""Retry-After and retry-after-ms as an upstream may send them: whatever the value, a safe number or None."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.errors import (
    UpstreamRateLimited,
    UpstreamServerError,
    error_from_response,
    parse_retry_after,
)


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "2.5"}, 2.5),  # OpenAI sends fractions
        ({"retry-after": " 7 "}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # milliseconds first, as the SDKs read them
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # an unusable ms value: the seconds still count
        ({"retry-after": "251606193120"}, 251606193120.0),  # huge but finite: kept, the router caps it
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-inf"}, None),
        ({"retry-after": "Infinity"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "1e400"}, None),  # overflows to inf
        ({"retry-after-ms": "1e400"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after-ms": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "Wed, 21 Oct 99999 07:28:00 GMT"}, None),  # a year datetime cannot hold
        ({"retry-after": "Mon, 32 Jan 2020 00:00:00 GMT"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past: now
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 -0000"}, 0.0),  # no zone: UTC
        ({}, None),
    ],
)
def test_values(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_an_http_date_is_seconds_from_now() -> None:
    assert 25 < parse_retry_after({"retry-after": http_date(30)}) <= 30  # type: ignore[operator]
    far = parse_retry_after({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"})
    assert far is not None and math.isfinite(far) and far > 1e11


@given(st.text(), st.text())
def test_any_text_gives_a_finite_non_negative_number_or_none(seconds: str, millis: str) -> None:
    for headers in ({"retry-after": seconds}, {"retry-after-ms": millis}, {"retry-after": seconds, "retry-after-ms": millis}):
        value = parse_retry_after(headers)
        assert value is None or (math.isfinite(value) and value >= 0)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**400), max_value=10**400))
def test_any_number_gives_a_finite_non_negative_number_or_none(number: float) -> None:
    for name in ("retry-after", "retry-after-ms"):
        value = parse_retry_after({name: str(number)})
        assert value is None or (math.isfinite(value) and value >= 0)


@pytest.mark.parametrize("status", [429, 503])
def test_every_upstream_error_carries_it_and_no_header_of_its_own(status: int) -> None:
    """What the client is told is the router's to decide (capped by router.retries.retry_after_max)."""
    error = error_from_response(status, b"{}", {"retry-after": "1e400"})
    assert isinstance(error, (UpstreamRateLimited, UpstreamServerError))
    assert error.retry_after is None and error.headers == {}
    assert error_from_response(status, b"{}", {"retry-after": "4"}).retry_after == 4.0
