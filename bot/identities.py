"""Channel identities at rest: a Telegram chat id or a WeChat openid is stored as a keyed hash, which finds the
user, plus a sealed copy, opened only to send to them. A web chat's id is already an opaque reference to its
session. Never logs an identity.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import col, select, update

from bot.storage import Database, User
from bot.vault import Vault

log = logging.getLogger(__name__)

# Channels whose ids are the platform's own account ids (a chat id, an openid): personal data, so sealed.
SEALED_CHANNELS = frozenset({"telegram", "wechat"})
_PREFIX = "h:"


def stored_id(vault: Vault, channel: str, raw: str) -> str:
    """What `users.external_id` holds for this identity: the keyed hash for a sealed channel, else `raw`."""
    if channel not in SEALED_CHANNELS or raw.startswith(_PREFIX):
        return raw
    return _PREFIX + vault.keyed_hash(f"{channel}:{raw}", purpose="external-id")[:40]


def sealed(vault: Vault, channel: str, raw: str) -> str | None:
    return vault.seal(raw) if channel in SEALED_CHANNELS else None


def reveal(vault: Vault, user: Any) -> str:
    """The platform's id for `user` (a User row, or anything with channel, external_id and external_enc)."""
    if user.channel in SEALED_CHANNELS and user.external_enc:
        return vault.reveal(user.external_enc)
    return str(user.external_id)


async def rekey(db: Database, vault: Vault) -> int:
    """Once, for rows written before ids were sealed: the hash in `external_id`, the id sealed beside it."""
    changed = 0
    async with db.session() as session:
        rows = (await session.exec(select(User.id, User.channel, User.external_id).where(
            col(User.channel).in_(SEALED_CHANNELS), col(User.external_enc).is_(None)))).all()
        for user_id, channel, raw in rows:
            if raw.startswith(_PREFIX):
                continue
            await session.exec(update(User).where(col(User.id) == user_id).values(
                external_id=stored_id(vault, channel, raw), external_enc=vault.seal(raw)))
            changed += 1
        await session.commit()
    if changed:
        log.info("channel identities sealed", extra={"rows": changed})
    return changed
