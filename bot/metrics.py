"""Prometheus metrics at `/metrics`, through prometheus_client.

Counters and histograms are updated where the work happens; what lives in the database (outbox depth, the
ticket queue) is read when a scrape arrives. Under `python -m bot serve --workers N` every worker writes its
samples to PROMETHEUS_MULTIPROC_DIR and a scrape on any worker merges them all. A label never carries a user,
a number, a session or any other personal value: only channels, outcomes and limit names.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

log = logging.getLogger(__name__)

UPDATES = Counter("haoqing_updates_total", "Deliveries handled, by channel and outcome "
                  "(step: a new step ran; replayed: a repeat answered from the inbox; error: the step failed).",
                  ["channel", "outcome"])
STEP_SECONDS = Histogram("haoqing_step_seconds", "Time to handle one delivery, from arrival to committed step.",
                         ["channel"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                               10))
SENDS = Counter("haoqing_sends_total", "Messages handed to a channel's API, by outcome (ok, retry, failed).",
                ["channel", "outcome"])
THROTTLED = Counter("haoqing_channel_429_total", "429 (flood control) answers from a channel's API.", ["channel"])
LIMIT_REFUSALS = Counter("haoqing_limit_refusals_total", "Requests refused by an abuse limit, by limit.", ["limit"])
BROADCAST_SENT = Counter("haoqing_broadcast_messages_total", "Broadcast messages, by channel and outcome.",
                         ["channel", "outcome"])

# Read at scrape time; a missing table (a feature not migrated in yet) is skipped, not an error.
_DB_GAUGES = (
    ("haoqing_outbox_pending", "Messages waiting in the outbox for their channel's sender.",
     "SELECT channel, count(*) FROM outbox WHERE status = 'pending' GROUP BY channel", "channel"),
    ("haoqing_tickets", "Staff tickets by status.", "SELECT status, count(*) FROM tickets GROUP BY status", "status"),
    ("haoqing_jobs", "Durable jobs by status.", "SELECT status, count(*) FROM jobs GROUP BY status", "status"),
    # A broadcast's progress: its recipients not yet settled, by the broadcast's state (a handful of rows: the
    # counts are kept per broadcast, channel and outcome as they settle, never counted over the recipients).
    ("haoqing_broadcast_left", "Broadcast recipients not yet sent to or settled, by the broadcast's state.",
     "SELECT b.status, SUM(b.recipients - COALESCE((SELECT SUM(c.count) FROM broadcast_counts c "
     "WHERE c.broadcast_id = b.id), 0)) FROM broadcasts b WHERE b.status IN ('scheduled', 'running', 'paused') "
     "GROUP BY b.status", "status"),
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


async def _database_families(db: Any) -> list[GaugeMetricFamily]:
    families = []
    for name, documentation, sql, label in _DB_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=[label])
        try:
            async with db.engine.connect() as connection:
                rows = (await connection.execute(text(sql))).all()
        except Exception:  # the table may not exist in this deployment yet
            log.debug("metrics: %s unavailable", name)
            continue
        for key, count in rows:
            family.add_metric([str(key)], float(count))
        families.append(family)
    return families


class _Families:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


def _allowed(request: web.Request, token: str) -> bool:
    """With METRICS_TOKEN set, a scrape must carry it; without, only loopback clients may scrape."""
    if token:
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        return hmac.compare_digest(offered, token.encode())
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def routes(app: web.Application, db: Any, token: str) -> None:
    async def metrics(request: web.Request) -> web.Response:
        if not _allowed(request, token):
            raise web.HTTPNotFound()
        directory = multiprocess_dir()
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
        body = generate_latest(registry)
        live = CollectorRegistry()
        live.register(_Families(await _database_families(db)))
        body += generate_latest(live)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
