"""The usage ledger: one record per finished request, written in batches off the request path."""

from gateway.ledger.records import UsageQuery, UsageRecord
from gateway.ledger.store import LedgerStore, open_store
from gateway.ledger.writer import LedgerWriter

__all__ = ["LedgerStore", "LedgerWriter", "UsageQuery", "UsageRecord", "open_store"]
