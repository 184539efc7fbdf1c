"""Logging for the server process: text or JSON lines, each with its request id, keys masked in every line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import datetime, timezone

from providers.redact import redact

# The request being served, for log lines written while it runs (set by RequestIdMiddleware).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Masks secrets in the finished line, tracebacks included."""

    def __init__(self, secrets: Iterable[str], fmt: str | None = None) -> None:
        super().__init__(fmt)
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time, level, logger, message, request_id (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, ensure_ascii=False), self.secrets)


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being served (or None) on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def configure_logging(level: str, secrets: Iterable[str], log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter(secrets) if log_format == "json" else RedactingFormatter(secrets, TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def add_log_secrets(secrets: Iterable[str]) -> None:
    """Mask ``secrets`` too in the lines of the handlers ``configure_logging`` set up (keys a reload brought)."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, RedactingFormatter):
            formatter.secrets = tuple(dict.fromkeys((*formatter.secrets, *secrets)))
