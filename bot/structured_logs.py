"""JSON log lines with every phone and ID number masked, whatever the caller passed in."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from domain.masking import scrub

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=lambda v: scrub(str(v)))


# Web chat session ids are bearer tokens; they never reach a log line.
_SESSION_RE = re.compile(r"(/chat/api/sessions/)[^/?#]+")


class AccessLogger(AbstractAccessLogger):
    """Access log lines with session ids cut out of the path and every mobile or ID number masked."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = scrub(_SESSION_RE.sub(r"\1…", request.path_qs))
        self.logger.info("%s %s %s %d %.3fs", request.remote, request.method, path, response.status, time)


def configure(level: str = "INFO", log_file: str = "") -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    formatter = JsonFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    # aiohttp's access log prints full request paths, which may carry a number in the query string.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
