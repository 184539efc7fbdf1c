"""Runs batches in this process: each line through the relay, at ``server.batch_concurrency`` lines at once.

A batch's life::

    validating ─► in_progress ─► finalizing ─► completed
        │             ├─ cancel ─► cancelling ─► (finalizing) ─► cancelled
        │             └─ past expires_at ─► (finalizing) ─► expired: lines never sent get batch_expired errors
        └─ its input file gone at a resume ─► failed

Exactly once in the output: a line's result is kept (``BatchStore.put_result``,
one row per line, durable) before it counts as done, and a resumed batch
sends only the lines with no result. A line whose answer came but whose
result was not yet written when the process died is sent again: at least
once to the upstream, exactly once in the output. A graceful stop sends no
new line, waits up to ``DRAIN_SECONDS`` for those in flight, and leaves the
batch in_progress for the next start.

A batch is run by the process holding its lease in the store (renewed every
``LEASE_SECONDS / 3``), so replicas sharing PostgreSQL never run one batch
twice at once; a lease left by a killed process lapses after ``LEASE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable

import orjson

from gateway.batches.bodies import FileBodies
from gateway.batches.input import BatchLine, read_lines
from gateway.batches.lines import Answer, answered, send_line, unanswered
from gateway.batches.native import ProviderBatches, plan
from gateway.batches.records import ENDED, NativeState, Owner, StoredBatch, StoredFile
from gateway.batches.store import BatchStore
from gateway.batches.targets import Serving
from gateway.config import ADMIN_KEY_NAME
from gateway.errors import BatchNotCancellable, InvalidBatchInput, ModelNotFound
from gateway.keys.keyring import ApiKey
from gateway.webhooks import Event, WebhookSender
from gateway.webhooks.events import BatchFinished

logger = logging.getLogger(__name__)

LEASE_SECONDS = 30.0
DRAIN_SECONDS = 10.0  # a graceful stop waits this long for the lines in flight, then cuts them (sent again later)
# A rate limit with no Retry-After: wait this long, and never longer than the cap whatever it says.
DEFAULT_LIMIT_WAIT, MAX_LIMIT_WAIT = 1.0, 60.0


class BatchRunner:
    def __init__(
        self, store: BatchStore, bodies: FileBodies, serving: Serving, concurrency: int,
        webhooks: WebhookSender | None = None, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self._store = store
        self._bodies = bodies
        self._serving = serving
        self._webhooks = webhooks
        self._clock = clock
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None  # made on the loop that runs the batches
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, StoredBatch] = {}  # the one copy of each batch run here: what its task changes
        self._cancels: dict[str, asyncio.Event] = {}
        self._stopping = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._native = ProviderBatches(store, serving)
        self.runner_id = f"runner-{uuid.uuid4().hex}"

    def plan(self, endpoint: str, models: list[str]) -> NativeState | None:
        """The provider's Batch API a new batch of ``models`` is passed to, under the configuration serving now."""
        return plan(self._serving().config, endpoint, models)

    def unserved(self, lines: list[BatchLine]) -> BatchLine | None:
        """The first line naming a model nobody serves here (a batch is refused for it, as OpenAI's is)."""
        table = self._serving().router.table
        known: dict[str, bool] = {}
        for line in lines:
            model = line.body["model"]
            if model not in known:
                try:
                    known[model] = bool(table.deployments_for(model))
                except ModelNotFound:
                    known[model] = False
            if not known[model]:
                return line
        return None

    async def admit_native(self, key: ApiKey, model: str) -> None:
        """A native batch is billed by its provider at its end: refused (429) at creation when its key's dollar
        budget for the model is spent already; the key's rpm and tpm are not its (the provider's batch quota is)."""
        await self._serving().accounting.refuse_if_spent(key, model)

    async def start(self) -> None:
        """Resume every batch that has not ended, in the background (a database down at start is retried)."""
        self._slots = asyncio.Semaphore(self._concurrency)
        self._renewer = asyncio.create_task(self._tend())

    def run(self, batch: StoredBatch, key: ApiKey | None = None, take_over: bool = False) -> None:
        """Run ``batch`` in the background; ``key``: its creator's policy (else looked up by its owner's name)."""
        if self._stopping.is_set() or batch.id in self._runs:
            return
        self._cancels[batch.id] = asyncio.Event()
        self._running[batch.id] = batch
        task = asyncio.create_task(self._run(batch, key, take_over), name=f"batch {batch.id}")
        self._runs[batch.id] = task
        task.add_done_callback(lambda _: self._forget(batch.id))

    def _forget(self, batch_id: str) -> None:
        self._runs.pop(batch_id, None)
        self._cancels.pop(batch_id, None)
        self._running.pop(batch_id, None)

    async def cancel(self, batch: StoredBatch) -> StoredBatch:
        """Mark ``batch`` cancelling: no new line is sent; once those in flight end it is cancelled.

        BatchNotCancellable (409) when it has ended; a batch cancelling already is left as it is.
        """
        if batch.status in ENDED:
            raise BatchNotCancellable(batch.id, batch.status)
        if batch.status == "cancelling":
            return batch
        batch = self._running.get(batch.id, batch)
        batch.status = "cancelling"
        batch.times["cancelling_at"] = int(self._clock())
        await self._store.put_batch(batch)
        if (event := self._cancels.get(batch.id)) is not None:
            event.set()
        elif batch.id not in self._runs:  # nobody runs it here (it may be another replica's): run it to its end
            self.run(batch)
        return batch

    async def aclose(self) -> None:
        """Stop: no new line; wait up to DRAIN_SECONDS for those in flight, cut the rest; leases released."""
        self._stopping.set()
        if self._renewer is not None:
            self._renewer.cancel()
        runs = list(self._runs.values())
        if runs:
            _, late = await asyncio.wait(runs, timeout=DRAIN_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*runs, return_exceptions=True)

    async def _run(self, batch: StoredBatch, key: ApiKey | None, take_over: bool = False) -> None:
        now = self._clock()
        # take_over: a store no other process uses (SQLite) at start: a lease left there is a dead process's.
        if not await self._store.claim(batch.id, self.runner_id, now + LEASE_SECONDS, math.inf if take_over else now):
            return  # another runner holds it
        try:
            await self._advance(batch, key)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batch %s stopped on an unexpected error; it resumes at the next start", batch.id)
        finally:
            await asyncio.shield(self._store.release(batch.id, self.runner_id))

    async def _advance(self, batch: StoredBatch, key: ApiKey | None) -> None:
        """Take ``batch`` from wherever it is to its end (or as far as a stop allows)."""
        if batch.status == "validating":
            await self._set(batch, "in_progress")
        if batch.status in ("in_progress", "cancelling"):
            content = await self._bodies.read(batch.input_file_id)
            if content is None:
                batch.errors = [{"code": "input_file_missing", "message": f"The input file {batch.input_file_id} was deleted.",
                                 "param": "input_file_id", "line": None}]  # fmt: skip
                await self._finish(batch, "failed")
                return
            try:
                lines = await asyncio.to_thread(read_lines, content, batch.endpoint)
            except InvalidBatchInput as error:  # checked at creation: only a file replaced on disk gets here
                batch.errors = [{"code": "invalid_input", "message": error.message, "param": "input_file_id", "line": None}]
                await self._finish(batch, "failed")
                return
            if batch.native is not None:
                await self._run_at_provider(batch, lines, key)
                return
            ended = await self._answer_lines(batch, lines, key)
            if not ended:
                return  # stopping: the batch stays as it is for the next start
            if batch.status != "cancelling" and self._clock() >= batch.expires_at:
                await self._answer_rest(batch, lines, "batch_expired", "This line was not sent before the batch expired.")
                await self._finish(batch, "expired")
                return
            await self._finish(batch, "cancelled" if batch.status == "cancelling" else "completed")
        elif batch.status == "finalizing":  # stopped while writing its files: write them again, same ids
            await self._finish(batch, batch.ending or "completed")

    async def _run_at_provider(self, batch: StoredBatch, lines: list[BatchLine], key: ApiKey | None) -> None:
        """A native batch: its provider's Batch API runs it (``native.py``); the ending is written here as any batch's."""
        cancelled = self._cancels.get(batch.id) or asyncio.Event()
        if batch.status == "cancelling":
            cancelled.set()
        policy = key or self._policy(batch.owner)
        ending = await self._native.advance(batch, lines, policy if isinstance(policy, ApiKey) else None, cancelled, self._stopping)
        if ending is None:
            return  # stopping: it carries on at the next start
        if ending == "expired":
            await self._answer_rest(batch, lines, "batch_expired", "This line was not answered before the batch expired.")
        elif ending == "completed":  # a provider's completed batch holds every line; one it left out is said so
            await self._answer_rest(batch, lines, "missing_from_provider_output",
                                    f"Provider '{batch.native.provider}' ended its batch without an answer for this line.")  # type: ignore[union-attr]
        await self._finish(batch, ending)

    async def _answer_lines(self, batch: StoredBatch, lines: list[BatchLine], key: ApiKey | None) -> bool:
        """Send the lines that have no result; True once none is left to send (all answered, cancelled or expired)."""
        assert self._slots is not None
        done = await self._store.answered(batch.id)
        cancelled = self._cancels.get(batch.id) or asyncio.Event()
        if batch.status == "cancelling":
            cancelled.set()
        key = key or self._policy(batch.owner)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            for line in lines:
                if line.index in done:
                    continue
                await self._slots.acquire()
                if self._stopping.is_set() or cancelled.is_set() or self._clock() >= batch.expires_at:
                    self._slots.release()
                    break
                task = asyncio.create_task(self._answer_line(batch, line, key))
                in_flight.add(task)
                task.add_done_callback(lambda t: (in_flight.discard(t), self._slots.release()))  # type: ignore[union-attr]
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        except asyncio.CancelledError:
            for task in in_flight:
                task.cancel()
            raise
        return not self._stopping.is_set()

    async def _answer_line(self, batch: StoredBatch, line: BatchLine, key: ApiKey | None | Exception) -> None:
        request_id = f"{batch.id}-{line.index}"
        if isinstance(key, Exception):
            answer = Answer(401, {"error": {"message": str(key), "type": "invalid_request_error", "param": None,
                                            "code": "invalid_api_key"}}, None)  # fmt: skip
        else:
            while True:
                generation = self._serving()
                generation.request_started()
                try:
                    answer = await send_line(generation.relay, batch.endpoint, line.body, request_id, key)
                finally:
                    generation.request_finished()
                # A rate limit past the router's retries, or a local model not ready yet: wait, the line is not failed.
                if not answer.says_wait or self._stopping.is_set() or self._clock() >= batch.expires_at:
                    break
                await asyncio.sleep(min(answer.retry_after if answer.retry_after is not None else DEFAULT_LIMIT_WAIT, MAX_LIMIT_WAIT))
            if answer.says_wait and self._stopping.is_set():
                return  # not answered: sent again after the restart
        await self._store.put_result(batch.id, answered(line, answer, request_id))

    def _policy(self, owner: Owner) -> ApiKey | None | Exception:
        """The creator's policy now; an error (each line's answer) when the key is no longer configured."""
        if owner.name is None:
            return None
        keys = self._serving().keys
        key = keys.policy_of(owner.name, owner.team, frozenset(owner.token_models))
        if key is None:
            return LookupError(f"The key '{owner.name}' that created this batch is no longer configured.")
        return key

    async def _answer_rest(self, batch: StoredBatch, lines: list[BatchLine], code: str, message: str) -> None:
        """An error line (``code``, no response) for each line that has no result."""
        done = await self._store.answered(batch.id)
        for line in lines:
            if line.index not in done:
                await self._store.put_result(batch.id, unanswered(line, code, message))

    async def _finish(self, batch: StoredBatch, ending: str) -> None:
        """Write the output and error files of the results kept (whatever the ending), then end the batch as ``ending``."""
        batch.ending = ending
        await self._set(batch, "finalizing")
        # A failed batch keeps the lines answered before it failed (and billed): they are in its files too.
        results = await self._store.results(batch.id)
        batch.output_file_id = await self._write_file(batch, "output", [r.output for r in results if r.ok])
        batch.error_file_id = await self._write_file(batch, "errors", [r.output for r in results if not r.ok])
        await self._set(batch, ending)  # type: ignore[arg-type]
        completed, failed = await self._store.counts(batch.id)
        logger.info("batch %s %s: %d lines answered, %d failed", batch.id, ending, completed, failed)
        if self._webhooks is not None and self._webhooks.subscribed("batch.completed"):
            data = BatchFinished(batch.id, ending, batch.owner.name, batch.endpoint, batch.total, completed, failed,
                                 batch.output_file_id, batch.error_file_id)  # fmt: skip
            self._webhooks.emit(Event("batch.completed", data, batch.id))

    async def _write_file(self, batch: StoredBatch, kind: str, lines: list[object]) -> str | None:
        """A JSONL file of ``lines`` under an id made from the batch's (the same when finalizing is done again)."""
        if not lines:
            return None
        file_id = f"file-{batch.id.removeprefix('batch_')}-{kind}"
        content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        await self._bodies.write(file_id, content)
        filename = f"{batch.id}_{kind}.jsonl"
        await self._store.put_file(StoredFile(file_id, batch.owner.name, filename, "batch_output", len(content), int(self._clock())))
        return file_id

    async def _set(self, batch: StoredBatch, status: str) -> None:
        if batch.status in ENDED:
            return
        batch.status = status  # type: ignore[assignment]
        batch.times.setdefault(f"{status}_at", int(self._clock()))
        await self._store.put_batch(batch)

    async def _tend(self) -> None:
        """Resume what is unfinished, then every LEASE_SECONDS / 3: renew the leases held here, notice a
        cancel written by another replica, and take up the batches whose lease lapsed (a killed replica's)."""
        first = True
        while True:
            try:
                for batch in await self._store.unfinished():
                    self.run(batch, take_over=first and not self._store.shared)
                first = False
            except Exception:
                logger.warning("the unfinished batches could not be read (%s); trying again", self._store.description, exc_info=True)
            await asyncio.sleep(LEASE_SECONDS / 3)
            for batch_id, event in list(self._cancels.items()):
                now = self._clock()
                try:
                    await self._store.claim(batch_id, self.runner_id, now + LEASE_SECONDS, now)
                    stored = await self._store.get_batch(batch_id, ADMIN_KEY_NAME)
                except Exception:
                    logger.warning("batch %s: its lease could not be renewed", batch_id, exc_info=True)
                    continue
                running = self._running.get(batch_id)
                if stored is not None and stored.status == "cancelling" and running is not None:
                    running.status, running.times = "cancelling", {**stored.times, **running.times}
                    event.set()
