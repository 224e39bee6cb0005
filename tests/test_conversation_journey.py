"""Issue 12: a user who types their intent files every eligible unbind request in at most 7 actions from the
first screen, over the real web chat API. An action is one message or one tap; opening the page is not one."""

from __future__ import annotations

import re

import aiohttp

from bot.server import RunningServer
from tests.conftest import Chat


class Counted(Chat):
    actions: int = 0

    async def act_say(self, text: str) -> None:
        self.actions += 1
        await self.say(text)

    async def act_pick(self, choice: str) -> None:
        self.actions += 1
        await self.pick(choice)


async def test_typed_intent_files_every_eligible_request_in_at_most_seven_actions(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = Counted(http, server.url)
    await chat.open()
    demo = await chat.demo("recycled")
    await chat.say("/start")  # the page does this by itself on first load
    await chat.act_say("我要解绑前任机主的账号 " + demo["phone"])
    assert "同意并继续" in str(chat.last)
    await chat.act_pick("agree")
    assert "验证码" in chat.text
    await chat.act_say(await chat.latest_code(demo["phone"]))
    await chat.act_say(f"{demo['name']} {demo['id_number']}")
    masked = demo["phone"][:3] + "****" + demo["phone"][-4:]
    assert f"号码：{masked}" in chat.text
    await chat.act_pick("confirm")
    listed = re.findall(r"· (.+?)（(\d{4}-\d{2})）", chat.text)
    assert listed, chat.text
    await chat.act_pick("all")
    reference = re.search(r"编号 (HQ\d{8}-[A-Z0-9]{6})", chat.text)
    assert reference, chat.text
    assert f"{len(listed)} 个平台" in chat.text
    assert chat.actions <= 7, chat.actions
    # Nothing eligible is left behind: a second attempt finds nothing more to file.
    await chat.say("解绑")
    assert "HQ" not in chat.text
    assert demo["name"] not in str(chat.transcript) and demo["id_number"] not in str(chat.transcript)


async def test_same_journey_in_english(server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = Counted(http, server.url)
    await chat.open(lang="en")
    demo = await chat.demo("recycled")
    await chat.say("/start")
    await chat.act_say("unbind the previous owner's accounts")
    await chat.act_pick("agree")
    await chat.act_say(demo["phone"])
    await chat.act_say(await chat.latest_code(demo["phone"]))
    await chat.act_say(f"{demo['name']} {demo['id_number']}")
    await chat.act_pick("confirm")
    await chat.act_pick("all")
    assert re.search(r"HQ\d{8}-[A-Z0-9]{6}", chat.text), chat.text
    assert chat.actions <= 7, chat.actions
