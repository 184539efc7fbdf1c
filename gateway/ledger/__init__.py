"""The usage ledger: one record per finished request, written in batches off the request path."""

from .records import UsageQuery, UsageRecord
from .store import LedgerStore, open_store
from .writer import LedgerWriter

__all__ = ["LedgerStore", "LedgerWriter", "UsageQuery", "UsageRecord", "open_store"]
