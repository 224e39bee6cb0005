"""`kill -9` of the server mid-conversation: after a restart the user continues at the same step."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from tests.conftest import Chat
from tests.processes import free_port, start_bot


async def start(tmp_path: Path, port: int) -> asyncio.subprocess.Process:
    return await start_bot(port, {"DATA_DIR": str(tmp_path), "SECRET_KEY": "restart-test-secret"})


async def test_kill_9_mid_conversation_then_continue(tmp_path: Path) -> None:
    port = free_port()
    proc = await start(tmp_path, port)
    try:
        async with aiohttp.ClientSession() as http:
            chat = await Chat(http, f"http://127.0.0.1:{port}").open()
            phone = (await chat.demo("recycled"))["phone"]
            await chat.to_phone_prompt()
            await chat.say(phone)
            code = await chat.latest_code(phone)
            assert "请输入 6 位验证码" in chat.text
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await start(tmp_path, port)
        async with aiohttp.ClientSession() as http:
            chat.http = http
            await chat.say(code)
            assert "验证成功" in chat.text and "前任机主期间绑定" in chat.text
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
