"""Issue 12, findings 1 and 2, as a table of state x event: numbers mean what the user sees numbered, a checklist
of any length pages its buttons, items tick by number or name, and cancelling the plan asks first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bot.i18n import Catalog
from dialogs import machine
from dialogs.intents import IntentModel
from dialogs.model import Event, Step

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CATALOG = Catalog.load()
MODEL = IntentModel.from_catalog(CATALOG.messages)
NAMES = [("银行卡预留手机号、U 盾和短信提醒", "Bank cards"),
         ("支付宝等支付 App 的绑定手机号", "Alipay and other payment apps"),
         ("证券、基金账户的手机号", "Securities"), ("微信", "WeChat"), ("微博", "Weibo"), ("QQ 邮箱", "QQ Mail"),
         ("百度网盘", "Baidu Netdisk"), ("12306", "12306"), ("商场、超市会员卡", "Memberships"),
         ("备份通讯录", "Back up contacts"), ("注销后销毁旧 SIM 卡", "Destroy the SIM"), ("抖音", "Douyin"),
         ("快手", "Kuaishou"), ("学信网账号", "CHSI"), ("小红书", "Xiaohongshu"), ("手机品牌账号", "Phone brand IDs")]


def plan(count: int, done: tuple[int, ...] = (), days_left: int = 20) -> dict[str, Any]:
    items = [{"id": 100 + n, "name_zh": NAMES[n - 1][0], "name_en": NAMES[n - 1][1], "done": n in done,
              "snoozed_until": None} for n in range(1, count + 1)]
    return {"id": 1, "date": "2026-12-15", "days_left": days_left, "done": len(done), "total": count, "items": items}


def data_with(p: dict[str, Any]) -> dict[str, Any]:
    return {"plan": p, "verified": {"id": 1, "at": NOW.isoformat(), "masked": "138****8000"}}


def run(state: str, data: dict[str, Any], event: Event) -> Step:
    step = machine.step(state, data, event, MODEL)
    offered = next((r for r in reversed(step.replies) if r.choices), None)
    new = dict(step.data)
    if offered is not None:
        new["_offered"] = [[c.id, c.label.key] for c in offered.choices]
    return Step(step.state, new, step.replies, step.effects)


def text(value: str) -> Event:
    return Event("text", text=value, now=NOW)


def choice(value: str) -> Event:
    return Event("choice", choice=value, now=NOW)


def shown(step: Step, lang: str = "zh_CN") -> str:
    return "\n".join(CATALOG.render(r.msg, lang) for r in step.replies)


def labels(step: Step, lang: str = "zh_CN") -> list[str]:
    return [CATALOG.render(c.label, lang) for c in step.replies[-1].choices]


def loaded(count: int, **kw: Any) -> Step:
    return run("plan.view", data_with(plan(count, **kw)), Event("result", effect="plan.load", now=NOW,
                                                                  result={"ok": True, "plan": plan(count, **kw)}))


# (typed, what it must do) on an 11-item checklist: finding 1.
ELEVEN = [
    ("10", ("plan.mark", 110)),
    ("9", ("plan.mark", 109)),
    ("10.", ("plan.mark", 110)),
    ("１０", ("plan.mark", 110)),
    ("备份通讯录", ("plan.mark", 110)),
    ("back up contacts", ("plan.mark", 110)),
    ("14", ("error", "plan.number_range")),
]


@pytest.mark.parametrize(("typed", "expected"), ELEVEN)
def test_typed_numbers_and_names_act_on_the_item_with_that_number(typed: str, expected: tuple[str, Any]) -> None:
    view = loaded(11)
    step = run(view.state, dict(view.data), text(typed))
    if expected[0] == "plan.mark":
        assert [(e.kind, e.args["item_id"], e.args["action"]) for e in step.effects] == [
            ("plan.mark", expected[1], "done")]
    else:
        assert not step.effects and step.replies[0].error and step.replies[0].msg.key == expected[1]
        assert "11" in shown(step)
    assert step.state == "plan.view"
    assert not any(e.kind == "plan.cancel" for e in step.effects)


def test_the_list_numbers_items_and_the_buttons_carry_the_same_numbers_unnumbered_again() -> None:
    view = loaded(11)
    text_shown = shown(view)
    assert "⬜ 10. 备份通讯录" in text_shown
    assert view.replies[-1].numbered is False
    assert "8. 12306" in labels(view) and "下一页（还有 3 项）" in labels(view)


def test_cancelling_the_plan_asks_first_and_can_be_called_off() -> None:
    view = loaded(11)
    ask = run(view.state, dict(view.data), choice("cancel"))
    assert ask.state == "plan.cancel_confirm" and not ask.effects
    assert "2026-12-15" in shown(ask) and "11" in shown(ask)
    kept = run(ask.state, dict(ask.data), choice("back"))
    assert kept.state == "plan.view" and not kept.effects
    ask = run(view.state, dict(view.data), choice("cancel"))
    gone = run(ask.state, dict(ask.data), choice("confirm"))
    assert [e.kind for e in gone.effects] == ["plan.cancel"]
    after = run(gone.state, dict(gone.data), Event("result", effect="plan.cancel", now=NOW, result={"ok": True}))
    assert after.state == "menu" and after.replies[0].msg.key == "plan.cancelled"


def test_changing_the_date_has_a_way_back_to_the_plan() -> None:
    view = loaded(11)
    date = run(view.state, dict(view.data), choice("date"))
    assert date.state == "plan.date" and "view" in [c.id for c in date.replies[-1].choices]
    back = run(date.state, dict(date.data), choice("view"))
    assert back.state == "plan.view" and "已完成 0/11" in shown(back)


def test_a_sixteen_item_plan_pages_its_buttons_and_every_item_can_be_ticked() -> None:
    view = loaded(16)
    first = [c.id for c in view.replies[-1].choices if c.id.startswith("i:")]
    assert first == [f"i:{100 + n}" for n in range(1, 9)]
    assert "page:next" in [c.id for c in view.replies[-1].choices]
    nxt = run(view.state, dict(view.data), choice("page:next"))
    second = [c.id for c in nxt.replies[-1].choices if c.id.startswith("i:")]
    assert second == [f"i:{100 + n}" for n in range(9, 17)]
    assert "page:prev" in [c.id for c in nxt.replies[-1].choices]
    # "快手" is item 13, on page two, and a name is enough from any page.
    tick = run(view.state, dict(view.data), text("快手"))
    assert [e.args["item_id"] for e in tick.effects] == [113]
    for n in range(1, 17):
        step = run(view.state, dict(view.data), text(str(n)))
        assert [e.args["item_id"] for e in step.effects] == [100 + n]


def test_a_tick_answers_in_one_line_not_the_whole_list_again() -> None:
    view = loaded(16)
    tick = run(view.state, dict(view.data), text("13"))
    done = run(tick.state, dict(tick.data), Event("result", effect="plan.mark", now=NOW,
                                                  result={"ok": True, "plan": plan(16, done=(13,))}))
    assert done.state == "plan.view"
    assert len(done.replies) == 1 and done.replies[0].msg.key == "plan.ticked"
    assert shown(done) == "✅ 已完成：13. 快手。还剩 15 项。"
    assert "i:113" not in [c.id for c in done.replies[-1].choices]


def test_names_that_match_several_items_ask_which_by_number() -> None:
    view = loaded(16)
    step = run(view.state, dict(view.data), text("账号"))
    assert not step.effects and "14. 学信网账号" in shown(step) and "16. 手机品牌账号" in shown(step)


def test_no_plan_today_promises_the_seven_day_reminder() -> None:
    date = run("plan.date", data_with(plan(0)), Event("result", effect="plan.save", now=NOW,
                                                       result={"ok": True, "plan": plan(3, days_left=0)}))
    text_shown = shown(date)
    assert "7 天" not in text_shown.split("\n")[0] or "来不及" in text_shown
    assert "还有 0 天" not in text_shown and "就是今天" in text_shown
    soon = run("plan.date", data_with(plan(0)), Event("result", effect="plan.save", now=NOW,
                                                       result={"ok": True, "plan": plan(3, days_left=3)}))
    assert "注销前 7 天" not in shown(soon)


def test_a_typed_number_elsewhere_picks_the_button_with_that_number() -> None:
    menu = run("", {}, text("/start"))
    plan_pick = run(menu.state, dict(menu.data), text("5"))
    assert plan_pick.data.get("goal") == "plan"
    out_of_range = run(menu.state, dict(menu.data), text("14"))
    assert out_of_range.state == "menu" and out_of_range.replies[0].msg.key == "input.number_range"
    assert "9" in shown(out_of_range)
