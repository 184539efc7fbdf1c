"""An upstream event stream under watch: a stall or the request's deadline ends it with an error.

One timer per stream, not one per event: each event only stamps the time,
and the timer, when it fires, either finds the stream quiet for too long
(and closes the upstream, which wakes the pending read) or re-arms itself
for the next moment the stream could be late. Re-arming a timer on every
read, as a per-read socket timeout does, cost about 9% of a stream's CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from gateway.errors import DeadlineExceeded
from gateway.routing.deadline import Deadline
from providers import ProviderError, UpstreamStream
from providers.errors import StreamInterrupted
from providers.wire import RequestTimings, Usage


class GuardedStream:
    """An upstream stream whose ``first`` events were read ahead, then the ``rest``.

    Iterates like ``UpstreamStream``; raises StreamInterrupted on a stall,
    DeadlineExceeded past the deadline. ``finished(error)`` is called once
    when the stream ends: with None after ``[DONE]`` or when the client left,
    with the error when it broke.
    """

    def __init__(
        self,
        first: list[bytes],
        rest: AsyncIterator[list[bytes]],
        upstream: UpstreamStream,
        stall_timeout: float,
        deadline: Deadline,
        finished: Callable[[ProviderError | None], None],
    ) -> None:
        self._first = first
        self._rest = rest
        self._upstream = upstream
        self.headers = upstream.headers
        self._stall_timeout = stall_timeout
        self._deadline = deadline
        self._finished: Callable[[ProviderError | None], None] | None = finished
        self._last_event_at = 0.0
        self._stopped_by: StreamInterrupted | DeadlineExceeded | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        yield self._first
        loop = asyncio.get_running_loop()
        self._last_event_at = loop.time()
        self._arm(loop)
        try:
            async for events in self._rest:
                if self._stopped_by is not None:
                    break
                yield events
                # Stamped after the client took the events: a slow client is not a stalled upstream.
                self._last_event_at = loop.time()
        except ProviderError as error:
            self._end(self._stopped_by or error)
            raise (self._stopped_by or error) from None
        finally:
            if self._timer is not None:
                self._timer.cancel()
        if self._stopped_by is not None:
            self._end(self._stopped_by)
            raise self._stopped_by
        self._end(None)

    @property
    def usage(self) -> Usage | None:
        return self._upstream.usage

    @property
    def usage_reported(self) -> bool:
        return self._upstream.usage_reported

    @property
    def timings(self) -> tuple[RequestTimings, ...]:
        return self._upstream.timings

    def usage_chunk(self) -> bytes | None:
        return self._upstream.usage_chunk()

    async def aclose(self) -> None:
        self._end(None)  # if still running, the client left mid-stream: no verdict on the upstream
        await self._upstream.aclose()

    def _end(self, error: ProviderError | DeadlineExceeded | None) -> None:
        finished, self._finished = self._finished, None
        if finished is not None:
            finished(error if isinstance(error, ProviderError) else None)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        due = min(self._last_event_at + self._stall_timeout, loop.time() + self._deadline.remaining())
        self._timer = loop.call_at(due, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._deadline.remaining() <= 0:
            self._stop(DeadlineExceeded(self._deadline.seconds))
        elif loop.time() - self._last_event_at >= self._stall_timeout:
            self._stop(StreamInterrupted(f"the upstream sent nothing for {self._stall_timeout:g} s; the stream was cut"))
        else:
            self._arm(loop)

    def _stop(self, error: StreamInterrupted | DeadlineExceeded) -> None:
        self._stopped_by = error
        # Closing the upstream wakes the pending read, which then ends or raises.
        asyncio.ensure_future(self._upstream.aclose())
