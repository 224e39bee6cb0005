"""EVENT_LOOP (bot/loops.py): `run` and the gunicorn workers run on the loop it names, and a whole server
(SQLite writer thread, Telegram-free web chat step) works on uvloop as on asyncio's own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from bot.config import Settings
from bot.loops import run_until_done, uses_uvloop
from bot.server import start_server
from tests.conftest import Chat, make_settings


def _settings(loop: str) -> Settings:
    return Settings(_env_file=None, secret_key="k", event_loop=loop)  # type: ignore[call-arg]


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize(("loop", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_run_until_done_runs_on_the_loop_event_loop_names(loop: str, module: str) -> None:
    assert run_until_done(_settings(loop), _loop_module()).split(".")[0] == module
    assert uses_uvloop(_settings(loop)) is (loop == "uvloop")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_web_chat_step_on_each_loop(tmp_path: Path, loop: str) -> None:
    """A step crosses the SQLite store's writer thread, whose answers reach the loop through
    call_soon_threadsafe: the part of the server most likely to care which loop it runs on."""

    async def step() -> tuple[str, list[str]]:
        server = await start_server(make_settings(tmp_path, event_loop=loop))
        try:
            async with aiohttp.ClientSession() as http:
                chat = await Chat(http, server.url).open("en")
                answer = await chat.say("/menu")
            return await _loop_module(), [m["text"] for m in answer]
        finally:
            await server.stop()

    module, texts = run_until_done(make_settings(tmp_path, event_loop=loop), step())
    assert module.split(".")[0] == loop
    assert texts and any(texts)
