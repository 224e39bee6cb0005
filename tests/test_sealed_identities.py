"""Telegram chat ids and WeChat openids are personal data: at rest only a keyed hash (to find the user) and a
sealed copy (to send to them). A database written before this is re-keyed at start (issue 11)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp

from bot.server import start_server
from tests.conftest import make_settings
from tests.fakes.fake_bot_api import FakeBotApi
from tests.test_telegram import TgServer, TgUser, fake, start_tg  # noqa: F401 - `fake` is a fixture
from tests.test_wechat import WxServer, fake_api, wx_factory  # noqa: F401 - fixtures

CHAT_ID = 987654321


def database_bytes(path: Path) -> bytes:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.read_bytes()


async def test_a_telegram_chat_id_is_never_stored_in_the_clear(tmp_path: Path, fake: FakeBotApi,  # noqa: F811
                                                               http: aiohttp.ClientSession) -> None:
    srv: TgServer = await start_tg(tmp_path, fake, http)
    try:
        user = TgUser(srv, CHAT_ID)
        await user.say("/start")
        await user.say("/help")
        assert fake.sent(CHAT_ID), "the bot answered: it can still reach the chat"
        row = await srv.user(CHAT_ID)
        assert row is not None and row.external_id.startswith("h:") and row.external_enc
        # A push (no inbound update to answer) goes out through the sealed id.
        before = len(fake.sent(CHAT_ID))
        assert row.id is not None
        from dialogs.model import Msg, Reply

        await srv.rt.dispatcher.push(row.id, [Reply(Msg("settings.reminders_now_on"))], channel="telegram")
        await fake.wait_for(lambda: len(fake.sent(CHAT_ID)) > before)
    finally:
        await srv.runner.cleanup()
    assert str(CHAT_ID).encode() not in database_bytes(tmp_path / "haoqing.sqlite3")


async def test_a_wechat_openid_is_never_stored_in_the_clear(wx_factory: object) -> None:  # noqa: F811
    wx: WxServer = await wx_factory()  # type: ignore[operator]
    talker = wx.user("oSealed0000000001")
    assert (await talker.say("/start")).status == 200
    [(stored, sealed)] = wx.query("SELECT external_id, external_enc FROM users WHERE channel = 'wechat'")
    assert stored == wx.stored(talker.openid) and stored != talker.openid and sealed
    assert talker.openid.encode() not in database_bytes(Path(wx.db_path))


async def test_rows_from_before_are_rekeyed_at_start(tmp_path: Path) -> None:
    first = await start_server(make_settings(tmp_path))
    await first.stop()
    with sqlite3.connect(tmp_path / "haoqing.sqlite3") as conn:
        conn.execute("INSERT INTO users (channel, external_id, lang, active, reminders_on, created_at, "
                     "last_seen_at, next_seq) VALUES ('telegram', '5550001', 'zh_CN', 1, 1, "
                     "'2026-01-01 00:00:00', '2026-01-01 00:00:00', 1)")
    second = await start_server(make_settings(tmp_path))
    try:
        [(stored, sealed)] = [(u, e) for u, e in sqlite3.connect(tmp_path / "haoqing.sqlite3").execute(
            "SELECT external_id, external_enc FROM users WHERE channel = 'telegram'")]
        assert stored == second.runtime.dispatcher.stored_id("telegram", "5550001")
        assert second.runtime.vault.reveal(sealed) == "5550001"
    finally:
        await second.stop()


def test_keyed_hashes_are_the_standard_hmac_sha256_and_stable() -> None:
    """Stored ids and ID-number hashes are looked up by this value: it must stay HMAC-SHA256 under the derived key,
    whatever the implementation (bot/vault.py copies a keyed state), and a copy must never carry one call's input
    into the next."""
    import hashlib
    import hmac

    from bot.vault import Vault, _derive

    vault = Vault(b"secret")
    key = _derive(b"secret", b"keyed-hash")
    for purpose, value in (("phone", "13800138000"), ("external-id", "telegram:42"), ("phone", "13800138000")):
        assert vault.keyed_hash(value, purpose=purpose) == hmac.new(
            key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()
    assert vault.keyed_hash("13800138000") == vault.keyed_hash("13800138000", purpose="phone")
    assert vault.keyed_hash("1") != Vault(b"other").keyed_hash("1")


def test_sealing_never_repeats_a_nonce_across_draws_or_a_fork() -> None:
    """AES-GCM nonces come from os.urandom in batches (bot/vault.py): unique within a process across batches, and
    a forked child (a gunicorn worker) draws its own instead of using the batch its parent holds."""
    import base64
    import os

    from bot.vault import Vault

    vault = Vault(b"secret")

    def nonce() -> bytes:
        return base64.urlsafe_b64decode(vault.seal("13800138000"))[:12]

    seen = [nonce() for _ in range(1000)]  # about three batches
    assert len(set(seen)) == len(seen)
    assert all(vault.reveal(vault.seal(value)) == value for value in ("a", "13800138000"))
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, nonce())
        finally:
            os._exit(0)
    os.close(write)
    from_child = os.read(read, 12)
    os.close(read)
    os.waitpid(child, 0)
    assert len(from_child) == 12
    assert from_child != nonce()  # the parent's next nonce, from the batch it held at the fork
