"""Invariant 1 under a crash: the process dies after an effect ran and before its step committed, the channel
delivers the same message again, and the far side saw the effect exactly once.

The bot runs as a real process (`python -m bot run`) with FAULT_AFTER_EFFECT set, so it exits at that point
as a power cut would; the SMS provider is a fake Tencent Cloud API in this process and the registry is the
embedded sandbox, whose own SQLite file survives the crash. Each count is taken on the far side.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from domain import beijing
from tests.conftest import Chat
from tests.fakes.fake_tencent_sms import FakeTencentSms, codes_to
from tests.processes import free_port, start_bot

# Several processes of their own each: the tests of one group run one after another on one pytest worker, so at
# most two such tests (one per group) load the machine's two cores at once.
pytestmark = pytest.mark.xdist_group("processes-b")



class CrashChat(Chat):
    """A web chat client that notices when the server dies under a message, and can deliver it again."""

    sms: FakeTencentSms
    lost: dict[str, Any] | None = None

    async def send(self, body: dict[str, Any], expect: int = 200) -> list[dict[str, Any]]:
        if "id" not in body:
            self.counter += 1
            body = {"id": f"m{self.counter}", **body}
        try:
            return await super().send(body, expect)
        except aiohttp.ClientError:
            self.lost = body
            self.last = []
            return []

    async def redeliver(self) -> list[dict[str, Any]]:
        assert self.lost is not None, "the server never died: the fault was not reached"
        body, self.lost = self.lost, None
        return await super().send(body)

    async def latest_code(self, phone: str) -> str:
        codes = codes_to(self.sms, phone)
        assert codes, "no code was sent to this number"
        return codes[-1]


def codes_sent(sms: FakeTencentSms, phone: str) -> int:
    return len(codes_to(sms, phone))


@dataclass
class Rig:
    tmp_path: Path
    sms: FakeTencentSms
    port: int
    http: aiohttp.ClientSession
    proc: asyncio.subprocess.Process | None = None

    def env(self, fault: str) -> dict[str, str]:
        return {"DATA_DIR": str(self.tmp_path), "SECRET_KEY": "exactly-once-secret", "SMS_PROVIDER": "tencent",
                "TENCENT_SECRET_ID": self.sms.secret_id, "TENCENT_SECRET_KEY": self.sms.secret_key,
                "TENCENT_SMS_APP_ID": "1400000000", "TENCENT_SMS_SIGN_NAME": "号清",
                "TENCENT_SMS_TEMPLATE_ID": "100001", "TENCENT_SMS_ENDPOINT": self.sms.endpoint,
                "FAULT_AFTER_EFFECT": fault}

    async def start(self, fault: str = "") -> None:
        self.proc = await start_bot(self.port, self.env(fault), probe="/healthz")

    async def crashed(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout=30)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    def registry_rows(self, sql: str, *args: Any) -> int:
        with sqlite3.connect(self.tmp_path / "sandbox-registry.sqlite3") as conn:
            return int(conn.execute(sql, args).fetchone()[0])

    def bot_rows(self, sql: str, *args: Any) -> int:
        with sqlite3.connect(self.tmp_path / "haoqing.sqlite3") as conn:
            return int(conn.execute(sql, args).fetchone()[0])


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    sms = FakeTencentSms()
    await sms.start()
    async with aiohttp.ClientSession() as http:
        rig = Rig(tmp_path, sms, free_port(), http)
        try:
            yield rig
        finally:
            await rig.stop()
            await sms.close()


async def crash_and_replay(rig: Rig, fault: str, flow: Callable[[CrashChat, dict[str, Any]], Awaitable[None]],
                           kind: str = "recycled") -> tuple[CrashChat, dict[str, Any]]:
    """Runs `flow` on a bot that dies after the first `fault` effect, restarts it and redelivers the message
    that was lost; returns the chat (its `last` is the answer to the redelivery) and the demo number."""
    await rig.start(fault)
    chat = CrashChat(rig.http, f"http://127.0.0.1:{rig.port}")
    chat.sms = rig.sms
    await chat.open()
    demo = await chat.demo(kind)
    await flow(chat, demo)
    assert chat.lost is not None, f"the bot never ran {fault}"
    assert await rig.crashed() == 70
    await rig.start()
    body = chat.lost
    answer = await chat.redeliver()
    # A third delivery of the same message is answered from the inbox and changes nothing.
    assert await Chat.send(chat, body) == answer
    return chat, demo


async def test_sms_code_sent_once_when_the_step_is_replayed(rig: Rig) -> None:
    async def flow(chat: CrashChat, demo: dict[str, Any]) -> None:
        await chat.to_phone_prompt()
        await chat.say(demo["phone"])

    chat, demo = await crash_and_replay(rig, "otp.send", flow)
    assert re.search(r"\d{3}\*{4}\d{4}", chat.text), chat.text
    assert codes_sent(rig.sms, demo["phone"]) == 1
    # The one code that was sent is the one that works.
    await chat.say(await chat.latest_code(demo["phone"]))
    assert "验证成功" in chat.text, chat.text


async def test_unbind_request_filed_once_when_the_step_is_replayed(rig: Rig) -> None:
    async def flow(chat: CrashChat, demo: dict[str, Any]) -> None:
        await chat.unbind_ready(demo)
        await chat.file_every_unbind()

    chat, demo = await crash_and_replay(rig, "unbind.create", flow)
    assert re.search(r"HQ\d{8}-\w{6}", chat.text), chat.text
    assert rig.registry_rows("SELECT count(*) FROM unbind_requests WHERE phone = ?", demo["phone"]) == 1
    assert rig.bot_rows("SELECT count(*) FROM unbind_requests") == 1


async def test_tag_statement_filed_once_when_the_step_is_replayed(rig: Rig) -> None:
    async def flow(chat: CrashChat, demo: dict[str, Any]) -> None:
        await chat.verify(demo["phone"])
        await chat.say("/menu")
        await chat.pick("tag")
        await chat.realname(demo["name"], demo["id_number"])
        await chat.pick_if_offered("confirm")
        await chat.pick("new_holder")
        await chat.pick_if_offered("confirm")

    chat, demo = await crash_and_replay(rig, "tag.create", flow, kind="tagged")
    assert re.search(r"[A-Z0-9]{6,12}", chat.text), chat.text
    assert rig.registry_rows("SELECT count(*) FROM tags WHERE phone = ?", demo["phone"]) == 1


async def test_plan_made_once_when_the_step_is_replayed(rig: Rig) -> None:
    day = (beijing.today(datetime.now(UTC)) + timedelta(days=30)).isoformat()

    async def flow(chat: CrashChat, demo: dict[str, Any]) -> None:
        await chat.verify(demo["phone"], flow="plan")
        await chat.say(day)

    chat, _demo = await crash_and_replay(rig, "plan.save", flow, kind="fresh")
    assert day in chat.text or "0/" in chat.text, chat.text
    assert rig.bot_rows("SELECT count(*) FROM plans") == 1
    plan_id = rig.bot_rows("SELECT id FROM plans")
    reminders = rig.bot_rows("SELECT count(*) FROM jobs WHERE key LIKE ?", f"plan:{plan_id}:%")
    items = rig.bot_rows("SELECT count(*) FROM plan_items WHERE plan_id = ?", plan_id)
    assert reminders == 4, "T-7, T-1, T-0 and the day after, once each"
    assert items >= 8


async def test_a_right_code_still_verifies_when_the_step_is_replayed(rig: Rig) -> None:
    """The first run consumed the code; the replay must get that verdict back, not "code already used"."""
    async def flow(chat: CrashChat, demo: dict[str, Any]) -> None:
        await chat.to_phone_prompt()
        await chat.say(demo["phone"])
        await chat.say(await chat.latest_code(demo["phone"]))

    chat, demo = await crash_and_replay(rig, "otp.check", flow)
    assert "验证成功" in chat.text, chat.text
    assert codes_sent(rig.sms, demo["phone"]) == 1


async def test_a_real_name_check_counts_once_when_the_step_is_replayed(rig: Rig) -> None:
    """A wrong pair replayed after a crash is one failed try, not two (three lock the check)."""
    async def flow(chat: CrashChat, demo: dict[str, Any]) -> None:
        await chat.verify(demo["phone"])
        await chat.pick("unbind")
        await chat.realname(demo["name"], "11010519491231002X")

    chat, _demo = await crash_and_replay(rig, "realname.check", flow)
    assert rig.bot_rows("SELECT count(*) FROM real_name_checks") == 1
    assert "2" in chat.text, chat.text  # two tries left, not one
