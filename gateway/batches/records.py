"""A file and a batch as the gateway keeps them, and as OpenAI's API shows them (``FileObject``, ``Batch``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
# A batch in one of these has ended: nothing of it runs again.
ENDED: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
# What a batch in one of these still needs from a runner (resumed at start).
UNFINISHED: tuple[str, ...] = ("validating", "in_progress", "finalizing", "cancelling")
COMPLETION_WINDOW_SECONDS = {"24h": 24 * 3600}


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str  # "file-..."
    owner: str | None  # the name of the key that uploaded it (None on an open gateway)
    filename: str
    purpose: str  # "batch" uploaded; "batch_output" written by a batch
    bytes: int
    created_at: int  # unix seconds

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
            "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None,
            "status_details": None,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Owner:
    """Who created a batch, enough to run its lines under the same key policy after a restart."""

    name: str | None  # the key's name; None on an open gateway
    team: str | None = None  # a JWT's team (a configured key's team is in its config)
    token_models: tuple[str, ...] = ("*",)  # a JWT's models claim


@dataclass(slots=True)
class NativeState:
    """A batch passed whole to a provider's Batch API (``batch: {mode: native}``): where, and how far it has come.

    Each step is kept before the next is taken, so a resumed batch carries on
    where it stopped: the upload is not sent twice, a create whose answer was
    lost is looked for (by its tag) before another is sent.
    """

    provider: str  # the configured provider whose Batch API runs it
    model: str  # the model's name there (each line's body.model becomes it)
    discount: float  # the share off the ordinary price it is billed at
    poll_interval: float  # seconds between two reads of the provider's batch
    file_id: str | None = None  # the input file as uploaded there
    batch_id: str | None = None  # the provider's batch
    creating: bool = False  # a create was sent (its batch may exist though its answer never came)
    cancel_sent: bool = False
    status: str | None = None  # the provider's batch's status, as last read
    counts: dict[str, int] | None = None  # and its request_counts


@dataclass(slots=True)
class StoredBatch:
    """A batch: the Batch object's own fields; its request counts come from the results kept."""

    id: str  # "batch_..."
    owner: Owner
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    total: int  # lines in the input file
    status: BatchStatus = "validating"
    metadata: dict[str, str] | None = None
    model: str | None = None  # the lines' model, when they all name the same one
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None  # a batch that failed as a whole: why (OpenAI's errors.data)
    times: dict[str, int] = field(default_factory=dict)  # in_progress_at, finalizing_at, completed_at, ...
    ending: str | None = None  # while finalizing: the status it ends in (completed, cancelled, expired)
    native: NativeState | None = None  # run by a provider's Batch API, not line by line here

    def to_openai(self, completed: int, failed: int) -> dict[str, Any]:
        """The Batch object, with ``completed``/``failed`` lines counted from the results kept (the provider's
        counts while its Batch API runs it: its results come back only at its end)."""
        if self.native is not None and self.native.counts is not None and not completed + failed:
            completed, failed = self.native.counts.get("completed", 0), self.native.counts.get("failed", 0)
        stamps = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id, "completion_window": self.completion_window, "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id, "created_at": self.created_at,
            **{stamp: self.times.get(stamp) for stamp in stamps}, "expires_at": self.expires_at,
            "request_counts": {"total": self.total, "completed": completed, "failed": failed},
            "metadata": self.metadata,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class LineResult:
    """One input line's answer, as its output (or error) file line: kept before the line counts as done."""

    line: int  # the line's index in the input file, from 0
    ok: bool  # answered 2xx: the output file; else the error file
    output: dict[str, Any]  # {"id", "custom_id", "response": {"status_code", "request_id", "body"} | None, "error"}
