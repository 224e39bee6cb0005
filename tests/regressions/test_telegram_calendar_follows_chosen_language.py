"""The plan's calendar speaks the language picked with /language, not the Telegram client's language_code.

Before the step returned its language (bot/dispatch.py StepResult), the adapter guessed it from the update and
drew the weekday labels in the client's language.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.i18n import Catalog
from tests.fakes.fake_bot_api import FakeBotApi
from tests.test_telegram import TgServer, TgUser, demo, inline_ids, start_tg

TOKEN = "123:ABC"


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[TgServer]:
    fake = await FakeBotApi(TOKEN).start()
    async with aiohttp.ClientSession() as http:
        server = await start_tg(tmp_path, fake, http)
        yield server
        await server.runner.cleanup()
    await fake.stop()


def labels(message: dict[str, object]) -> list[str]:
    markup = message.get("reply_markup") or {}
    assert isinstance(markup, dict)
    return [str(b["text"]) for row in markup.get("inline_keyboard", []) for b in row]


async def test_calendar_weekdays_follow_the_language_picked_not_the_clients(srv: TgServer) -> None:
    catalog = Catalog.load()
    user = TgUser(srv, 7301, lang="en")  # an English Telegram client...
    person = await demo(srv, "fresh")
    await user.say("/start")
    await user.say("/language")
    await user.click("zh_CN")  # ...whose user reads Chinese
    await user.say("/menu")
    await user.click("plan")
    await user.click("agree")
    shown = await user.share_contact(person["phone"])
    calendar = shown[-1]
    assert any(d.startswith("date:") for d in inline_ids(calendar)), inline_ids(calendar)
    weekdays = catalog.text("tg.weekdays", "zh_CN").split()
    assert all(day in labels(calendar) for day in weekdays), labels(calendar)
    assert not set(catalog.text("tg.weekdays", "en").split()) & set(labels(calendar))
