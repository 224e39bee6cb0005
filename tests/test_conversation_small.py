"""Issue 12, finding 9 (the smaller ones) and the unbind list, as plain state-machine steps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.i18n import Catalog
from dialogs import machine
from dialogs.model import Event, Step

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CATALOG = Catalog.load()


def result(effect: str, **values: Any) -> Event:
    return Event("result", effect=effect, result=values, now=NOW)


def shown(step: Step, lang: str = "zh_CN") -> str:
    return "\n".join([CATALOG.render(r.msg, lang) for r in step.replies]
                     + [CATALOG.render(c.label, lang) for r in step.replies for c in r.choices])


def option(pid: str, name: str, **extra: str) -> dict[str, str]:
    return {"platform": pid, "name_zh": name, "name_en": pid, "month": "2019-05", **extra}


def test_one_eligible_platform_is_not_offered_as_one_click_all() -> None:
    step = machine.step("unbind.pick", {}, result("unbind.options", ok=True, eligible=[option("weibo", "微博")],
                                                  manual=[]))
    assert "all" not in [c.id for c in step.replies[-1].choices]
    assert "一键" not in shown(step) and "全部" not in shown(step)
    many = machine.step("unbind.pick", {}, result("unbind.options", ok=True, manual=[],
                                                  eligible=[option("weibo", "微博"), option("douyin", "抖音")]))
    text = shown(many)
    assert "提交：解绑以上全部 2 个" in text and "· 微博（2019-05）" in text and "· 抖音（2019-05）" in text


def test_all_files_at_once_exactly_what_the_list_names_and_never_a_rejected_one() -> None:
    options = {"eligible": [option("weibo", "微博"), option("douyin", "抖音", history="rejected",
                                                            reason="identity_check_failed"),
                            option("taobao", "淘宝", history="processing"), option("meituan", "美团")],
               "manual": []}
    data = {"unbind_options": options, "verified": {"id": 1}, "realname": {"tenure_start": "2024-01-01"}}
    listed = machine.step("unbind.pick", data, result("unbind.options", ok=True, **options))
    text = shown(listed)
    assert "抖音：未能解绑（原因：平台没能核实您是现任机主）" in text and "正在办理中" in text
    filed = machine.step("unbind.pick", dict(listed.data), Event("choice", choice="all", now=NOW))
    assert [e.kind for e in filed.effects] == ["unbind.create"]
    assert filed.effects[0].args["platforms"] == ["weibo", "meituan"]
    again = machine.step("unbind.pick", dict(listed.data), Event("choice", choice="re:douyin", now=NOW))
    assert again.state == "unbind.confirm" and not again.effects and "上次被拒" in shown(again)


def test_a_refused_resend_says_how_long_the_limiter_said_not_always_60() -> None:
    data = {"challenge_id": 1, "phone_masked": "138****8000"}
    step = machine.step("verify.code", data, result("otp.resend", ok=False, reason="too_soon", retry_in=37))
    assert "请 37 秒后再试" in shown(step)


def test_the_recycled_number_check_speaks_in_years_and_gives_its_tips_once() -> None:
    answer = {"ok": True, "masked": "138****8000", "known": True, "reissued": True, "released_days_ago": 2364,
              "previous_bindings_remain": True}
    first = machine.step("recycle.phone", {}, result("recycle.check", **answer))
    assert "约 6 年前" in shown(first) and "2364" not in shown(first) and "买号小贴士" in shown(first)
    second = machine.step("recycle.phone", dict(first.data), result("recycle.check", **answer))
    assert "买号小贴士" not in shown(second) and "要再查一个号码吗" in shown(second)
    assert "约 3 个月前" in shown(machine.step("recycle.phone", {}, result(
        "recycle.check", **{**answer, "released_days_ago": 95})))


def test_cancel_says_what_it_did_and_finished_requests_promise_nothing() -> None:
    step = machine.step("realname.name", {}, Event("text", text="取消", now=NOW))
    assert step.state == "menu" and step.replies[0].msg.key == "menu.cancelled"
    finished = machine.step("requests.view", {"verified": {"id": 1}}, result("requests.list", ok=True, items=[
        {"reference": "HQ20261120-ABCDEF", "status": "done", "due": "2026-11-27", "finished_on": "2026-11-21",
         "platforms": [{"platform": "weibo", "name_zh": "微博", "name_en": "Weibo", "status": "done"}]}]))
    assert "主动通知" not in shown(finished) and "都已办结" in shown(finished)


def test_lookup_says_which_previous_bindings_cannot_be_unbound_remotely() -> None:
    data = {"verified": {"id": 1, "at": NOW.isoformat(), "masked": "138****8000"}}
    step = machine.step("lookup", data, result(
        "registry.lookup", ok=True, masked="138****8000", carrier="china_mobile", original_carrier="china_mobile",
        ported=False, virtual_operator=False, tenure_start="2024-03-01",
        previous=[{**option("wechat", "微信"), "remote": False}, {**option("weibo", "微博"), "remote": True}],
        current=[]))
    text = shown(step)
    assert "· 微信（2019-05）· 不能远程解绑，需手动处理" in text and "· 微博（2019-05）\n" in text + "\n"


def test_name_and_id_number_in_one_message_check_at_once() -> None:
    data = {"verified": {"id": 4, "at": NOW.isoformat(), "masked": "138****8000"}}
    step = machine.step("realname.name", data, Event("text", text="张三，11010519491231002X", now=NOW))
    assert [e.kind for e in step.effects] == ["realname.stash", "realname.check"]
    assert step.effects[0].args == {"name": "张三"} and step.effects[1].args["id_number"] == "11010519491231002X"
    bad = machine.step("realname.name", data, Event("text", text="张三 110105194912310021", now=NOW))
    assert not bad.effects and bad.replies[0].error


def test_wechat_does_not_number_buttons_again_when_the_labels_carry_the_lists_numbers() -> None:
    from bot.channels.wechat_text import payload_text

    own = {"text": "清单", "numbered": False, "choices": [{"id": "i:110", "label": "10. 备份通讯录"}]}
    assert "1. 10. 备份通讯录" not in payload_text(own, numbered=True, hint="")
    assert "· 10. 备份通讯录" in payload_text(own, numbered=True, hint="")
    menu = {"text": "菜单", "choices": [{"id": "lookup", "label": "查询号码绑定"}]}
    assert "1. 查询号码绑定" in payload_text(menu, numbered=True, hint="")
