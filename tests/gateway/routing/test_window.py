"""A deployment's outcome window: what it counts, and when an outcome leaves it."""

from __future__ import annotations

import pytest

from gateway.routing.window import BUCKET_SECONDS, BUCKETS, OutcomeWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0 * BUCKET_SECONDS  # a minute's start

    def __call__(self) -> float:
        return self.now


def test_counts_outcomes_and_times_answers() -> None:
    clock = Clock()
    window = OutcomeWindow(clock)
    assert window.read().requests == 0 and window.read().error_rate is None and window.read().latency_mean is None
    window.record_success()
    window.record_latency(0.1)
    clock.now += BUCKET_SECONDS  # the next minute: another bucket
    window.record_success()
    window.record_latency(0.3)
    window.record_failure()
    recent = window.read()
    assert (recent.successes, recent.failures, recent.error_rate) == (2, 1, pytest.approx(1 / 3))
    assert (recent.latency_mean, recent.latency_max) == (pytest.approx(0.2), 0.3)


def test_an_outcome_leaves_after_the_window_and_its_bucket_is_reused() -> None:
    clock = Clock()
    window = OutcomeWindow(clock)
    window.record_failure()
    window.record_latency(2.0)
    clock.now += (BUCKETS - 1) * BUCKET_SECONDS + BUCKET_SECONDS / 2  # the last minute the first one counts in
    assert window.read().failures == 1
    clock.now += BUCKET_SECONDS / 2  # five minutes on: the first minute's bucket is this minute's
    assert window.read().failures == 0
    window.record_success()
    window.record_latency(0.5)
    recent = window.read()
    assert (recent.successes, recent.failures, recent.latency_max) == (1, 0, 0.5)  # emptied before reuse


def test_an_idle_window_forgets_everything() -> None:
    clock = Clock()
    window = OutcomeWindow(clock)
    window.record_success()
    clock.now += 100 * BUCKET_SECONDS
    assert window.read().requests == 0
    window.record_failure()
    assert (window.read().successes, window.read().failures) == (0, 1)
