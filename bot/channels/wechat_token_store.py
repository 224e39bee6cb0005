"""The WeChat access token shared through the database, so several workers don't invalidate each other's
tokens: one lease holder refreshes at a time, and a token is discarded only if it is still the rejected one.

The token is a credential: stored sealed (bot/vault.py), never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from sqlalchemy import text

from bot.channels.wechat_api import CachedToken
from bot.storage import Database
from bot.vault import Vault

LEASE_SECONDS = 30.0
POLL_SECONDS = 0.1


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class DbTokenStore:
    def __init__(self, db: Database, vault: Vault, app_id: str, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.vault = vault
        self.app_id = app_id
        self.clock = clock
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    async def load(self) -> CachedToken | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(text("SELECT token_enc, expires_at FROM wechat_access_tokens "
                                           "WHERE app_id = :app"), {"app": self.app_id})).first()
        if row is None or not row[0]:
            return None
        return CachedToken(self.vault.reveal(str(row[0])), float(row[1]))

    async def save(self, token: CachedToken) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(text(
                "UPDATE wechat_access_tokens SET token_enc = :enc, token_hash = :hash, expires_at = :exp "
                "WHERE app_id = :app"), {"enc": self.vault.seal(token.value), "hash": _hash(token.value),
                                         "exp": token.expires_at, "app": self.app_id})

    async def discard(self, value: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(text(
                "UPDATE wechat_access_tokens SET token_enc = NULL, token_hash = NULL "
                "WHERE app_id = :app AND token_hash = :hash"), {"app": self.app_id, "hash": _hash(value)})

    async def _try_lease(self) -> bool:
        now = self.clock()
        async with self.db.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO wechat_access_tokens (app_id, expires_at) VALUES (:app, 0) ON CONFLICT DO NOTHING"),
                {"app": self.app_id})
            taken = await conn.execute(text(
                "UPDATE wechat_access_tokens SET lease_until = :until, lease_owner = :me "
                "WHERE app_id = :app AND (lease_until IS NULL OR lease_until < :now)"),
                {"until": now + LEASE_SECONDS, "me": self.owner, "app": self.app_id, "now": now})
            return taken.rowcount == 1

    @asynccontextmanager
    async def _leased(self) -> AsyncIterator[None]:
        # Waiting is bounded by the lease: a holder that died frees the lock when its lease ends.
        while not await self._try_lease():  # noqa: ASYNC110 (the lock is across processes: nothing to await)
            await asyncio.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            async with self.db.engine.begin() as conn:
                await conn.execute(text(
                    "UPDATE wechat_access_tokens SET lease_until = NULL, lease_owner = NULL "
                    "WHERE app_id = :app AND lease_owner = :me"), {"app": self.app_id, "me": self.owner})

    def refresh_lock(self) -> AbstractAsyncContextManager[None]:
        return self._leased()
