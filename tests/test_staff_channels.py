"""Staff answer Telegram and WeChat users on their own channel: real update JSON and real WeChat XML in, the
staff API in between, and the fake Bot API / WeChat API on loopback recording what the user received."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bot.staff import cli
from tests.fakes.fake_bot_api import FakeBotApi
from tests.fakes.fake_wechat_api import CUSTOM_SEND
from tests.test_staff import ALWAYS_OPEN, Staff, add_staff
from tests.test_telegram import TOKEN as TG_TOKEN
from tests.test_telegram import TgUser, demo, start_tg, texts
from tests.test_telegram import fake as fake
from tests.test_wechat import WxServer
from tests.test_wechat import fake_api as fake_api
from tests.test_wechat import wx_factory as wx_factory


async def eventually(check: Callable[[], Awaitable[bool] | bool], seconds: float = 15.0) -> None:
    """Waits for a sender running in the background; bounded, and never asserts how long it took."""
    for _ in range(int(seconds / 0.05)):
        outcome = check()
        if await outcome if isinstance(outcome, Awaitable) else outcome:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not come true")


async def test_a_telegram_user_reaches_staff_and_gets_the_reply_in_telegram(
        tmp_path: Path, fake: FakeBotApi, http: aiohttp.ClientSession) -> None:
    srv = await start_tg(tmp_path, fake, http, **ALWAYS_OPEN)
    member = Staff(srv.url)
    try:
        await add_staff(srv, "alice")
        user = TgUser(srv, 7001)
        await user.say("/start")
        answer = texts(await user.say("人工"))
        assert "正在为您转接人工客服" in answer and "排在人工客服队列第 1 位" in answer
        await member.login("alice")
        [ticket] = await member.tickets()
        assert ticket["channel"] == "telegram" and ticket["context"]["channel"] == "telegram"
        await member.post(f"/staff/api/tickets/{ticket['id']}/claim")
        await eventually(lambda: "客服 alice 已接入" in texts(user.fake.sent(user.chat_id)))
        await member.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "您好，请问哪个平台？"})
        await eventually(lambda: "客服 alice：您好，请问哪个平台？" in texts(user.fake.sent(user.chat_id)))
        user.new()
        # The user answers in Telegram; the bot says nothing, the staff member sees it.
        assert await user.say("微博，谢谢") == []
        detail = await member.get(f"/staff/api/tickets/{ticket['id']}")
        assert [line["text"] for line in detail["transcript"] if line["author"] == "user"] == ["微博，谢谢"]
        await member.post(f"/staff/api/tickets/{ticket['id']}/close")
        await eventually(lambda: "客服已结束本次对话" in texts(user.fake.sent(user.chat_id)))
        # Back at the main menu: its keyboard came with the note.
        await eventually(lambda: any("lookup" in str(m.get("reply_markup", "")) for m in user.fake.sent(user.chat_id)
                                     if "请选择" in str(m.get("text", ""))))
    finally:
        await member.close()
        await srv.runner.cleanup()


async def test_a_wechat_user_gets_staff_replies_in_the_window_then_on_their_next_message(
        wx_factory: Callable[..., Awaitable[WxServer]]) -> None:
    wx = await wx_factory(wechat_sender_poll_seconds=0.1, **ALWAYS_OPEN)
    await add_staff(wx.server, "alice")
    member = Staff(wx.url)
    try:
        user = wx.user("oStaffUser00000001")
        answer = await user.say("人工")
        assert answer.kind == "text" and "排在人工客服队列第 1 位" in answer.text
        await member.login("alice")
        [ticket] = await member.tickets()
        assert ticket["channel"] == "wechat"
        await member.post(f"/staff/api/tickets/{ticket['id']}/claim")
        # Within the 48-hour window the user's message opened: the notice and replies go by customer service.
        for n in range(1, 5):
            await member.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": f"第 {n} 条回复"})
        await wx.fake.wait_for_sent(5, CUSTOM_SEND, user.openid)
        received = wx.fake.texts(user.openid)
        assert "客服 alice 已接入" in received[0]
        assert received[1:] == [f"客服 alice：第 {n} 条回复" for n in range(1, 5)]
        # The window's five messages are used up: the next reply waits for the user's next message.
        await member.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "第 5 条回复"})
        await asyncio.sleep(1.0)  # ten sender rounds: nothing may go out of the window
        assert len(wx.fake.sent(CUSTOM_SEND, user.openid)) == 5
        answer = await user.say("好的")
        assert answer.kind == "success", "with staff the bot itself stays silent"
        await wx.fake.wait_for_sent(6, CUSTOM_SEND, user.openid)
        assert wx.fake.texts(user.openid)[-1] == "客服 alice：第 5 条回复"
        detail = await member.get(f"/staff/api/tickets/{ticket['id']}")
        assert [line["text"] for line in detail["transcript"] if line["author"] == "user"] == ["好的"]
    finally:
        await member.close()


async def test_wechat_native_support_still_hands_over_to_wechat_agents(
        wx_factory: Callable[..., Awaitable[WxServer]]) -> None:
    wx = await wx_factory(wechat_native_support=True, **ALWAYS_OPEN)
    user = wx.user()
    assert (await user.say("人工")).kind == "transfer_customer_service"
    member = Staff(wx.url)
    try:
        await add_staff(wx.server, "alice")
        await member.login("alice")
        assert await member.tickets() == [], "WeChat's own agents have it: no ticket here"
    finally:
        await member.close()



STAFF_CHAT = -1001234567890
ALICE_TG = 5550001


class ForumBotApi(FakeBotApi):
    """The fake Bot API plus forum topics, as a forum supergroup has them."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.topics: dict[int, dict[str, Any]] = {}

    async def _m_createForumTopic(self, params: dict[str, Any]) -> Any:
        thread = 1000 + len(self.topics)
        self.topics[thread] = {"name": str(params["name"]), "closed": False, "chat_id": int(params["chat_id"])}
        return {"message_thread_id": thread, "name": params["name"], "icon_color": 7322096}

    async def _m_closeForumTopic(self, params: dict[str, Any]) -> Any:
        self.topics[int(params["message_thread_id"])]["closed"] = True
        return True

    def in_topic(self, thread: int) -> list[str]:
        return [str(p["text"]) for p in self.sent(STAFF_CHAT) if int(p.get("message_thread_id", 0)) == thread]


def topic_message(thread: int, text: str, *, sender: int = ALICE_TG, message_id: int = 1) -> dict[str, Any]:
    return {"message": {"message_id": message_id, "date": 1764500000, "message_thread_id": thread,
                        "is_topic_message": True, "text": text,
                        "chat": {"id": STAFF_CHAT, "type": "supergroup", "title": "Staff", "is_forum": True},
                        "from": {"id": sender, "is_bot": False, "first_name": "Alice"}}}


async def test_the_telegram_staff_group_mirrors_a_ticket_and_staff_answer_from_the_topic(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    forum = await ForumBotApi(TG_TOKEN).start()
    srv = await start_tg(tmp_path, forum, http, telegram_staff_chat_id=str(STAFF_CHAT), **ALWAYS_OPEN)
    member = Staff(srv.url)
    try:
        await add_staff(srv, "alice")
        settings = srv.rt.settings
        assert await cli.run(["link", "alice", str(ALICE_TG)], settings, io.StringIO()) == 0
        demo_phone = (await demo(srv, "recycled"))["phone"]
        user = TgUser(srv, 7002)
        await user.say("人工")
        await eventually(lambda: len(forum.topics) == 1)  # mirrored behind the user's step, never in its way
        [(thread, topic)] = forum.topics.items()
        assert topic["chat_id"] == STAFF_CHAT and topic["name"].startswith("#1 · Telegram")
        await eventually(lambda: any("新工单 #1" in t for t in forum.in_topic(thread)))
        await user.say(f"号码 {demo_phone} 总收到催收")
        masked = demo_phone[:3] + "****" + demo_phone[-4:]
        await eventually(lambda: f"用户：号码 {masked} 总收到催收" in forum.in_topic(thread))
        assert demo_phone not in " ".join(forum.texts(STAFF_CHAT))

        # Alice answers from her phone: the ticket is claimed for her and the user gets it in Telegram.
        assert await srv.post(topic_message(thread, "您好，我来处理。")) == 200
        await eventually(lambda: "客服 alice：您好，我来处理。" in texts(forum.sent(user.chat_id)))
        await member.login("alice")
        [ticket] = await member.tickets("claimed")
        assert ticket["claimed_by"] == "alice"
        detail = await member.get(f"/staff/api/tickets/{ticket['id']}")
        assert [line["text"] for line in detail["transcript"] if line["author"] == "staff"] == ["您好，我来处理。"]
        # A console reply shows in the topic too: the two stay in step.
        await member.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "请稍等。"})
        await eventually(lambda: "客服 alice（工作台）：请稍等。" in forum.in_topic(thread))
        # Someone in the group who is not linked to a staff account reaches no one.
        await srv.post(topic_message(thread, "我也来说一句", sender=999, message_id=2))
        await eventually(lambda: any("没有关联客服账号" in t for t in forum.in_topic(thread)))
        assert "我也来说一句" not in texts(forum.sent(user.chat_id))
        # /close in the topic hands the user back to the bot and closes the topic.
        await srv.post(topic_message(thread, "/close", message_id=3))
        await eventually(lambda: "客服已结束本次对话" in texts(forum.sent(user.chat_id)))
        await eventually(lambda: forum.topics[thread]["closed"])
        assert (await member.tickets("closed"))[0]["id"] == ticket["id"]
    finally:
        await member.close()
        await srv.runner.cleanup()
        await forum.stop()
