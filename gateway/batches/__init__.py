"""Files and batches (OpenAI's /v1/files and /v1/batches), run by the gateway itself through its router (docs/batches.md)."""

from gateway.batches.bodies import FileBodies
from gateway.batches.records import LineResult, Owner, StoredBatch, StoredFile
from gateway.batches.runner import BatchRunner
from gateway.batches.service import Batches
from gateway.batches.store import BatchStore, open_batch_store
from gateway.batches.targets import Served, Serving

__all__ = [
    "BatchRunner", "BatchStore", "Batches", "FileBodies", "LineResult", "Owner", "Served", "Serving", "StoredBatch", "StoredFile",
    "open_batch_store",
]  # fmt: skip
