"""The sender against a real receiver on 127.0.0.1: retries, backoff, giving up, order per request, the queue bound."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from gateway.webhooks import Event, RequestFinished, WebhookSender, WebhookTarget, secret_key
from tests.gateway.webhooks.receiver import HANG, OK, RESET, UNAVAILABLE, Receiver, slow_down, verify

SECRET = "whsec_" + base64.b64encode(b"switchyard-webhook-test-key-0123").decode()
ALL = frozenset({"request.completed", "request.failed", "budget.exceeded"})


def _target(receiver: Receiver, **overrides: object) -> WebhookTarget:
    settings: dict[str, object] = {"max_attempts": 5, "backoff_initial": 0.02, "backoff_max": 0.1, "timeout": 0.5}
    settings.update(overrides)
    return WebhookTarget(receiver.url, ALL, secret_key(SECRET), **settings)  # type: ignore[arg-type]


def _event(request_id: str, status: int = 200) -> Event:
    data = RequestFinished(
        request_id=request_id, endpoint="chat/completions", model="m", provider="p", deployment="d", status=status,
        key=None, stream=False, prompt_tokens=1, completion_tokens=2, total_tokens=3, cached_tokens=0,
        reasoning_tokens=0, estimated=False, cost_usd=None, latency_ms=1.0, cache=None,
    )  # fmt: skip
    return Event("request.completed" if status < 400 else "request.failed", data, request_id)


async def _until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_an_event_is_delivered_once_past_a_503_a_reset_and_a_timeout() -> None:
    with Receiver([UNAVAILABLE, RESET, HANG]) as receiver:
        sender = WebhookSender([_target(receiver, timeout=0.3)])
        await sender.start()
        event = _event("req-1")
        sender.emit(event)
        await _until(lambda: sender.delivered == 1)
        await sender.aclose()
    assert [call.answered for call in receiver.calls] == [UNAVAILABLE, RESET, HANG, OK]
    assert {call.headers["webhook-id"] for call in receiver.calls} == {event.id}  # one id: the receiver can dedupe
    assert all(verify(SECRET, call) for call in receiver.calls)
    assert (sender.delivered, sender.retried, sender.failed) == (1, 3, 0)
    assert receiver.delivered[0].event["data"]["request_id"] == "req-1"


async def test_a_429_is_retried_no_sooner_than_its_retry_after() -> None:
    with Receiver([slow_down(1)]) as receiver:
        sender = WebhookSender([_target(receiver, backoff_max=5.0)])
        await sender.start()
        sender.emit(_event("req-1"))
        await _until(lambda: sender.delivered == 1)
        await sender.aclose()
    first, second = receiver.calls
    assert second.at - first.at >= 0.95


async def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    target = WebhookTarget("http://x", ALL, b"k" * 24, backoff_initial=1.0, backoff_max=5.0)
    waits = [[target.backoff(attempt, None) for attempt in (1, 2, 3, 4)] for _ in range(50)]
    for first, second, third, fourth in waits:
        assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0 and 2.0 <= third <= 4.0 and 2.5 <= fourth <= 5.0
    assert len({round(wait[0], 6) for wait in waits}) > 1  # jittered
    assert target.backoff(1, 30.0) == 5.0  # a Retry-After is honoured up to backoff_max


async def test_it_gives_up_after_max_attempts_and_counts_it() -> None:
    with Receiver(answer_for=lambda number: UNAVAILABLE) as receiver:
        sender = WebhookSender([_target(receiver, max_attempts=3)])
        await sender.start()
        sender.emit(_event("req-1"))
        await _until(lambda: sender.failed == 1)
        await sender.aclose()
    assert len(receiver.calls) == 3 and sender.delivered == 0


async def test_a_4xx_other_than_429_is_not_retried() -> None:
    with Receiver(["400"]) as receiver:
        sender = WebhookSender([_target(receiver)])
        await sender.start()
        sender.emit(_event("req-1"))
        await _until(lambda: sender.failed == 1)
        await sender.aclose()
    assert len(receiver.calls) == 1


async def test_one_requests_events_arrive_in_order_while_others_pass_its_retries() -> None:
    # Every other call fails: events are retried, yet per request the order holds.
    with Receiver(answer_for=lambda number: UNAVAILABLE if number % 2 == 0 else OK) as receiver:
        sender = WebhookSender([_target(receiver)], lanes=3)
        await sender.start()
        emitted = [_event(f"req-{n % 4}", 200 + n) for n in range(16)]
        for event in emitted:
            sender.emit(event)
        await _until(lambda: sender.delivered == 16)
        await sender.aclose()
    delivered = [call.event["data"] for call in receiver.delivered]
    assert len({call.headers["webhook-id"] for call in receiver.delivered}) == 16
    for request in range(4):
        statuses = [data["status"] for data in delivered if data["request_id"] == f"req-{request}"]
        sent = [event.data.status for event in emitted if event.order_key == f"req-{request}"]  # type: ignore[union-attr]
        assert statuses == sent
    assert sender.retried > 0


async def test_a_full_queue_drops_and_counts_and_never_blocks() -> None:
    with Receiver(answer_for=lambda number: HANG) as receiver:
        sender = WebhookSender([_target(receiver, timeout=30)], max_pending=4, lanes=1)
        await sender.start()
        started = time.perf_counter()
        for n in range(1000):
            sender.emit(_event(f"req-{n}"))
        emitting = time.perf_counter() - started
        await _until(lambda: len(receiver.calls) == 1)  # one in flight, 4 waiting: the rest dropped
        assert sender.dropped >= 1000 - 5 and sender.pending <= 4
        await sender.aclose(grace=0.1)
    assert emitting < 0.5


async def test_only_subscribed_types_are_sent() -> None:
    with Receiver() as receiver:
        target = WebhookTarget(receiver.url, frozenset({"request.failed"}), secret_key(SECRET))
        sender = WebhookSender([target])
        await sender.start()
        assert sender.subscribed("request.failed") and not sender.subscribed("request.completed")
        sender.emit(_event("req-ok"))
        sender.emit(_event("req-bad", 502))
        await _until(lambda: sender.delivered == 1)
        await sender.aclose()
    assert [call.event["type"] for call in receiver.calls] == ["request.failed"]


@pytest.mark.parametrize("secret", [
    "abc", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode(), "whsec_" + base64.b64encode(b"x" * 65).decode(),
])  # fmt: skip
def test_a_secret_must_be_whsec_and_base64_of_24_to_64_bytes(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)
