"""Batches passed whole to a provider's own Batch API, for its discount (a model's ``batch: {mode: native}``).

A batch whose lines all name one such model is not sent line by line: the
gateway rewrites its input file for the provider (each ``body.model`` the
deployment's name there, the preset's parameter map applied), uploads it,
creates the provider's batch, reads it every ``poll_interval`` seconds, and
once it has ended, maps the provider's output and error files back onto the
lines by ``custom_id``::

    plan ──► upload (NativeState.file_id) ──► create (creating, then batch_id) ──► poll ──► collect ──► ending

Each step is kept in the batch's record before the next is taken, so a
restart carries on where it stopped and never creates a second batch at the
provider: a create whose answer was lost (``creating`` kept, no
``batch_id``) is first looked for among the provider's batches by the tag
in its metadata. Each line's result is kept once (``BatchStore.put_result``)
and, only then, counted: in the ledger, the metrics, the key's token and
dollar budgets and the webhooks, as a live request is, at the provider's
batch price (``NativeState.discount`` off the ordinary one).

A line the preset's parameter map refuses (``unsupported_params: reject``)
is answered with its 400 here and left out of the upload.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from gateway.batches.input import BatchLine
from gateway.batches.lines import Answer, answered
from gateway.batches.records import LineResult, NativeState, StoredBatch
from gateway.batches.store import BatchStore
from gateway.batches.targets import Serving
from gateway.config import GatewayConfig
from gateway.keys.accounting import Outcome
from gateway.keys.keyring import ApiKey
from gateway.routing.deployment import Deployment
from providers import HasBatchAPI, HostedProviderConfig
from providers.batch_api import UpstreamBatches
from providers.errors import ProviderError, UpstreamProtocolError
from providers.params import adapt
from providers.usage import reported_usage, responses_usage
from providers.wire import Door, Endpoint

logger = logging.getLogger(__name__)

# The provider's batch statuses after which nothing of it changes.
UPSTREAM_ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
# A provider that cannot be reached is asked again at the poll interval, but at least this often.
MAX_RETRY_WAIT = 60.0


def plan(config: GatewayConfig, endpoint: str, models: list[str]) -> NativeState | None:
    """The provider's Batch API that runs a batch of ``models`` for ``endpoint``; None: the gateway runs it line by line.

    Only a batch whose lines all name one model under ``batch: {mode: native}``,
    for an endpoint its provider offers, is passed on.
    """
    target = config.native_batch_target(models[0]) if len(models) == 1 else None
    if target is None:
        if any(config.native_batch_target(model) is not None for model in models):
            logger.info("a batch naming several models (%s) is run by the gateway, at the ordinary price", ", ".join(models))
        return None
    deployment, discount = target
    provider = config.providers[deployment.provider]
    assert isinstance(provider, HostedProviderConfig)  # native_batch_target
    path = endpoint.removeprefix("/v1/")
    if not (path in provider.preset.endpoints or (path == Door.RESPONSES and Door.RESPONSES in provider.preset.native_doors)):
        logger.info("provider %s has no %s: this batch is run by the gateway, at the ordinary price", deployment.provider, endpoint)
        return None
    batch = config.models[models[0]].batch
    assert batch is not None
    return NativeState(deployment.provider, deployment.model, discount, batch.poll_interval)


class ProviderBatches:
    """Takes native batches from their hand-over to their end (``BatchRunner`` calls ``advance``)."""

    def __init__(self, store: BatchStore, serving: Serving) -> None:
        self._store = store
        self._serving = serving

    async def advance(
        self, batch: StoredBatch, lines: list[BatchLine], key: ApiKey | None, cancelled: asyncio.Event,
        stopping: asyncio.Event,
    ) -> str | None:  # fmt: skip
        """Run ``batch`` at its provider to its end: the status it ends in, or None when the gateway stops first."""
        state = batch.native
        assert state is not None
        api = self._api(state.provider)
        if api is None:
            batch.errors = [_error("native_provider_missing", f"The provider '{state.provider}' that runs this batch is no "
                                   "longer configured with a Batch API.")]  # fmt: skip
            return "failed"
        while state.batch_id is None:
            if cancelled.is_set() and not state.creating:  # nothing was handed over
                await _delete_quietly(api, state.file_id, batch.id)
                return "cancelled"
            try:
                if not await self._hand_over(batch, lines, api):
                    return "completed"  # every line was answered here: nothing to send
            except ProviderError as error:
                if not error.retryable:
                    batch.errors = [_error("native_batch_refused", f"Provider '{state.provider}' refused the batch: {error.message}")]
                    return "failed"
                logger.warning("batch %s: provider %s could not take it (%s); trying again", batch.id, state.provider, error.message)
                if await _wait(min(error.retry_after or state.poll_interval, MAX_RETRY_WAIT), stopping):
                    return None
        return await self._follow(batch, lines, key, api, cancelled, stopping)

    async def _hand_over(self, batch: StoredBatch, lines: list[BatchLine], api: UpstreamBatches) -> bool:
        """Upload the input and create the provider's batch, each step kept; False when no line is left to send."""
        state = batch.native
        assert state is not None
        if state.creating:  # a create was sent before a stop: its batch may exist
            found = await api.find(batch.id)
            if found is not None and isinstance(found.get("id"), str):
                await self._created(batch, found)
                return True
        if state.file_id is None:
            content = await self._upstream_input(batch, lines, api)
            if content is None:
                return False
            state.file_id = await api.upload(content, f"{batch.id}.jsonl")
            await self._store.put_batch(batch)
        state.creating = True
        await self._store.put_batch(batch)
        await self._created(batch, await api.create(state.file_id, batch.endpoint, batch.id))
        return True

    async def _created(self, batch: StoredBatch, upstream: dict[str, Any]) -> None:
        state = batch.native
        assert state is not None
        batch_id = upstream.get("id")
        if not isinstance(batch_id, str) or not batch_id:
            raise UpstreamProtocolError(f"provider '{state.provider}' created a batch without an id", provider=state.provider)
        state.batch_id, state.creating = batch_id, False
        _read(state, upstream)
        await self._store.put_batch(batch)
        logger.info("batch %s: run by provider %s as %s", batch.id, state.provider, batch_id)

    async def _upstream_input(self, batch: StoredBatch, lines: list[BatchLine], api: UpstreamBatches) -> bytes | None:
        """The input file as the provider takes it; a line its parameter map refuses is answered here instead."""
        state = batch.native
        assert state is not None
        generation = self._serving()
        provider = generation.config.providers[state.provider]
        assert isinstance(provider, HostedProviderConfig)
        model = generation.config.models.get(batch.model or "")
        policy = model.unsupported_params if model is not None else "drop"
        mapped = batch.endpoint.removeprefix("/v1/") in (Endpoint.CHAT, Endpoint.COMPLETIONS)
        url, done = api.line_url(batch.endpoint), await self._store.answered(batch.id)
        out = bytearray()
        for line in lines:
            if line.index in done:
                continue
            body = {**line.body, "model": state.model}
            if mapped and provider.preset.params:
                try:
                    body, _ = adapt(body, provider.preset.params, policy, state.provider)
                except ProviderError as error:
                    await self._store.put_result(batch.id, answered(line, Answer(error.status_code, error.to_dict(), None),
                                                                    f"{batch.id}-{line.index}"))  # fmt: skip
                    continue
            out += orjson.dumps({"custom_id": line.custom_id, "method": "POST", "url": url, "body": body}) + b"\n"
        return bytes(out) or None

    async def _follow(
        self, batch: StoredBatch, lines: list[BatchLine], key: ApiKey | None, api: UpstreamBatches,
        cancelled: asyncio.Event, stopping: asyncio.Event,
    ) -> str | None:  # fmt: skip
        """Read the provider's batch until it ends (a cancel passed on), then collect its results."""
        state = batch.native
        assert state is not None and state.batch_id is not None
        while True:
            wait = state.poll_interval
            try:
                if cancelled.is_set() and not state.cancel_sent:
                    _read(state, await api.cancel(state.batch_id))
                    state.cancel_sent = True
                    await self._store.put_batch(batch)
                seen = (state.status, state.counts)
                upstream = await api.retrieve(state.batch_id)
                _read(state, upstream)
                if state.status in UPSTREAM_ENDED:
                    return await self._collect(batch, lines, key, api, upstream)
                if (state.status, state.counts) != seen:
                    await self._store.put_batch(batch)
            except ProviderError as error:
                if not error.retryable:
                    batch.errors = [_error("native_batch_lost", f"Provider '{state.provider}' answered for batch "
                                           f"{state.batch_id}: {error.message}")]  # fmt: skip
                    return "failed"
                logger.warning("batch %s: provider %s could not be read (%s); trying again", batch.id, state.provider, error.message)
                wait = min(error.retry_after or wait, MAX_RETRY_WAIT)
            # A cancel asked for while it waits is passed on at once; one that failed waits like a read.
            if await _wait(wait, stopping, None if state.cancel_sent or cancelled.is_set() else cancelled):
                return None

    async def _collect(
        self, batch: StoredBatch, lines: list[BatchLine], key: ApiKey | None, api: UpstreamBatches, upstream: dict[str, Any]
    ) -> str:
        """The provider's output and error files onto the lines, each result kept once and counted once."""
        state = batch.native
        assert state is not None
        if state.status == "failed":
            errors = upstream.get("errors")
            data = errors.get("data") if isinstance(errors, dict) else None
            batch.errors = [e for e in data if isinstance(e, dict)] if isinstance(data, list) and data else [
                _error("native_batch_failed", f"Provider '{state.provider}' failed batch {state.batch_id}.")]
            return "failed"
        by_id = {line.custom_id: line for line in lines}
        for field in ("output_file_id", "error_file_id"):
            file_id = upstream.get(field)
            if not isinstance(file_id, str) or not file_id:
                continue
            for raw in (await api.content(file_id)).splitlines():
                row = _row(raw)
                line = by_id.get(row.get("custom_id")) if row is not None else None
                if line is None:
                    logger.warning("batch %s: provider %s answered a line it was not sent; left out", batch.id, state.provider)
                    continue
                response = row.get("response") if isinstance(row.get("response"), dict) else None  # type: ignore[union-attr]
                status = response.get("status_code") if response is not None else None
                ok = isinstance(status, int) and 200 <= status < 300
                if await self._store.put_result(batch.id, LineResult(line.index, ok, row)):  # type: ignore[arg-type]
                    await self._count(batch, line, key, status if isinstance(status, int) else 500,
                                      response.get("body") if response is not None else None)  # fmt: skip
        await _delete_quietly(api, state.file_id, batch.id)  # the upload was the gateway's own; its outputs stay the provider's
        return {"completed": "completed", "expired": "expired", "cancelled": "cancelled"}[state.status or "completed"]

    async def _count(self, batch: StoredBatch, line: BatchLine, key: ApiKey | None, status: int, body: Any) -> None:
        """One answered line, as a request of its creator: ledger, metrics, budgets, webhooks; at the batch price."""
        state = batch.native
        assert state is not None
        generation = self._serving()
        adapter = generation.adapters.get(state.provider)
        if adapter is None:
            return
        outcome = Outcome(f"{batch.id}-{line.index}", key)
        outcome.model = line.body["model"]
        outcome.answered_by = Deployment(state.provider, state.model, adapter)
        outcome.provider, outcome.deployment, outcome.status = state.provider, state.model, status
        outcome.discount = state.discount
        responses = batch.endpoint == "/v1/responses"
        if 200 <= status < 300:
            outcome.usage = responses_usage(body) if responses else reported_usage(body)
        endpoint: Endpoint | Door = Door.RESPONSES if responses else Endpoint(batch.endpoint.removeprefix("/v1/"))
        await generation.accounting.finish_answered(endpoint, outcome)

    def _api(self, provider_name: str) -> UpstreamBatches | None:
        adapter = self._serving().adapters.get(provider_name)
        return adapter.batches() if isinstance(adapter, HasBatchAPI) else None


async def _delete_quietly(api: UpstreamBatches, file_id: str | None, batch_id: str) -> None:
    """Delete the input file the gateway uploaded, if it did; a failure is only logged (the file is the provider's to expire)."""
    if file_id is None:
        return
    try:
        await api.delete(file_id)
    except ProviderError as error:
        logger.info("batch %s: its input file %s was not deleted at the provider (%s)", batch_id, file_id, error.message)


def _read(state: NativeState, upstream: dict[str, Any]) -> None:
    """The provider's status and request counts, from its Batch object."""
    status = upstream.get("status")
    if isinstance(status, str):
        state.status = status
    counts = upstream.get("request_counts")
    if isinstance(counts, dict):
        state.counts = {name: value for name, value in counts.items() if isinstance(value, int)}


def _row(raw: bytes) -> dict[str, Any] | None:
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": None}


async def _wait(seconds: float, stopping: asyncio.Event, also: asyncio.Event | None = None) -> bool:
    """Sleep ``seconds``, or less when the gateway stops or ``also`` is set; True when it stops."""
    events = [stopping] if also is None else [stopping, also]
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    return stopping.is_set()

