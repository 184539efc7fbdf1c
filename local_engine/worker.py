"""A model on a thread of its own, driven from an event loop: the part the engine and the embedder share."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Literal

logger = logging.getLogger(__name__)

WorkerState = Literal["loading", "ready", "failed", "stopped"]


class ModelThread:
    """Owns one daemon thread that loads a model, then serves until ``stop()``.

    Subclasses implement ``_run`` (load, set ``state``, then loop while
    ``_running``, waiting on ``_wake``); the event loop side only queues
    work under ``_wake`` and notifies it.
    """

    thread_name = "switchyard-model"

    def __init__(self) -> None:
        self.state: WorkerState = "loading"
        self.error: str | None = None
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the thread, which loads the model first; returns at once (``state`` says when it is ready)."""
        self._running = True
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._running = False
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)
        self.state = "stopped"

    def _run(self) -> None:
        raise NotImplementedError

    def _failed_to_load(self, what: str, error: Exception) -> None:
        """One line saying why (the traceback only at debug level: a missing file is not a bug)."""
        self.error = f"the {what} could not be loaded: {type(error).__name__}: {error}"
        self.state = "failed"
        logger.error("%s", self.error)
        logger.debug("loading failed", exc_info=error)


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Complete a future from another thread's result (via call_soon_threadsafe); a cancelled one stays so."""
    if future.done():  # the caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
