"""Recycled-number check, number tagging, ported and tagged demo numbers, delete-my-data, and the privacy scan."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.server import RunningServer
from dialogs.tenure import eligible_platforms
from tests.conftest import Chat


async def test_recycled_number_check_is_open_to_anyone_and_rate_limited(chat: Chat) -> None:
    recycled = (await chat.demo("recycled"))["phone"]
    fresh = (await chat.demo("fresh"))["phone"]
    await chat.say("/start")
    await chat.pick("recycle")
    await chat.say(recycled)
    assert "是二次号" in chat.text and "买号小贴士" in chat.text
    assert re.search(r"约 \d+ (年|个月)前|\d+ 天前", chat.text)
    assert recycled not in chat.text
    await chat.say(fresh)
    assert "不是二次号" in chat.text
    for _ in range(3):
        await chat.pick("again")
        await chat.say(fresh)
    await chat.pick("again")
    await chat.say(fresh)
    assert "查询太频繁" in chat.text


async def test_tagging_statement_and_public_check(server: RunningServer, http: aiohttp.ClientSession) -> None:
    holder = await Chat(http, server.url).open()
    demo = await holder.demo("tagged")
    await holder.verify(demo["phone"])
    await holder.say("/menu")
    await holder.pick("tag")
    await holder.realname(demo["name"], demo["id_number"])
    await holder.pick("confirm")
    await holder.pick("new_holder")
    assert "预览" in holder.text and "核验码：" not in holder.text  # nothing is published before the confirmation
    await holder.pick("confirm")
    statement = re.search(r"自 (\d{4}-\d{2}) 起已更换机主。\n核验码：(\w+)", holder.text)
    assert statement, holder.text
    await holder.pick("tag")
    await holder.pick("clear_harassment")
    await holder.pick("confirm")
    assert "骚扰标记清除申请" in holder.text
    stranger = await Chat(http, server.url).open()
    await stranger.say(f"/check {statement.group(2).lower()}")
    assert f"自 {statement.group(1)} 起已更换机主" in stranger.text
    assert demo["name"] not in stranger.text and demo["phone"] not in stranger.text
    await stranger.say("/check")
    await stranger.say("ZZZZ9999")
    assert "没有找到这个核验码" in stranger.text
    await stranger.say("!!")
    assert "6–12 位字母或数字" in stranger.text


async def test_ported_number_unbind_flow(chat: Chat) -> None:
    demo = await chat.demo("ported")
    await chat.unbind_ready(demo)
    assert "可以申请解绑" in chat.text or "没有可以远程解绑" in chat.text


async def test_forget_keeps_open_requests_anonymised(server: RunningServer, chat: Chat) -> None:
    demo = await chat.demo("recycled")
    await chat.unbind_ready(demo)
    await chat.pick("all")
    await chat.say("/forget")
    await chat.pick("confirm")
    assert "1 项解绑申请以匿名方式保留" in chat.text
    from sqlmodel import select

    from bot.storage import PendingRealName, RealNameCheck, UnbindRequestRow

    async with server.runtime.db.session() as session:
        assert (await session.exec(select(RealNameCheck))).all() == []
        assert (await session.exec(select(PendingRealName))).all() == []
        rows = (await session.exec(select(UnbindRequestRow))).all()
    assert len(rows) == 1 and rows[0].user_id is None and rows[0].phone_enc is None and rows[0].phone_masked == ""


async def test_no_plain_phone_name_or_id_in_database_or_logs(server: RunningServer, http: aiohttp.ClientSession,
                                                              log_capture, tmp_path: Path) -> None:
    chat = await Chat(http, server.url).open()
    demo = await chat.demo("recycled")
    await chat.unbind_ready(demo)
    await chat.pick("all")
    await chat.say("/menu")
    await chat.pick("recycle")
    await chat.say(demo["phone"])
    await chat.say("/menu")
    await chat.pick("tag")
    await chat.pick("new_holder")
    await chat.pick("confirm")
    assert "核验码" in chat.text
    logs = log_capture.getvalue()
    secrets_ = [demo["phone"], demo["id_number"], demo["id_number"].lower(), demo["name"]]
    assert "holder check" in logs and "unbind request submitted" in logs
    assert [s for s in secrets_ if s in logs] == []
    await server.stop()
    for path in tmp_path.glob("haoqing.sqlite3*"):
        raw = path.read_bytes()
        assert [s for s in secrets_ if s.encode() in raw] == [], path
    for text in secrets_:
        assert text not in str(chat.transcript) or text == demo["name"]


MONTHS = st.dates(min_value=date(2000, 1, 1), max_value=date(2026, 12, 31)).map(lambda d: d.strftime("%Y-%m"))


@settings(max_examples=500, deadline=None)
@given(tenure_start=st.dates(min_value=date(2001, 1, 1), max_value=date(2026, 12, 31)),
       bindings=st.lists(st.fixed_dictionaries({
           "platform": st.sampled_from(["weibo", "taobao", "meituan", "dianping", "douyin", "toutiao", "xiaomi",
                                        "wechat", "qq"]),
           "bound_month": MONTHS,
           "tenure": st.sampled_from(["previous", "current"]),
       }), max_size=20),
       requested=st.one_of(st.none(), st.lists(st.sampled_from(["weibo", "taobao", "douyin", "wechat"]))))
def test_tenure_rule_never_covers_a_current_tenure_binding(tenure_start: date, bindings: list[dict],
                                                          requested: list[str] | None) -> None:
    unbindable = ["weibo", "taobao", "meituan", "dianping", "douyin", "toutiao", "xiaomi"]
    chosen = eligible_platforms(bindings, tenure_start, unbindable, requested)
    start_month = tenure_start.strftime("%Y-%m")
    for platform in chosen:
        backing = [b for b in bindings if b["platform"] == platform and b["tenure"] == "previous"
                   and b["bound_month"] < start_month]
        assert backing, (platform, tenure_start, bindings)
        assert platform in unbindable and (requested is None or platform in requested)
