"""The state machine as plain functions: every state, every kind of input, no undeclared move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.i18n import Catalog
from dialogs import machine
from dialogs.intents import IntentModel
from dialogs.model import LANGS, Event, Step
from dialogs.phones import parse_mainland_mobile

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CATALOG = Catalog.load()
MODEL = IntentModel.from_catalog(CATALOG.messages)


def text(value: str) -> Event:
    return Event("text", text=value, now=NOW)


def choice(value: str) -> Event:
    return Event("choice", choice=value, now=NOW)


def result(effect: str, **values: Any) -> Event:
    return Event("result", effect=effect, result=values, now=NOW)


def render_all(step: Step, lang: str) -> list[str]:
    out = []
    for reply in step.replies:
        out.append(CATALOG.render(reply.msg, lang))
        out.extend(CATALOG.render(c.label, lang) for c in reply.choices)
    return out


def test_start_shows_every_flow_of_the_mission() -> None:
    step = machine.step("", {}, text("/start"))
    assert step.state == "menu"
    ids = [c.id for c in step.replies[-1].choices]
    assert ids == ["lookup", "unbind", "recycle", "tag", "plan", "requests", "guide", "human", "settings"]


def test_lookup_asks_consent_then_phone_then_code_then_looks_up() -> None:
    step = machine.step("menu", {}, choice("lookup"))
    assert step.state == "verify.consent"
    step = machine.step(step.state, step.data, choice("agree"))
    assert step.state == "verify.phone"
    assert [e.kind for e in step.effects] == ["consent.record"]
    assert step.replies[-1].request_contact
    step = machine.step(step.state, step.data, text("+86 138-0013-8000"))
    assert step.effects[0].kind == "otp.send" and step.effects[0].args["phone"] == "13800138000"
    step = machine.step(step.state, step.data, result("otp.send", ok=True, challenge_id=7, masked="138****8000"))
    assert step.state == "verify.code" and step.data["challenge_id"] == 7
    assert "13800138000" not in str(step.data)
    step = machine.step(step.state, step.data, text("１２３４５６"))
    assert step.effects[0].kind == "otp.check" and step.effects[0].args["code"] == "123456"
    step = machine.step(step.state, step.data,
                        result("otp.check", ok=True, verification_id=3, masked="138****8000"))
    assert step.state == "lookup"
    assert [e.kind for e in step.effects] == ["registry.lookup"]


def test_declining_consent_returns_to_menu_and_keeps_nothing() -> None:
    step = machine.step("menu", {}, choice("lookup"))
    step = machine.step(step.state, step.data, choice("decline"))
    assert step.state == "menu"
    assert "consent" not in step.data and "goal" not in step.data
    assert step.effects[0].args == {"version": "2026-11-v1", "accepted": False}


def test_verification_expires_after_thirty_minutes() -> None:
    data = {"consent": "2026-11-v1",
            "verified": {"id": 1, "at": (NOW - timedelta(minutes=31)).isoformat(), "masked": "138****8000"}}
    assert machine.step("menu", data, choice("lookup")).state == "verify.phone"
    data["verified"]["at"] = (NOW - timedelta(minutes=29)).isoformat()
    assert machine.step("menu", data, choice("lookup")).state == "lookup"


def test_a_shared_contact_counts_only_when_it_is_the_senders_own() -> None:
    data = {"consent": "2026-11-v1", "goal": "lookup"}
    forged = machine.step("verify.phone", data, Event("contact", contact_phone="13800138000", contact_own=False))
    assert forged.state == "verify.phone" and not forged.effects and forged.replies[0].error
    own = machine.step("verify.phone", data, Event("contact", contact_phone="+8613800138000", contact_own=True))
    assert own.effects[0].kind == "contact.verify"


def test_wrong_codes_count_down_then_lock() -> None:
    data = {"challenge_id": 1, "phone_masked": "138****8000"}
    step = machine.step("verify.code", data, result("otp.check", ok=False, reason="wrong", remaining=2))
    assert "2" in CATALOG.render(step.replies[0].msg, "en")
    step = machine.step("verify.code", data, result("otp.check", ok=False, reason="locked"))
    assert step.state == "verify.code" and {c.id for c in step.replies[-1].choices} >= {"resend", "change"}


def test_lookup_result_shows_split_counts_and_months_only() -> None:
    data = {"verified": {"id": 1, "at": NOW.isoformat(), "masked": "138****8000"}}
    step = machine.step("lookup", data, result(
        "registry.lookup", ok=True, masked="138****8000", carrier="china_unicom", original_carrier="china_mobile",
        ported=True, virtual_operator=False, tenure_start="2024-03-01",
        previous=[{"platform": "weibo", "name_zh": "微博", "name_en": "Weibo", "month": "2019-05"},
                  {"platform": "taobao", "name_zh": "淘宝", "name_en": "Taobao", "month": "2020-01"}],
        current=[{"platform": "douyin", "name_zh": "抖音", "name_en": "Douyin", "month": "2024-06"}]))
    zh = "\n".join(render_all(step, "zh_CN"))
    assert "前任机主期间绑定：2 个平台" in zh and "· 微博（2019-05）" in zh
    assert "您持有期间绑定：1 个平台" in zh and "已携号转网，原属中国移动" in zh
    en = "\n".join(render_all(step, "en"))
    assert "previous holders' tenure: 2 platforms" in en


def test_phone_parsing_accepts_the_usual_spellings_and_names_each_problem() -> None:
    for raw in ("+86 138-0013-8000", "8613800138000", "008613800138000", "１３８００１３８０００", "138 0013 8000"):
        assert parse_mainland_mobile(raw).national == "13800138000", raw
    assert parse_mainland_mobile("010-12345678").problem == "landline"
    assert parse_mainland_mobile("+852 9123 4567").problem == "foreign"
    assert parse_mainland_mobile("14012345678").problem == "iot"
    assert parse_mainland_mobile("12345678901").problem == "invalid_range"
    assert parse_mainland_mobile("1380013800").problem == "length"
    assert parse_mainland_mobile("hello").problem == "not_a_number"


def test_global_commands_work_from_every_state() -> None:
    from dialogs import handoff

    for state in [*machine.HANDLERS, ""]:
        if state in handoff.STATES - {handoff.WAITING}:
            # With staff, a global command asks before leaving the human (issue 13; tests/test_staff_dialog.py).
            for typed in ("菜单", "/cancel", "/language"):
                assert machine.step(state, {}, text(typed)).state == handoff.CONFIRM_LEAVE
            continue
        assert machine.step(state, {"challenge_id": 1}, text("菜单")).state == "menu"
        assert machine.step(state, {}, text("/cancel")).state == "menu"
        assert machine.step(state, {}, text("/language")).state == "settings.language"
        helped = machine.step(state, {}, text("帮助"))
        assert any(r.msg.key == "help" for r in helped.replies)
        assert machine.step(state, {}, text("人工")).replies


EVENTS = st.one_of(
    st.text(max_size=40).map(text),
    st.sampled_from(["lookup", "agree", "decline", "resend", "change", "menu", "settings", "language",
                     "zh_CN", "en", "forget", "confirm", "reminders", "unbind", "bogus", "all", "p:weibo", "guide",
                     "back", "requests", "refresh", "again", "new_holder", "clear_harassment", "letter", "browse",
                     "c:social", "g:weibo", "recycle", "tag", "go:unbind", "go:phone_lookup", "go:greet",
                     "page:next", "page:prev", "i:1", "cancel", "list", "esc:HQ1", "re:weibo", "view",
                     "detail", "done", "snooze"]).map(choice),
    st.sampled_from(["photo", "sticker", "voice", "location", ""]).map(lambda m: Event("media", media=m, now=NOW)),
    st.sampled_from(["otp.send", "otp.check", "registry.lookup", "data.forget", "contact.verify",
                     "realname.check", "unbind.options", "unbind.create", "requests.list", "guide.list",
                     "guide.platform", "recycle.check", "tag.create", "tag.lookup", "tag.status", "phone.seal",
                     "plan.load", "plan.mark", "plan.cancel", "guide.letter"]).map(
        lambda e: result(e, ok=False, reason="unavailable")),
    st.builds(lambda own: Event("contact", contact_phone="13800138000", contact_own=own, now=NOW), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(state=st.sampled_from([*machine.HANDLERS, "", "no.such.state"]), events=st.lists(EVENTS, max_size=6))
def test_any_event_in_any_state_gives_a_valid_state_and_renderable_replies(state: str, events: list[Event]) -> None:
    data: dict[str, Any] = {"challenge_id": 1, "phone_masked": "138****8000"}
    for event in events:
        step = machine.step(state, data, event, MODEL)
        assert step.state in machine.HANDLERS
        assert step.replies or step.effects, f"{state} answered nothing to {event}"
        for lang in LANGS:
            render_all(step, lang)
        state, data = step.state, dict(step.data)
