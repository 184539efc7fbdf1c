"""A model on a thread of its own, driven from an event loop: the part the engine and the embedder share.

::

    start() ──► loading ──(load ok)──────────────────────► ready ──► serve until stop()
                   │  └─(fails, retries left: wait 1 s, 2 s, ...)─┘
                   └─(fails, no retries left)─► failed (``error``: one line saying why)
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

WorkerState = Literal["loading", "ready", "failed", "stopped"]
FIRST_RETRY_DELAY = 1.0  # seconds before the first retry of a failed load; doubled for each one after


class ModelThread:
    """Owns one daemon thread that loads a model, then serves until ``stop()``.

    Subclasses implement ``_load`` (build the model; raise to fail),
    ``_serve`` (loop while ``_running``, waiting on ``_wake``) and
    ``_tokenizer`` (the loaded model's); the event loop side only queues
    work under ``_wake`` and notifies it.

    Tokenizer work for callers (prompts, chat templates, /v1/tokenize) runs
    on a second thread with its own copy of the tokenizer
    (``with_tokenizer``): a 10 MB prompt then costs its own request seconds,
    never a stall of the model's loop or of the event loop, and the model's
    thread keeps its tokenizer to itself.
    """

    thread_name = "switchyard-model"
    what = "model"  # for the log line and the error: "the {what} could not be loaded: ..."

    def __init__(self, *, load_retries: int = 2) -> None:
        self.state: WorkerState = "loading"
        self.error: str | None = None
        self.load_retries = load_retries
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        # Set once the load succeeded or finally failed; the asyncio twin wakes waiters without holding a thread.
        self._settled = threading.Event()
        self._settled_on_loop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix=f"{self.thread_name}-tokenizer")
        self._tokenizer_copy: Any = None

    async def start(self) -> None:
        """Start the thread, which loads the model first; returns at once (``state`` says when it is ready)."""
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._settled_on_loop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    async def wait_loaded(self) -> None:
        """Until the load succeeded or failed for good (``state`` then says which)."""
        if self._settled.is_set():
            return
        if self._settled_on_loop is not None and asyncio.get_running_loop() is self._loop:
            await self._settled_on_loop.wait()
        else:
            await asyncio.get_running_loop().run_in_executor(None, self._settled.wait)

    async def with_tokenizer(self, work: Callable[[Any], T]) -> T:
        """``work(tokenizer)`` on the tokenizer thread, once the model is loaded."""
        if self._tokenizer_copy is None:
            raise RuntimeError(f"the {self.what} is {self.state}")
        return await asyncio.get_running_loop().run_in_executor(self._tokenizing, work, self._tokenizer_copy)

    async def stop(self) -> None:
        self._running = False
        self._tokenizing.shutdown(wait=False, cancel_futures=True)
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)
        self.state = "stopped"
        self._mark_settled()

    def _load(self) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        raise NotImplementedError

    def _tokenizer(self) -> Any:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            loaded = self._load_with_retries()
        finally:
            self._mark_settled()
        if loaded:
            self._serve()

    def _mark_settled(self) -> None:
        self._settled.set()
        if self._loop is not None and self._settled_on_loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._settled_on_loop.set)
            except RuntimeError:  # the loop has closed: nobody is waiting on it
                pass

    def _load_with_retries(self) -> bool:
        delay = FIRST_RETRY_DELAY
        for attempt in range(self.load_retries + 1):
            try:
                self._load()
            except Exception as error:
                if attempt == self.load_retries or not self._running:
                    self._failed_to_load(error)
                    return False
                logger.warning(
                    "the %s could not be loaded (attempt %d of %d): %s; retrying in %g s",
                    self.what, attempt + 1, self.load_retries + 1, one_line(error), delay,
                )  # fmt: skip
                logger.debug("loading failed", exc_info=error)
                with self._wake:
                    self._wake.wait_for(lambda: not self._running, timeout=delay)
                delay *= 2
            else:
                self._tokenizer_copy = copy.deepcopy(self._tokenizer())
                self.state = "ready"
                return True
        return False

    def _failed_to_load(self, error: Exception) -> None:
        """One line saying why (the traceback only at debug level: a missing file is not a bug)."""
        self.error = f"the {self.what} could not be loaded: {one_line(error)}"
        self.state = "failed"
        logger.error("%s", self.error)
        logger.debug("loading failed", exc_info=error)


def one_line(error: BaseException) -> str:
    """``Type: message`` with the message's line breaks folded (loaders' messages often span lines)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Complete a future from another thread's result (via call_soon_threadsafe); a cancelled one stays so."""
    if future.done():  # the caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
