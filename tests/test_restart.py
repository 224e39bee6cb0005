"""`kill -9` of the server mid-conversation: after a restart the user continues at the same step."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.conftest import Chat

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start(tmp_path: Path, port: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "DATA_DIR": str(tmp_path),
           "SECRET_KEY": "restart-test-secret", "LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            if proc.returncode is not None:
                raise AssertionError((await proc.stderr.read()).decode()[-2000:])  # type: ignore[union-attr]
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not become ready")


async def test_kill_9_mid_conversation_then_continue(tmp_path: Path) -> None:
    port = free_port()
    proc = await start(tmp_path, port)
    try:
        async with aiohttp.ClientSession() as http:
            chat = await Chat(http, f"http://127.0.0.1:{port}").open()
            phone = (await chat.demo("recycled"))["phone"]
            await chat.say("/start")
            await chat.pick("lookup")
            await chat.pick("agree")
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
