"""One way to open the gateway's SQLite files (the ledger, kept responses): WAL, waiting for other writers."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

BUSY_SECONDS = 5.0


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit and WAL mode whose statements wait up to BUSY_SECONDS for another writer.

    Usable from any one thread at a time (the stores hand it to worker threads).
    The switch to WAL is retried: SQLite answers it "database is locked" at once,
    without its busy handler, while another connection writes or recovers the WAL.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_SECONDS, check_same_thread=False, isolation_level=None)
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.01)
    db.execute("PRAGMA synchronous=NORMAL")
    return db
