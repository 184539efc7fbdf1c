"""Delivers webhook events off the request path: a bounded queue per lane, one worker per lane.

::

    emit(event) ──> endpoint A ── lane crc32(order_key) % lanes ──> queue ──> worker: POST, retry, give up
                └─> endpoint B ── ...

``emit`` never waits: it puts the event on the queue of each subscribed
endpoint's lane, or drops and counts it when that queue is full. One
worker per lane sends one event at a time, so events with the same order
key (one request's) arrive in the order they were emitted, while a
receiver slow on one event holds up only the requests of its lane.

An attempt that meets a network error, a timeout, a 5xx or a 429 is tried
again after an exponential backoff with jitter (at least the Retry-After
a 429 or 503 asks for, up to ``backoff_max``), until ``max_attempts``; a
2xx is delivered, any other answer is refused and not tried again. Every
attempt of one event carries the same ``webhook-id``, so a receiver that
answered too late to be heard drops the second copy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from gateway.webhooks.events import Event
from gateway.webhooks.signing import signed_headers
from providers.errors import parse_retry_after

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """One endpoint: where, which event types, the signing key, and how hard to try."""

    url: str
    events: frozenset[str]
    key: bytes
    include_content: bool = False
    max_attempts: int = 8
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    timeout: float = 10.0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before attempt ``attempt + 1``: doubling from backoff_initial, jittered, capped at backoff_max."""
        doubled = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
        wait = doubled * random.uniform(0.5, 1.0)  # jitter: receivers that failed together do not retry together
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.backoff_max)


class _Lane:
    def __init__(self, target: WebhookTarget, max_pending: int) -> None:
        self.target = target
        self.queue: asyncio.Queue[Event] = asyncio.Queue(max_pending)
        self.worker: asyncio.Task[None] | None = None


class WebhookSender:
    """``emit`` events; ``start`` in the running loop before, ``aclose`` at shutdown."""

    def __init__(self, targets: Sequence[WebhookTarget], *, max_pending: int = 10_000, lanes: int = 4) -> None:
        # max_pending: events waiting per endpoint at most, shared out among its lanes.
        per_lane = max(1, max_pending // lanes)
        self._endpoints = [[_Lane(target, per_lane) for _ in range(lanes)] for target in targets]
        self.wants_content = any(target.include_content for target in targets)
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.retried = 0  # attempts after a first one failed
        self.failed = 0  # given up on: attempts used up, or refused by the receiver
        self.dropped = 0  # never queued: the queue was full

    def subscribed(self, event_type: str) -> bool:
        return any(event_type in lanes[0].target.events for lanes in self._endpoints)

    @property
    def pending(self) -> int:
        return sum(lane.queue.qsize() for lanes in self._endpoints for lane in lanes)

    def emit(self, event: Event) -> None:
        """Queue ``event`` for every endpoint subscribed to its type; never blocks."""
        lane_index = zlib.crc32(event.order_key.encode())
        for lanes in self._endpoints:
            lane = lanes[lane_index % len(lanes)]
            if event.type not in lane.target.events:
                continue
            try:
                lane.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for lanes in self._endpoints:
            for lane in lanes:
                lane.worker = asyncio.get_running_loop().create_task(self._work(lane))

    async def aclose(self, grace: float = 5.0) -> None:
        """Deliver what is queued for up to ``grace`` seconds, then stop; what is left is counted lost."""
        lanes = [lane for endpoint in self._endpoints for lane in endpoint if lane.worker is not None]
        if lanes:
            drained = asyncio.gather(*(lane.queue.join() for lane in lanes))
            try:
                await asyncio.wait_for(drained, grace)
            except asyncio.TimeoutError:
                pass
        for lane in lanes:
            assert lane.worker is not None
            lane.worker.cancel()
        await asyncio.gather(*(lane.worker for lane in lanes if lane.worker is not None), return_exceptions=True)
        lost = sum(lane.queue.qsize() for lane in lanes)
        if lost or self.dropped:
            logger.error("webhooks: %d events not delivered at shutdown, %d dropped before", lost, self.dropped)
        if self._session is not None:
            await self._session.close()

    async def _work(self, lane: _Lane) -> None:
        while True:
            event = await lane.queue.get()
            try:
                await self._deliver(lane.target, event)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the lane
                logger.exception("webhooks: event %s to %s", event.id, lane.target.url)
                self.failed += 1
            finally:
                lane.queue.task_done()

    async def _deliver(self, target: WebhookTarget, event: Event) -> None:
        body = event.body(target.include_content)
        for attempt in range(1, target.max_attempts + 1):
            if attempt > 1:
                self.retried += 1
            verdict = await self._attempt(target, event, body)
            if verdict is True:
                self.delivered += 1
                return
            if verdict is False:
                break
            if attempt < target.max_attempts:
                await asyncio.sleep(target.backoff(attempt, verdict))
        self.failed += 1
        logger.warning("webhooks: gave up on %s event %s to %s", event.type, event.id, target.url)

    async def _attempt(self, target: WebhookTarget, event: Event, body: bytes) -> bool | float | None:
        """True: delivered. False: refused for good. A number or None: try again (after Retry-After seconds, if any)."""
        assert self._session is not None, "WebhookSender.start() was not called"
        headers = signed_headers(target.key, event.id, int(time.time()), body)
        try:
            async with self._session.post(
                target.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=target.timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return True
                if response.status == 429 or response.status >= 500:
                    return parse_retry_after(response.headers)
                logger.warning("webhooks: %s answered %d to event %s: not retried", target.url, response.status, event.id)
                return False
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            logger.info("webhooks: %s: %s (event %s)", target.url, type(error).__name__, event.id)
            return None
