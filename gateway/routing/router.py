"""Maps a model name to deployments and gets the request answered once, within its deadline.

A model is addressed by its public name from ``models:``, or directly as
``provider/upstream-model`` for any configured provider. For one request::

    for each model: the requested one, then its fallback chain
        for each of its deployments, in the balancer's order, skipping those cooling down
            call it, retrying what is retryable (backoff with full jitter, or the upstream's Retry-After)
            answered -> done
            error    -> next deployment if the error allows a fallback, else stop
        the model failed -> next model: the general chain, or the context-window /
                            content-policy chain when that was the error

Whether an error is retried or may fall back is an attribute of its class
(``ProviderError.retryable`` / ``fallback_allowed``), never read from its
text. Every wait and call is bounded by the request's one :class:`Deadline`.
A stream counts as answered once its first event has arrived: until then a
failure is retried or falls back unseen by the client.

A request that came through another API's door (Anthropic's Messages,
OpenAI's Responses) carries its own form too (``NativeForm``): a deployment
that speaks that API gets it untranslated, any other the chat translation.
A deployment whose translation would leave out what it may not (anything,
when the model's ``unsupported_params`` is ``reject``) is skipped; a model
with no other is a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gateway.config import GatewayConfig
from gateway.errors import DeadlineExceeded, NoDeploymentAvailable, Untranslatable
from gateway.routing.balancer import DeploymentState, order
from gateway.routing.deadline import Deadline, DeadlineGuard
from gateway.routing.deployment import Deployment
from gateway.routing.fallbacks import FallbackPolicy, without_routing_fields
from gateway.routing.local_first import RouteReason, local_first_order
from gateway.routing.stream_guard import GuardedStream
from gateway.routing.table import ModelTable
from providers import (
    Endpoint,
    Provider,
    ProviderError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamStream,
)
from providers.base import SpeaksDoor
from providers.errors import (
    ContextWindowExceeded,
    EndpointNotOffered,
    StreamInterrupted,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from providers.tokens import tokens_needed
from providers.wire import PROMPT_FIELDS, Door, Header

if TYPE_CHECKING:
    from gateway.telemetry.tracing import Tracing

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class Trace:
    """What the router did for one request; sent back as response headers."""

    attempts: int = 0  # upstream calls made
    models: list[str] = field(default_factory=list)  # models tried, in order
    route_reason: RouteReason | None = None  # routing local_first: where the request started, and why

    def headers(self) -> dict[str, str]:
        headers = {Header.ATTEMPTS: str(self.attempts), Header.FALLBACK_CHAIN: ",".join(self.models)}
        if self.route_reason is not None:
            headers[Header.ROUTE_REASON] = self.route_reason
        return headers


@dataclass(frozen=True, slots=True)
class Routed(Generic[T]):
    """An upstream's answer, the deployment that gave it, and how it was reached."""

    deployment: Deployment
    answer: T
    trace: Trace
    native: bool = False  # the answer is in the door's own API: the request's NativeForm was sent


@dataclass(frozen=True, slots=True)
class NativeForm:
    """A request as its client wrote it in another API, for a deployment that speaks that API (``SpeaksDoor``).

    ``lost``: what its chat translation leaves out, in the order met. Sent
    translated, the first is refused when the model's ``unsupported_params``
    is ``reject``, or when it may not be dropped at all.
    """

    door: Door
    payload: dict[str, Any]
    lost: tuple[Lost, ...] = ()


@dataclass(frozen=True, slots=True)
class Lost:
    """A field a translation cannot carry: its param, why (a clause: "has no equivalent in chat completions")."""

    param: str
    why: str
    # False for a field whose loss would change what the request means (a conversation held elsewhere).
    droppable: bool = True


class Router:
    """The resilience loops over the model table: fallbacks, deployments in the balancer's order, retries."""

    def __init__(
        self,
        config: GatewayConfig,
        providers: Mapping[str, Provider],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        previous: Router | None = None,
    ) -> None:
        """``previous``: the router a configuration reload replaces (what its table learned is kept)."""
        self._config = config.router
        self.table = ModelTable(config, providers, clock, previous.table if previous is not None else None)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._fallbacks = FallbackPolicy(config)
        self.tracing: Tracing | None = None  # set by the app when traces are on: a span per upstream call

    @property
    def default_timeout(self) -> float:
        """Seconds a request may take when the client sets no ``x-switchyard-timeout``."""
        return self._config.timeout

    def deadline(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now, on the router's clock."""
        return Deadline(seconds, self._clock)

    # send and open_stream return _route's coroutine rather than awaiting it:
    # every coroutine frame between the relay and the socket is resumed on
    # each of the request's I/O waits, so each layer costs on every request.

    def send(
        self,
        endpoint: Endpoint,
        payload: dict[str, Any],
        deadline: Deadline,
        request_id: str | None = None,
        trace: Trace | None = None,
        headers: Mapping[str, str] | None = None,
        native: NativeForm | None = None,
    ) -> Awaitable[Routed[UpstreamResponse]]:
        """The first answer; ``trace``, if given, records the attempts and models tried, failure or not.

        ``headers``: client headers a provider may pass on (UpstreamRequest.headers);
        ``native``: the request in its door's own API, for a deployment that speaks it.
        """
        def call(state: DeploymentState, request: UpstreamRequest) -> Awaitable[UpstreamResponse]:
            return state.deployment.provider.send(request)

        return self._route(self._job(endpoint, payload, request_id, deadline, call, trace, headers, native))

    def open_stream(
        self,
        endpoint: Endpoint,
        payload: dict[str, Any],
        deadline: Deadline,
        request_id: str | None = None,
        trace: Trace | None = None,
        headers: Mapping[str, str] | None = None,
        native: NativeForm | None = None,
    ) -> Awaitable[Routed[GuardedStream]]:
        """An event stream whose first events have arrived (so failing over is still invisible until then)."""
        config = self._config

        async def call(state: DeploymentState, request: UpstreamRequest) -> GuardedStream:
            limit = min(config.stream_first_event_timeout, deadline.remaining())
            first, rest, upstream = await _bounded(deadline, limit, _first_events(state.deployment.provider, request))
            state.in_flight += 1  # until the stream ends, for least_busy

            def finished(error: ProviderError | None) -> None:
                state.in_flight -= 1
                if error is not None:
                    self._record_failure(state, error)

            return GuardedStream(first, rest, upstream, config.stream_stall_timeout, deadline, finished)

        return self._route(self._job(endpoint, payload, request_id, deadline, call, trace, headers, native))

    def _job(
        self, endpoint: Endpoint, payload: dict[str, Any], request_id: str | None, deadline: Deadline,
        call: Callable[[DeploymentState, UpstreamRequest], Awaitable[T]], trace: Trace | None,
        headers: Mapping[str, str] | None, native: NativeForm | None,
    ) -> _Job[T]:  # fmt: skip
        trace = trace or Trace()
        if self.tracing is not None:
            call = self.tracing.traced(call, trace, endpoint)
        return _Job(endpoint, payload, request_id, deadline, call, trace, headers or {}, native)

    async def _route(self, job: _Job[T]) -> Routed[T]:
        requested = job.payload["model"]
        self.table.states_for(requested)  # an unknown model is a 404 before anything else
        plan = self._fallbacks.plan(requested, job.payload)
        queue = [requested, *plan.general]
        # Counted once, and only for a model with a context_window; a long prompt off the event loop.
        needed = _Memo(lambda: asyncio.ensure_future(tokens_needed(job.endpoint, job.payload)))
        trace = job.trace
        try:
            with DeadlineGuard(job.deadline):
                while True:
                    model = queue.pop(0)
                    trace.models.append(model)
                    try:
                        await self._check_context_window(model, job.endpoint, needed)
                        return await self._answer_from_model(model, job)
                    except (ProviderError, NoDeploymentAvailable) as error:
                        switched = self._fallbacks.after(error, model, plan)
                        if switched is not None:
                            queue = list(switched)
                        elif not (error.fallback_allowed and plan.enabled):
                            raise
                        queue = [m for m in queue if m not in trace.models]
                        if not queue:
                            raise
        except (ProviderError, NoDeploymentAvailable, DeadlineExceeded) as error:
            error.headers = {**error.headers, **self._retry_after_header(error), **trace.headers()}
            raise

    def _retry_after_header(self, error: Exception) -> dict[str, str]:
        """The upstream's Retry-After for the client, within ``retry_after_max`` (NoDeploymentAvailable sets its own).

        Whole seconds (RFC 9110 delay-seconds), rounded up unless that would pass the cap.
        """
        if not isinstance(error, ProviderError) or error.retry_after is None:
            return {}
        cap = self._config.retries.retry_after_max
        return {Header.RETRY_AFTER: str(min(math.ceil(error.retry_after), math.floor(cap)))}

    async def _check_context_window(self, model: str, endpoint: Endpoint, needed: _Memo[asyncio.Future[int]]) -> None:
        """Raise ContextWindowExceeded, before any call, when the request clearly does not fit ``model``."""
        window = self.table.context_window(model)
        if window is not None and (tokens := await needed()) > window:
            raise ContextWindowExceeded(
                f"This request needs about {tokens} tokens (prompt and max_tokens); `{model}` takes {window}.",
                param=PROMPT_FIELDS[endpoint],
            )

    async def _answer_from_model(self, model: str, job: _Job[T]) -> Routed[T]:
        states = [state for state in self.table.states_for(model) if state.deployment.provider.offers(job.endpoint)]
        if not states:
            deployment = self.table.states_for(model)[0].deployment
            raise EndpointNotOffered(job.endpoint.value, deployment.provider_name)
        payload = without_routing_fields(job.payload)
        policy = self.table.unsupported_params(model)
        last_error: ProviderError | None = None
        refusal: Untranslatable | None = None  # a deployment skipped: the translation would lose what it may not
        for state in self._order(model, states, job.trace):
            if not state.breaker.try_acquire():
                continue
            body, door = payload, None
            if (native := job.native) is not None:
                provider = state.deployment.provider
                if isinstance(provider, SpeaksDoor) and provider.speaks(native.door):
                    body, door = without_routing_fields(native.payload), native.door
                elif refused := next((lost for lost in native.lost if policy == "reject" or not lost.droppable), None):
                    state.breaker.release()  # no call made: no verdict on the deployment
                    refusal = refusal or Untranslatable(refused.param, refused.why, refused.droppable)
                    continue
            request = UpstreamRequest(
                job.endpoint, {**body, "model": state.deployment.model}, job.request_id, policy, job.headers, door
            )
            try:
                answer = await self._with_retries(state, request, job)
            except ProviderError as error:
                if not error.fallback_allowed:
                    raise
                last_error = error
                continue
            return Routed(state.deployment, answer, job.trace, door is not None)
        if refusal is not None:  # what the client can change, before what an upstream did
            raise refusal
        if last_error is not None:
            raise last_error
        raise NoDeploymentAvailable(model, min(s.breaker.seconds_until_probe() for s in states))

    def _order(self, model: str, states: list[DeploymentState], trace: Trace) -> list[DeploymentState]:
        """The model's deployments in the order to try them (local_first reads the engine's room, and says why)."""
        strategy = self.table.strategy(model)
        if strategy != "local_first":
            return order(states, strategy, self._rng)
        ordered, reason = local_first_order(states, self.table.local_first(model), self.table.in_flight_on_engine)
        if trace.route_reason is None:  # the requested model's verdict, not a fallback's
            trace.route_reason = reason
        return ordered

    async def _with_retries(self, state: DeploymentState, request: UpstreamRequest, job: _Job[T]) -> T:
        """Call one deployment until it answers, fails for good, or retrying would outlast the deadline.

        The loop is written out, not run by tenacity's AsyncRetrying: that
        machinery cost about 35 µs per request even when the first call
        answers (a sixth of the gateway's CPU per request). The call is
        awaited here, not in a helper, to keep the await chain short (see ``send``).
        """
        attempts, deadline, trace = self._config.retries.attempts, job.deadline, job.trace
        for attempt in range(1, attempts + 1):
            if deadline.remaining() <= 0:
                state.breaker.release()
                raise DeadlineExceeded(deadline.seconds)
            trace.attempts += 1
            started = self._clock()
            state.in_flight += 1
            try:
                answer = await job.call(state, request)
            except ProviderError as error:
                if isinstance(error, UpstreamTimeout) and deadline.remaining() <= 0:
                    state.breaker.release()  # the request ran out of time: no verdict on the deployment
                    raise DeadlineExceeded(deadline.seconds) from None
                if not error.fallback_allowed:
                    self._record_success(state)  # the deployment is fine; the request is at fault
                    raise
                if not error.trips_breaker:
                    state.breaker.release()  # no call was made (a local model not loaded): no verdict
                    raise
                self._record_failure(state, error)
                if not error.retryable or attempt == attempts or state.breaker.state != "closed":
                    raise
                wait = self._retry_wait(error, attempt)
                if wait >= deadline.remaining():
                    raise
            except BaseException:
                state.breaker.release()  # cancelled (the client left) or the deadline: no verdict on the deployment
                raise
            else:
                state.observe_latency(self._clock() - started)
                self._record_success(state)
                return answer
            finally:
                state.in_flight -= 1
            await self._sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_wait(self, error: ProviderError, attempt: int) -> float:
        """Seconds before retry number ``attempt``: the upstream's Retry-After (capped) if it sent one, else backoff."""
        if error.retry_after is not None:
            return min(error.retry_after, self._config.retries.retry_after_max)
        retries = self._config.retries
        # Full jitter (AWS's "exponential backoff and jitter"): spreads the retries of many clients out.
        return self._rng.uniform(0, min(retries.backoff_max, retries.backoff_initial * 2 ** (attempt - 1)))

    def _record_success(self, state: DeploymentState) -> None:
        state.record_success()
        state.breaker.record_success()

    def _record_failure(self, state: DeploymentState, error: ProviderError) -> None:
        state.record_failure(f"{error.status_code} {error.message}")
        state.breaker.record_failure()


@dataclass(frozen=True, slots=True)
class _Job(Generic[T]):
    """One request as the router's loops carry it: what to send, how to call a deployment, and its record."""

    endpoint: Endpoint
    payload: dict[str, Any]  # the client's body, never changed
    request_id: str | None
    deadline: Deadline
    call: Callable[[DeploymentState, UpstreamRequest], Awaitable[T]]
    trace: Trace
    headers: Mapping[str, str]  # client headers a provider may pass on
    native: NativeForm | None  # the request in its door's own API, for a deployment that speaks it


class _Memo(Generic[T]):
    """A value computed on first use, then kept."""

    def __init__(self, compute: Callable[[], T]) -> None:
        self._compute: Callable[[], T] | None = compute
        self._value: T | None = None

    def __call__(self) -> T:
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value  # type: ignore[return-value]


async def _bounded(deadline: Deadline, seconds: float, call: Awaitable[T]) -> T:
    """``await call`` for at most ``seconds``: past the request's deadline that is a 504, before it a retryable timeout."""
    if seconds <= 0:
        raise DeadlineExceeded(deadline.seconds)
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        if deadline.remaining() <= 0:
            raise DeadlineExceeded(deadline.seconds) from None
        raise UpstreamTimeout(f"the upstream sent no event within {seconds:g} s") from None


async def _first_events(
    provider: Provider, request: UpstreamRequest
) -> tuple[list[bytes], AsyncIterator[list[bytes]], UpstreamStream]:
    """Open a stream and read its first events: (those events, the rest, the stream).

    A stream that ends or breaks before any event is a retryable failure.
    """
    stream = await provider.open_stream(request)
    rest = aiter(stream)
    try:
        first = await anext(rest)
    except StopAsyncIteration:
        await stream.aclose()
        raise UpstreamUnreachable("the upstream ended the stream before its first event", provider=provider.name) from None
    except StreamInterrupted as error:
        await stream.aclose()
        raise UpstreamUnreachable(error.message, provider=provider.name) from None
    except BaseException:
        await stream.aclose()
        raise
    return first, rest, stream
