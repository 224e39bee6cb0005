"""Redis down (REDIS_URL set, nothing listening): the bot falls back to PostgreSQL/database-only behaviour,
and users see no error. Redis holds nothing that cannot be lost."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bot.server import start_server
from tests.conftest import Chat, make_settings
from tests.processes import free_port


async def test_a_user_gets_through_with_redis_down(tmp_path: Path) -> None:
    server = await start_server(make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        async with aiohttp.ClientSession() as http:
            chat = await Chat(http, server.url).open()
            demo = await chat.demo("recycled")
            await chat.verify(demo["phone"])
            assert "前任机主期间绑定" in chat.text, chat.text
            assert not any(m.get("error") for m in chat.transcript), chat.transcript
            await chat.say("/check ABCDEF12")  # a lookup of its own, through the per-client counters too
            assert "没有找到这个核验码" in chat.text, chat.text
    finally:
        await server.stop()
