"""JSON log lines with every phone and ID number masked, whatever the caller passed in."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bot import jsoncodec
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
        fields = record.__dict__
        # The caller's `extra` keys: what a record holds beyond its standard attributes (usually none).
        for key in sorted(fields.keys() - _RESERVED):
            if not key.startswith("_"):
                value = fields[key]
                entry[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return jsoncodec.dumps(entry, _scrubbed_text).decode()


def _scrubbed_text(value: Any) -> str:
    return scrub(str(value))


# Web chat session ids are bearer tokens; they never reach a log line.
_SESSION_RE = re.compile(r"(/chat/api/sessions/)[^/?#]+")


# Probes and scrapes that a supervisor or Prometheus repeats every few seconds: logged only when they fail.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class AccessLogger(AbstractAccessLogger):
    """One INFO line per request: the path with session ids cut out and every mobile or ID number masked, and of
    the query string only its parameter names. Values stay out: WeChat's callback URL carries the sender's openid
    (stored only as a keyed hash) and its signature, and other routes take a number or a search term there."""

    @property
    def enabled(self) -> bool:
        # aiohttp asks once per connection: below INFO (LOG_LEVEL=WARNING) it neither times requests nor calls `log`.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.path
        if response.status < 400 and path in _QUIET_PATHS:
            return
        path = _SESSION_RE.sub(r"\1…", path)
        if request.query_string:
            path += "?" + "&".join(dict.fromkeys(request.query))
        self.logger.info("%s %s %s %d %.3fs", request.remote, request.method, scrub(path), response.status, time)


def configure(level: str = "INFO", log_file: str = "", *, access: bool = True) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    formatter = JsonFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
    # The logging HOWTO's "Optimization": what no line here prints (the caller's file and line, the thread and
    # process) is not gathered for every record.
    setattr(logging, "_srcfile", None)  # noqa: B010 (documented there; not in the module's stubs)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    # aiohttp's access log ("aiohttp.access") follows the level unless ACCESS_LOG is off: its lines come from
    # AccessLogger, which masks them, and docs/nginx.conf leaves request logging to it.
    logging.getLogger("aiohttp.access").setLevel(logging.NOTSET if access else logging.WARNING)
