"""Broadcasts on WeChat keep WeChat's rules: a customer-service message only inside the user's window (counted
with every other send to them), a template message where one is configured, and nothing at all otherwise.

The fake WeChat API refuses on its own what WeChat refuses (45015 outside a window, 45047 over its count, 48001
for an unverified account), so a send in breach of the rules would fail the test."""

from __future__ import annotations

from typing import Any

from bot.broadcasts import BROADCASTS
from dialogs.model import Msg, Reply
from tests.broadcast_support import finished
from tests.fakes.fake_wechat_api import CUSTOM_SEND, TEMPLATE_SEND
from tests.test_wechat import WxServer, fake_api, wx_factory  # noqa: F401  (fixtures)

TEXTS = {"zh_CN": "号清提醒：周六系统维护，届时暂停服务。", "en": "Haoqing: maintenance on Saturday."}




async def test_window_template_and_unreachable(wx_factory: Any) -> None:  # noqa: F811
    wx: WxServer = await wx_factory(wechat_template_id="tpl-status",
                                    wechat_template_fields="thing1=summary,time2=time")
    fake = wx.fake
    service = wx.server.app[BROADCASTS]

    talker = wx.user("oTalker0000001")  # wrote to us: 5 customer-service messages within 48 h
    await talker.say("/start")
    refuser = wx.user("oRefuser000001")  # wrote too, but WeChat will say the window is spent (45047)
    await refuser.say("/start")
    follower = wx.user("oFollower00001")  # followed two minutes ago: the 1-minute window has closed
    await follower.subscribe()
    await wx.execute("UPDATE inbox SET received_at = datetime(received_at, '-2 minutes') WHERE dedupe_key LIKE ?",
                     f"c:{wx.stored(follower.openid)}:%")
    fake.windows[follower.openid]["click"].opened_at -= 120
    busy = wx.user("oBusy000000001")  # wrote, then got 5 reminders: nothing left in the window
    await busy.say("/start")
    [(busy_id,)] = wx.query("SELECT id FROM users WHERE external_id = ?", wx.stored(busy.openid))
    for _ in range(5):
        await wx.server.runtime.dispatcher.push(busy_id, [Reply(Msg("settings.reminders_now_on"))], channel="wechat")
    await fake.wait_for_sent(5, openid=busy.openid, timeout=10)
    gone = wx.user("oGone000000001")  # unfollowed: never sent to
    await gone.say("/start")
    await gone.unsubscribe()
    quiet = wx.user("oQuiet00000001")  # turned reminders off: not even counted
    await quiet.say("/start")
    await quiet.say("设置")
    answer = await quiet.say("关闭提醒")
    assert answer.reply is not None and "提醒已关闭" in answer.reply["Content"]
    assert wx.query("SELECT reminders_on FROM users WHERE external_id = ?", wx.stored(quiet.openid)) == [(0,)]

    planned = await service.create(texts=TEXTS, segment={"channel": "wechat"}, dry_run=True)
    assert planned["opted_out"] == 1
    assert planned["by_channel"] == {"wechat": {"recipients": 5, "window": 2, "template": 2, "unreachable": 1}}

    before = len(fake.calls)
    fake.fail_next(CUSTOM_SEND, 45047, openid=refuser.openid)
    first = await service.create(texts=TEXTS, segment={"channel": "wechat"}, dry_run=False, created_by="test")
    await service.start(first["id"])
    status = await finished(service, first["id"], polls=300)
    assert (status["sent"], status["failed"], status["unreachable"]) == (4, 0, 1), status

    talker_texts = fake.texts(talker.openid)
    assert len(talker_texts) == 1 and talker_texts[0].startswith(TEXTS["zh_CN"]) and "设置" in talker_texts[0]
    for user in (refuser, follower, busy):
        [template] = [c for c in fake.sent(TEMPLATE_SEND, user.openid)]
        assert template.body["template_id"] == "tpl-status"
        assert template.body["data"]["thing1"]["value"].startswith("号清提醒")
    assert not [c for c in fake.calls[before:] if c.body.get("touser") in (gone.openid, quiet.openid)]
    assert len(fake.texts(busy.openid)) == 5, "no customer-service message past the window's count"
    report = await service.report_csv(first["id"])
    assert "wechat,sent,,1\n" in report and "wechat,sent,template,3\n" in report
    assert "wechat,unreachable,inactive,1\n" in report

    # Without a template, only the open window carries it; the rest are reported unreachable, never tried.
    wx.channel.sender.template_id = ""
    planned = await service.create(texts=TEXTS, segment={"channel": "wechat"}, dry_run=True)
    assert planned["by_channel"]["wechat"]["template"] == 0
    before = len(fake.calls)
    second = await service.create(texts=TEXTS, segment={"channel": "wechat"}, dry_run=False)
    await service.start(second["id"])
    status = await finished(service, second["id"], polls=300)
    assert (status["sent"], status["unreachable"]) == (1, 4), status
    sent_now = [c for c in fake.calls[before:] if c.path in (CUSTOM_SEND, TEMPLATE_SEND)]
    assert [c.body["touser"] for c in sent_now] == [talker.openid], "only the open window is used"
    assert "wechat,unreachable,no_window,3\n" in await service.report_csv(second["id"])


async def test_an_unverified_account_reaches_nobody_by_push(wx_factory: Any) -> None:  # noqa: F811
    wx: WxServer = await wx_factory(wechat_account="unverified")
    wx.fake.account = "unverified"
    service = wx.server.app[BROADCASTS]
    await wx.user("oPlain00000001").say("/start")
    planned = await service.create(texts=TEXTS, segment={}, dry_run=True)
    assert planned["by_channel"]["wechat"] == {"recipients": 1, "window": 0, "template": 0, "unreachable": 1}
    created = await service.create(texts=TEXTS, segment={}, dry_run=False)
    before = len(wx.fake.calls)
    await service.start(created["id"])
    status = await finished(service, created["id"], polls=300)
    assert status["unreachable"] == 1 and status["sent"] == 0
    assert not [c for c in wx.fake.calls[before:] if c.path in (CUSTOM_SEND, TEMPLATE_SEND)]
