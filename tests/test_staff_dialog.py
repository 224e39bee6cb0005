"""The handoff dialog as plain functions (no I/O), and the business-hours arithmetic on fixed moments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.i18n import Catalog
from bot.staff.hours import BadHours, BusinessHours
from dialogs import handoff, machine
from dialogs.model import LANGS, Event

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def text(value: str) -> Event:
    return Event("text", text=value, now=NOW)


def choice(value: str) -> Event:
    return Event("choice", choice=value, now=NOW)


def result(effect: str, **values: object) -> Event:
    return Event("result", effect=effect, result=values, now=NOW)


def render(step: machine.Step) -> list[str]:
    catalog = Catalog.load()
    return [catalog.render(reply.msg, lang) for reply in step.replies for lang in LANGS]


def test_human_opens_a_ticket_and_the_queue_place_follows() -> None:
    step = machine.step("menu", {}, text("人工"))
    assert step.state == handoff.WAITING
    assert [e.kind for e in step.effects] == ["ticket.open"] and step.effects[0].args == {"reason": "asked"}
    opened = machine.step(step.state, step.data, result("ticket.open", ok=True, status="open", position=2,
                                                        wait_minutes=10, in_hours=True))
    assert opened.state == handoff.WAITING and "排在人工客服队列第 2 位，预计等待约 10 分钟" in render(opened)[0]
    off = machine.step(step.state, step.data, result("ticket.open", ok=True, status="open", in_hours=False,
                                                     hours="09:00-18:00", opens_at="2026-12-07 09:00"))
    assert "2026-12-07 09:00" in render(off)[0]


def test_with_staff_the_bot_only_forwards() -> None:
    step = machine.step(handoff.WAITING, {}, result("handoff.claimed", staff="alice"))
    assert step.state == handoff.WITH_STAFF and "客服 alice 已接入" in render(step)[0]
    said = machine.step(step.state, step.data, text("我的号码 13800138000"))
    assert said.replies == () and said.effects[0].kind == "ticket.message"
    assert said.effects[0].args["text"] == "我的号码 13800138000", "scrubbing happens where it is stored"
    photo = machine.step(step.state, step.data, Event("media", media="photo", now=NOW))
    assert photo.effects[0].args["text"] == "[photo]" and "只能看到文字" in render(photo)[0]
    helped = machine.step(step.state, step.data, text("/help"))
    assert helped.state == handoff.WITH_STAFF


def test_a_global_command_asks_before_leaving_and_runs_once_confirmed() -> None:
    with_staff = {"handoff_by": "alice"}
    asked = machine.step(handoff.WITH_STAFF, with_staff, text("/language"))
    assert asked.state == handoff.CONFIRM_LEAVE and {c.id for r in asked.replies for c in r.choices} == {
        "leave", "stay"}
    stay = machine.step(asked.state, asked.data, choice("stay"))
    assert stay.state == handoff.WITH_STAFF and stay.effects == ()
    asked = machine.step(handoff.WITH_STAFF, with_staff, text("/language"))
    left = machine.step(asked.state, asked.data, choice("leave"))
    assert left.state == "settings.language" and [e.kind for e in left.effects] == ["ticket.close"]
    assert not any(key in left.data for key in handoff.KEYS)
    # Typing instead of answering stays with staff, and the text is for them.
    typed = machine.step(asked.state, asked.data, text("等一下"))
    assert typed.state == handoff.WITH_STAFF and typed.effects[0].kind == "ticket.message"
    # Staff close while the question is open: back to the menu.
    closed = machine.step(asked.state, asked.data, result("handoff.closed"))
    assert closed.state == "menu" and "客服已结束本次对话" in render(closed)[0]


def test_timeout_apologises_and_returns_to_the_menu() -> None:
    step = machine.step(handoff.WAITING, {}, result("handoff.timeout"))
    assert step.state == "menu" and "非常抱歉" in render(step)[0]


def test_three_misunderstandings_in_a_row_hand_over_and_one_good_answer_resets() -> None:
    state, data = "menu", {}
    for _ in range(2):
        step = machine.step(state, data, choice("nonsense"))
        state, data = step.state, dict(step.data)
        assert state == "menu"
    step = machine.step(state, data, choice("settings"))
    assert "_misses" not in step.data
    state, data = "menu", {}
    for _ in range(3):
        step = machine.step(state, data, choice("nonsense"))
        state, data = step.state, dict(step.data)
    assert state == handoff.WAITING and step.effects[0].args == {"reason": "stuck"}


def test_business_hours() -> None:
    hours = BusinessHours.parse("09:00-18:00", "1-5")
    saturday_noon = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
    assert not hours.is_open(saturday_noon)
    assert hours.describe_next(saturday_noon) == "2026-12-07 09:00"
    # 30 business minutes from Friday 17:45 Beijing: 15 on Friday, 15 on Monday.
    friday = datetime(2026, 12, 4, 9, 45, tzinfo=UTC)
    assert hours.add_business_minutes(friday, 30) == datetime(2026, 12, 7, 1, 15, tzinfo=UTC)
    assert hours.add_business_minutes(saturday_noon, 30) == datetime(2026, 12, 7, 1, 30, tzinfo=UTC)
    always = BusinessHours.parse("00:00-24:00", "1-7")
    assert always.is_open(saturday_noon) and always.add_business_minutes(saturday_noon, 30) == \
        saturday_noon + timedelta(minutes=30)
    assert BusinessHours.parse("8:30-20:00", "1,2,3,4,5,6").days == frozenset(range(1, 7))
    for bad_hours, bad_days in (("9-18", "1-5"), ("18:00-09:00", "1-5"), ("09:00-18:00", "0-5"),
                                ("09:00-18:00", "mon")):
        with pytest.raises(BadHours):
            BusinessHours.parse(bad_hours, bad_days)


def test_a_global_command_while_still_queued_leaves_the_queue_at_once() -> None:
    left = machine.step(handoff.WAITING, {"handoff_reason": "asked"}, text("/menu"))
    assert left.state == "menu" and [e.kind for e in left.effects] == ["ticket.close"]
    assert "已退出人工客服排队" in render(left)[0] and "handoff_reason" not in left.data
    helped = machine.step(handoff.WAITING, {}, text("帮助"))
    assert helped.state == handoff.WAITING and helped.effects == ()
    asked_again = machine.step(handoff.WAITING, {}, text("人工"))
    assert asked_again.state == handoff.WAITING and asked_again.effects[0].kind == "ticket.open"
    # Every answer while queued offers the way back, whatever the user types.
    said = machine.step(handoff.WAITING, {}, text("<script>alert(1)</script>"))
    assert any(c.id == "leave" for r in said.replies for c in r.choices)
