"""Several workers share one WeChat access token through the database: one fetch, no mutual invalidation."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.channels.wechat_api import WeChatApi
from bot.channels.wechat_token_store import DbTokenStore
from bot.storage import Database
from bot.vault import Vault
from tests.fakes.fake_wechat_api import FakeWeChatApi


async def test_workers_share_one_token_and_refresh_it_once(tmp_path: Path) -> None:
    fake = FakeWeChatApi()
    base = await fake.start()
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite3'}"
    databases = [Database(url), Database(url)]
    await databases[0].create_all()
    vault = Vault(b"secret")
    workers = [WeChatApi(base, fake.app_id, fake.app_secret, DbTokenStore(db, vault, fake.app_id))
               for db in databases]
    try:
        tokens = await asyncio.gather(*(w.token() for w in workers for _ in range(5)))
        assert set(tokens) == {"token-1"} and fake.tokens_issued == ["token-1"]
        # The token is a credential: it is not in the database file in the clear.
        assert b"token-1" not in (tmp_path / "shared.sqlite3").read_bytes()
        # WeChat rejects it (40001): one worker refreshes, the other picks the new one up without fetching.
        fake.user_posted("oUser", "message")  # the fake holds customer-service windows as WeChat does
        fake.expire_tokens()
        await workers[0].send_text("oUser", "hi")
        assert fake.tokens_issued == ["token-1", "token-2"]
        await workers[1].send_text("oUser", "hi again")
        assert fake.tokens_issued == ["token-1", "token-2"]
        # A stale discard (of token-1) must not throw away the newer token.
        await workers[1].store.discard("token-1")
        assert await workers[1].token() == "token-2"
    finally:
        for worker in workers:
            await worker.close()
        for db in databases:
            await db.close()
        await fake.close()
