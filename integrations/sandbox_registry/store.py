"""The sandbox registry's SQLite access: synchronous, one connection, meant to run on one worker thread.

Every write happens in its own transaction, and the unbind path re-checks the tenure rule in SQL.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from domain.masking import mask_phone
from integrations.sandbox_registry.platforms import UNBIND_SUPPORTED
from integrations.sandbox_registry.population import ensure_population
from integrations.sandbox_registry.rules import ActiveBinding, item_outcome, phase_at, plan_unbind, tenure_cutoff

DemoKind = Literal["recycled", "fresh", "ported", "tagged"]
DEMO_KINDS: tuple[DemoKind, ...] = ("recycled", "fresh", "ported", "tagged")

# Tag codes are read aloud and typed from screenshots, so 0/O, 1/I/L are left out.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CALLBACK_MAX_ATTEMPTS = 6
CALLBACK_BACKOFF_SECONDS = 5.0

_DEMO_SQL: dict[str, str] = {
    "recycled": """
        n.previous_tenures >= 1
        AND EXISTS (SELECT 1 FROM bindings b WHERE b.phone = n.phone AND b.unbound_at IS NULL
                    AND b.bound_on < n.tenure_start
                    AND b.platform IN (SELECT id FROM platforms WHERE unbind_supported = 1))
        AND EXISTS (SELECT 1 FROM bindings b WHERE b.phone = n.phone AND b.unbound_at IS NULL
                    AND b.bound_on >= n.tenure_start)""",
    "fresh": "n.previous_tenures = 0",
    "ported": "n.ported_at IS NOT NULL",
    "tagged": "n.tagged = 1",
}


@dataclass(frozen=True)
class CreateOutcome:
    kind: Literal["created", "replayed", "conflict", "unknown", "not_assigned", "refused"]
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class DueCallback:
    request_id: str
    status: str
    url: str
    attempts: int
    payload: dict[str, Any]


def _ts(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def new_code(length: int = 8) -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


class RegistryStore:
    def __init__(self, path: str, seed: int) -> None:
        self.path = path
        self.seed = seed
        self._conn: sqlite3.Connection | None = None
        self.built_in: float | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("sandbox registry store is not open")
        return self._conn

    def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: each operation below issues its own BEGIN so the transaction edges are explicit.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        started = time.perf_counter()
        try:
            if ensure_population(conn, self.seed):
                self.built_in = time.perf_counter() - started
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- numbers ---------------------------------------------------------------------------------

    def number(self, phone: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute("SELECT * FROM numbers WHERE phone = ?", (phone,)).fetchone()
        return row

    def active_bindings(self, phone: str) -> list[ActiveBinding]:
        rows = self.conn.execute(
            "SELECT id, platform, bound_on FROM bindings WHERE phone = ? AND unbound_at IS NULL "
            "ORDER BY bound_on, platform, id",
            (phone,),
        ).fetchall()
        return [ActiveBinding(r["id"], r["platform"], date.fromisoformat(r["bound_on"])) for r in rows]

    def demo_numbers(self, kind: DemoKind, limit: int) -> list[dict[str, str]]:
        # The WHERE fragment comes from the fixed table above, never from the request.
        rows = self.conn.execute(
            "SELECT n.phone, n.holder_name, n.holder_id FROM numbers n "  # noqa: S608
            f"WHERE n.status = 'assigned' AND {_DEMO_SQL[kind]} ORDER BY n.demo_rank, n.phone LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {"phone": r["phone"], "name": r["holder_name"], "id_number": r["holder_id"], "kind": kind}
            for r in rows
        ]

    def count_numbers(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM numbers").fetchone()[0])

    def recycle_check(self, phone: str, today: date) -> dict[str, Any]:
        row = self.number(phone)
        if row is None:
            return {"known": False, "reissued": False, "released_days_ago": None, "previous_bindings_remain": False}
        released = row["last_released"]
        tenure_start = row["tenure_start"]
        if tenure_start is None:
            remain = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM bindings WHERE phone = ? AND unbound_at IS NULL)", (phone,)
            ).fetchone()[0]
        else:
            remain = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM bindings WHERE phone = ? AND unbound_at IS NULL AND bound_on < ?)",
                (phone, tenure_start),
            ).fetchone()[0]
        return {
            "known": True,
            "reissued": row["status"] == "assigned" and row["previous_tenures"] > 0,
            "released_days_ago": None if released is None else (today - date.fromisoformat(released)).days,
            "previous_bindings_remain": bool(remain),
        }

    # --- unbind requests -------------------------------------------------------------------------

    def create_unbind(
        self,
        *,
        idempotency_key: str,
        phone: str,
        platforms: list[str],
        requester_tenure_start: date,
        callback_url: str | None,
        now: datetime,
    ) -> CreateOutcome:
        fingerprint = hashlib.sha256(json.dumps(
            [phone, platforms, requester_tenure_start.isoformat(), callback_url], ensure_ascii=False
        ).encode()).hexdigest()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcome = self._create_unbind(
                idempotency_key, fingerprint, phone, platforms, requester_tenure_start, callback_url, now
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcome

    def _create_unbind(
        self,
        key: str,
        fingerprint: str,
        phone: str,
        platforms: list[str],
        requester_tenure_start: date,
        callback_url: str | None,
        now: datetime,
    ) -> CreateOutcome:
        conn = self.conn
        earlier = conn.execute(
            "SELECT fingerprint, first_response FROM unbind_requests WHERE idempotency_key = ?", (key,)
        ).fetchone()
        if earlier is not None:
            if earlier["fingerprint"] != fingerprint:
                return CreateOutcome("conflict")
            return CreateOutcome("replayed", json.loads(earlier["first_response"]))
        number = self.number(phone)
        if number is None:
            return CreateOutcome("unknown")
        if number["status"] != "assigned" or number["tenure_start"] is None:
            return CreateOutcome("not_assigned")
        cutoff = tenure_cutoff(requester_tenure_start, date.fromisoformat(number["tenure_start"]))
        plan = plan_unbind(platforms, self.active_bindings(phone), cutoff, UNBIND_SUPPORTED)
        refused = [{"platform": r.platform, "reason": r.reason} for r in plan.refused]
        if not plan.items:
            return CreateOutcome("refused", {"error": "nothing_eligible", "refused": refused})
        request_id = f"UB-{now:%Y%m%d}-{new_code(10)}"
        created_at = _ts(now)
        conn.execute(
            "INSERT INTO unbind_requests (id, idempotency_key, fingerprint, phone, cutoff, created_at, status, "
            "refused, first_response, callback_url) VALUES (?, ?, ?, ?, ?, ?, 'submitted', ?, '', ?)",
            (request_id, key, fingerprint, phone, cutoff.isoformat(), created_at,
             json.dumps(refused, ensure_ascii=False), callback_url),
        )
        conn.executemany(
            "INSERT INTO unbind_items (request_id, position, platform, binding_ids, status) "
            "VALUES (?, ?, ?, ?, 'submitted')",
            [(request_id, i, item.platform, json.dumps(item.binding_ids)) for i, item in enumerate(plan.items)],
        )
        body = self._view(request_id)
        assert body is not None
        conn.execute("UPDATE unbind_requests SET first_response = ? WHERE id = ?",
                     (json.dumps(body, ensure_ascii=False), request_id))
        return CreateOutcome("created", body)

    def request_view(self, request_id: str) -> dict[str, Any] | None:
        return self._view(request_id)

    def _view(self, request_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT id, status, created_at, refused FROM unbind_requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None:
            return None
        items = []
        for item in self.conn.execute(
            "SELECT platform, status, reason FROM unbind_items WHERE request_id = ? ORDER BY position", (request_id,)
        ):
            entry = {"platform": item["platform"], "status": item["status"]}
            if item["reason"] is not None:
                entry["reason"] = item["reason"]
            items.append(entry)
        return {
            "id": row["id"],
            "status": row["status"],
            "created_at": row["created_at"],
            "items": items,
            "refused": json.loads(row["refused"]),
        }

    def advance(
        self, now: datetime, processing_after: float, done_after: float, request_id: str | None = None
    ) -> list[str]:
        """Moves open requests along the timeline; returns the ids whose status changed."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            changed = self._advance(now, processing_after, done_after, request_id)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return changed

    def _advance(
        self, now: datetime, processing_after: float, done_after: float, request_id: str | None
    ) -> list[str]:
        conn = self.conn
        query = "SELECT id, phone, cutoff, created_at, status, callback_url FROM unbind_requests " \
                "WHERE status IN ('submitted', 'processing')"
        params: tuple[str, ...] = ()
        if request_id is not None:
            query += " AND id = ?"
            params = (request_id,)
        changed: list[str] = []
        for row in conn.execute(query, params).fetchall():
            phase = phase_at(datetime.fromisoformat(row["created_at"]), now, processing_after, done_after)
            if phase == row["status"]:
                continue
            if phase == "processing":
                status = "processing"
                conn.execute("UPDATE unbind_items SET status = 'processing' WHERE request_id = ?", (row["id"],))
            else:
                status = self._finish(row, now)
            conn.execute(
                "UPDATE unbind_requests SET status = ?, callback_pending = ?, callback_attempts = 0, "
                "callback_next_at = NULL WHERE id = ?",
                (status, int(row["callback_url"] is not None), row["id"]),
            )
            changed.append(row["id"])
        return changed

    def _finish(self, request: sqlite3.Row, now: datetime) -> str:
        conn = self.conn
        phone = request["phone"]
        number = self.number(phone)
        # Defence in depth: if the number changed hands since submission, the earlier date still protects.
        cutoff = request["cutoff"]
        if number is not None and number["tenure_start"] is not None:
            cutoff = min(cutoff, number["tenure_start"])
        any_done = False
        for item in conn.execute(
            "SELECT position, platform, binding_ids FROM unbind_items WHERE request_id = ?", (request["id"],)
        ).fetchall():
            ids = [int(i) for i in json.loads(item["binding_ids"])]
            marks = ",".join("?" * len(ids))
            late = conn.execute(
                f"SELECT COUNT(*) FROM bindings WHERE id IN ({marks}) AND bound_on >= ?",  # noqa: S608
                (*ids, cutoff),
            ).fetchone()[0]
            reason = "tenure_changed" if late else item_outcome(self.seed, phone, item["platform"])
            if reason is None:
                # The bound_on guard repeats the tenure rule where the data actually changes.
                conn.execute(
                    f"UPDATE bindings SET unbound_at = ? WHERE id IN ({marks}) "  # noqa: S608
                    "AND unbound_at IS NULL AND bound_on < ?",
                    (_ts(now), *ids, cutoff),
                )
                any_done = True
            conn.execute(
                "UPDATE unbind_items SET status = ?, reason = ? WHERE request_id = ? AND position = ?",
                ("rejected" if reason else "done", reason, request["id"], item["position"]),
            )
        return "done" if any_done else "rejected"

    def due_callbacks(self, now: datetime, limit: int = 20) -> list[DueCallback]:
        rows = self.conn.execute(
            "SELECT id, status, callback_url, callback_attempts FROM unbind_requests "
            "WHERE callback_pending = 1 AND (callback_next_at IS NULL OR callback_next_at <= ?) "
            "ORDER BY created_at LIMIT ?",
            (_ts(now), limit),
        ).fetchall()
        due = []
        for r in rows:
            view = self._view(r["id"])
            if view is not None:
                due.append(DueCallback(r["id"], r["status"], r["callback_url"], r["callback_attempts"], view))
        return due

    def callback_result(self, request_id: str, status: str, delivered: bool, now: datetime) -> bool:
        """Records a delivery attempt; returns False once the registry gives up on this callback."""
        conn = self.conn
        if delivered:
            # Only clear if nothing moved meanwhile, or the newer status would never be sent.
            conn.execute("UPDATE unbind_requests SET callback_pending = 0 WHERE id = ? AND status = ?",
                         (request_id, status))
            return True
        row = conn.execute(
            "SELECT callback_attempts FROM unbind_requests WHERE id = ? AND status = ?", (request_id, status)
        ).fetchone()
        if row is None:
            return True
        attempts = row[0] + 1
        if attempts >= CALLBACK_MAX_ATTEMPTS:
            conn.execute("UPDATE unbind_requests SET callback_pending = 0, callback_attempts = ? WHERE id = ?",
                         (attempts, request_id))
            return False
        retry_at = now + timedelta(seconds=CALLBACK_BACKOFF_SECONDS * 2 ** (attempts - 1))
        conn.execute("UPDATE unbind_requests SET callback_attempts = ?, callback_next_at = ? WHERE id = ?",
                     (attempts, _ts(retry_at), request_id))
        return True

    # --- tags ------------------------------------------------------------------------------------

    def create_tag(self, phone: str, kind: str, since: str, now: datetime,
                   idempotency_key: str | None = None) -> tuple[bool, dict[str, Any]]:
        """(created, tag): a retry under an idempotency key seen before gets the tag first filed under it."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if idempotency_key:
                earlier = conn.execute("SELECT code FROM tag_keys WHERE idempotency_key = ?",
                                       (idempotency_key,)).fetchone()
                if earlier is not None:
                    conn.execute("COMMIT")
                    tag = self.tag(earlier["code"])
                    assert tag is not None
                    return False, tag
            while True:
                code = new_code()
                if conn.execute("SELECT 1 FROM tags WHERE code = ?", (code,)).fetchone() is None:
                    break
            conn.execute("INSERT INTO tags VALUES (?, ?, ?, ?, ?)", (code, phone, kind, since, _ts(now)))
            if idempotency_key:
                conn.execute("INSERT INTO tag_keys VALUES (?, ?)", (idempotency_key, code))
            if kind == "clear_harassment":
                # Clearing a stale harassment label is the point of this tag kind (号码标记).
                conn.execute("UPDATE numbers SET tagged = 0 WHERE phone = ?", (phone,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return True, {"code": code, "kind": kind, "since": since, "phone_masked": mask_phone(phone),
                      "created_at": _ts(now)}

    def tag(self, code: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM tags WHERE code = ?", (code,)).fetchone()
        if row is None:
            return None
        return {"code": row["code"], "kind": row["kind"], "since": row["since"],
                "phone_masked": mask_phone(row["phone"]), "created_at": row["created_at"]}
