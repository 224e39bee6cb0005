"""State × event → state, replies and effects, as tables: the flows that had only full-server tests (settings,
real-name, number tags, the platform guide), stepped through the pure machine (dialogs/machine.py `step`).

A row names where the conversation is, what arrives, and what must come out: the next state, the message keys of
the replies in order, and the effects asked for. No server, no database, no clock but the event's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.i18n import Catalog
from dialogs import machine
from dialogs.model import Event

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CATALOG = Catalog.load()
RECENT = (NOW - timedelta(minutes=5)).isoformat()
VERIFIED = {"verified": {"id": 7, "masked": "138****8000", "at": RECENT}}
CHECKED = {**VERIFIED, "realname": {"at": RECENT, "verification_id": 7, "tenure_start": "2021-03-04",
                                    "check_id": 3}}
VALID_ID = "11010519491231002X"


def text(value: str) -> Event:
    return Event("text", text=value, now=NOW)


def choice(value: str) -> Event:
    return Event("choice", choice=value, now=NOW)


def command(name: str, arg: str = "") -> Event:
    return Event("command", command=name, command_arg=arg, now=NOW)


def result(effect: str, **values: Any) -> Event:
    return Event("result", effect=effect, result=values, now=NOW)


Row = tuple[str, dict[str, Any], Event, str, list[str], list[str]]


def check(row: Row) -> Any:
    state, data, event, want_state, want_replies, want_effects = row
    step = machine.step(state, data, event)
    assert step.state == want_state
    assert [r.msg.key for r in step.replies] == want_replies
    assert [e.kind for e in step.effects] == want_effects
    for reply in step.replies:  # every reply renders in both languages
        for lang in ("zh_CN", "en"):
            assert CATALOG.render(reply.msg, lang)
    return step


SETTINGS: list[Row] = [
    ("menu", {}, choice("settings"), "settings", ["settings.prompt"], []),
    ("settings", {}, choice("reminders"), "settings", ["settings.reminders_now_off", "settings.prompt"],
     ["settings.reminders"]),
    ("settings", {"reminders": False}, choice("reminders"), "settings",
     ["settings.reminders_now_on", "settings.prompt"], ["settings.reminders"]),
    ("settings", {}, choice("language"), "settings.language", ["settings.language_prompt"], []),
    ("settings.language", {"lang": "zh_CN"}, choice("en"), "menu", ["settings.language_set", "menu.prompt"], []),
    ("settings.language", {}, choice("fr"), "settings.language", ["menu.pick_one", "settings.language_prompt"], []),
    ("settings", {}, choice("forget"), "settings.forget", ["settings.forget_confirm"], []),
    ("settings.forget", {}, choice("confirm"), "settings.forget", [], ["data.forget"]),
    ("settings.forget", {"lang": "en", "verified": {"id": 1}}, result("data.forget", ok=True, kept_requests=0),
     "menu", ["settings.forgotten", "menu.prompt"], []),
    ("settings.forget", {}, result("data.forget", ok=True, kept_requests=2), "menu",
     ["settings.forgotten_kept", "menu.prompt"], []),
    ("settings.forget", {}, choice("menu"), "menu", ["menu.prompt"], []),
    ("lookup.result", {}, command("stop"), "menu", ["settings.reminders_stopped", "menu.prompt"],
     ["settings.reminders"]),
]


@pytest.mark.parametrize("row", SETTINGS, ids=lambda r: f"{r[0]}+{r[2].kind}:{r[2].choice or r[2].command}")
def test_settings(row: Row) -> None:
    step = check(row)
    if row[2].choice == "en":
        assert step.data["lang"] == "en"
    if row[2].effect == "data.forget":
        assert "verified" not in step.data  # only the language survives /forget


REALNAME: list[Row] = [
    ("realname.name", {**VERIFIED}, text("张三"), "realname.name", [], ["realname.stash"]),
    ("realname.name", {**VERIFIED}, text("x"), "realname.name", ["realname.name_invalid", "realname.ask_name"], []),
    ("realname.name", {**VERIFIED}, result("realname.stash", ok=True, masked="张*"), "realname.id",
     ["realname.ask_id"], []),
    ("realname.name", {**VERIFIED}, text(f"张三 {VALID_ID}"), "realname.name", [],
     ["realname.stash", "realname.check"]),
    ("realname.id", {**VERIFIED}, text(VALID_ID), "realname.id", [], ["realname.check"]),
    ("realname.id", {**VERIFIED}, text("123"), "realname.id", ["realname.id.length", "realname.ask_id"], []),
    ("realname.id", {**VERIFIED}, result("realname.check", ok=True, match=True, masked="138****8000",
                                         tenure_start="2021-03-04", check_id=3),
     "realname.confirm", ["realname.confirm"], []),
    ("realname.id", {**VERIFIED}, result("realname.check", ok=False, reason="no_match", remaining=2),
     "realname.name", ["realname.no_match", "realname.ask_name"], []),
    ("realname.id", {**VERIFIED}, result("realname.check", ok=False, reason="locked"), "menu",
     ["realname.locked", "menu.prompt"], []),
    ("realname.id", {**VERIFIED}, result("realname.check", ok=False, reason="unavailable"), "menu",
     ["realname.unavailable", "menu.prompt"], []),
    ("realname.confirm", {**VERIFIED}, choice("menu"), "menu", ["realname.not_me", "menu.prompt"], []),
]


@pytest.mark.parametrize("row", REALNAME, ids=lambda r: f"{r[0]}+{r[2].kind}:{r[2].text or r[2].effect}")
def test_realname(row: Row) -> None:
    step = check(row)
    # The name and the ID number never stay in the conversation: only masked forms come back.
    assert "张三" not in str(step.data) and VALID_ID not in str(step.data)


def test_a_confirmed_check_goes_on_to_the_errand_that_asked_for_it() -> None:
    pending = {"masked": "138****8000", "tenure_start": "2021-03-04", "check_id": 3}
    step = check(("realname.confirm", {**VERIFIED, "goal": "tag", "realname_pending": pending}, choice("confirm"),
                  "tag.pick", [], ["tag.status"]))
    assert step.data["realname"]["check_id"] == 3 and step.data["realname"]["verification_id"] == 7


EXISTING = {"new_holder": {"kind": "new_holder", "code": "AB12CD34", "masked": "138****8000", "since": "2021-03",
                           "date": "2026-11-01"}}
TAG: list[Row] = [
    ("menu", {}, choice("tag"), "verify.consent", ["verify.needed", "verify.consent"], []),
    ("menu", {**VERIFIED}, choice("tag"), "realname.name", ["realname.intro", "realname.ask_name"], []),
    ("menu", {**CHECKED}, choice("tag"), "tag.pick", [], ["tag.status"]),
    ("tag.pick", {**CHECKED}, result("tag.status", ok=True, labelled=False, existing={}), "tag.pick",
     ["tag.prompt_with"], []),
    ("tag.pick", {**CHECKED}, result("tag.status", ok=False, reason="unavailable"), "menu",
     ["lookup.unavailable", "menu.prompt"], []),
    ("tag.pick", {**CHECKED, "tag_status": {"labelled": False, "existing": {}}}, choice("new_holder"),
     "tag.preview", ["tag.preview_new_holder"], []),
    # Clearing a label is offered only when the registry says there is one.
    ("tag.pick", {**CHECKED, "tag_status": {"labelled": False, "existing": {}}}, choice("clear_harassment"),
     "tag.pick", ["tag.no_label", "tag.prompt_with"], []),
    ("tag.pick", {**CHECKED, "tag_status": {"labelled": True, "existing": {}}}, choice("clear_harassment"),
     "tag.preview", ["tag.preview_clear"], []),
    # One statement per number and kind: a repeat shows the one already made.
    ("tag.pick", {**CHECKED, "tag_status": {"labelled": False, "existing": EXISTING}}, choice("new_holder"),
     "tag.pick", ["tag.existing", "tag.prompt_with"], []),
    ("tag.preview", {**CHECKED, "tag_preview": "new_holder"}, choice("confirm"), "tag.preview", [], ["tag.create"]),
    ("tag.preview", {**CHECKED, "tag_preview": "new_holder"}, choice("back"), "tag.pick", ["tag.prompt_with"], []),
    ("tag.preview", {**CHECKED, "tag_preview": "new_holder"},
     result("tag.create", ok=True, kind="new_holder", code="AB12CD34", masked="138****8000", since="2021-03"),
     "menu", ["tag.statement", "menu.prompt"], []),
    ("menu", {}, command("check", "ab12cd34"), "tag.check", [], ["tag.lookup"]),
    ("menu", {}, command("check"), "tag.check", ["tag.ask_code"], []),
    ("tag.check", {}, text("!!"), "tag.check", ["tag.code_invalid", "tag.ask_code"], []),
    ("tag.check", {}, result("tag.lookup", ok=False, reason="not_found"), "tag.check",
     ["tag.not_found", "tag.ask_code"], []),
    ("tag.check", {}, result("tag.lookup", ok=True, kind="new_holder", code="AB12CD34", masked="138****8000",
                             since="2021-03"), "menu", ["tag.check_new_holder", "menu.prompt"], []),
]


@pytest.mark.parametrize("row", TAG, ids=lambda r: f"{r[0]}+{r[2].kind}:{r[2].choice or r[2].effect or r[2].text}")
def test_tag(row: Row) -> None:
    step = check(row)
    if row[2].choice == "confirm":
        assert step.effects[0].args == {"verification_id": 7, "kind": "new_holder", "since": "2021-03"}
    if row[2].command == "check" and step.effects:
        assert step.effects[0].args == {"code": "AB12CD34"}


PLATFORM = {"id": "weibo", "name_zh": "微博", "name_en": "Weibo", "path_zh": "设置", "path_en": "Settings",
            "notes_zh": "", "notes_en": "", "difficulty": "easy", "registry_unbind": False}
GUIDE: list[Row] = [
    ("menu", {}, choice("guide"), "guide.category", ["guide.categories"], []),
    ("menu", {"unbind_options": {"manual": [{"platform": "weibo", "name_zh": "微博", "name_en": "Weibo"}]}},
     choice("guide"), "guide.pick", ["guide.pick_manual"], []),
    ("guide.category", {}, choice("c:social"), "guide.category", [], ["guide.list"]),
    ("guide.category", {}, choice("c:nonsense"), "guide.category", ["menu.pick_one", "guide.categories"], []),
    ("guide.category", {}, result("guide.list", ok=True, platforms=[{"id": "weibo", "name_zh": "微博",
                                                                     "name_en": "Weibo"}]),
     "guide.pick", ["guide.pick"], []),
    ("guide.pick", {}, choice("g:weibo"), "guide.pick", [], ["guide.platform"]),
    ("guide.pick", {}, result("guide.platform", ok=True, platform=PLATFORM), "guide.detail", ["guide.detail"], []),
    ("guide.pick", {}, result("guide.platform", ok=False, reason="not_found"), "guide.category",
     ["guide.not_found", "guide.categories"], []),
    # Without a number verified just now, the letter carries no number at all.
    ("guide.detail", {"guide_platform": PLATFORM}, choice("letter"), "guide.detail", ["guide.letter_masked"], []),
    ("guide.detail", {**VERIFIED, "guide_platform": PLATFORM}, choice("letter"), "guide.detail", [],
     ["guide.letter"]),
    ("guide.detail", {"guide_platform": PLATFORM}, choice("browse"), "guide.category", ["guide.categories"], []),
    ("guide.detail", {"guide_platform": PLATFORM}, choice("menu"), "menu", ["menu.prompt"], []),
]


@pytest.mark.parametrize("row", GUIDE, ids=lambda r: f"{r[0]}+{r[2].kind}:{r[2].choice or r[2].effect}")
def test_guide(row: Row) -> None:
    check(row)


def test_the_letter_with_the_full_number_is_kept_only_in_its_masked_form() -> None:
    data = {**VERIFIED, "guide_platform": PLATFORM}
    step = check(("guide.detail", data, result("guide.letter", ok=True, phone="13800138000"), "guide.detail",
                  ["guide.letter"], []))
    letter = step.replies[0]
    assert "13800138000" in CATALOG.render(letter.msg, "zh_CN")
    assert letter.kept is not None and "13800138000" not in CATALOG.render(letter.kept, "zh_CN")
    assert "13800138000" not in str(step.data)


# The handoff flow reads `ticket.open`'s answer as dialogs/results.py TicketOpened.
OPENED = {"ok": True, "ticket": 4, "status": "open", "staff": None, "position": 2, "wait_minutes": 10,
          "in_hours": True, "hours": "09:00-18:00", "opens_at": "明天 09:00"}
HANDOFF: list[Row] = [
    ("menu", {}, choice("human"), "handoff.waiting", ["handoff.connecting"], ["ticket.open"]),
    ("handoff.waiting", {}, result("ticket.open", **OPENED), "handoff.waiting", ["handoff.queued"], []),
    ("handoff.waiting", {}, result("ticket.open", **{**OPENED, "in_hours": False}), "handoff.waiting",
     ["handoff.off_hours"], []),
    ("handoff.waiting", {}, result("ticket.open", **{**OPENED, "status": "claimed", "staff": "alice"}),
     "handoff.with_staff", ["handoff.with_staff_note"], []),
    ("handoff.waiting", {}, result("ticket.open", ok=False, reason="unavailable"), "menu",
     ["handoff.unavailable", "menu.prompt"], []),
    ("handoff.waiting", {}, result("handoff.claimed", staff="alice"), "handoff.with_staff", ["handoff.joined"], []),
]


@pytest.mark.parametrize("row", HANDOFF, ids=lambda r: f"{r[0]}+{r[2].kind}:{r[2].choice or r[2].effect}")
def test_handoff(row: Row) -> None:
    step = check(row)
    if step.replies and step.replies[0].msg.key == "handoff.queued":
        assert step.replies[0].msg.params == {"position": 2, "minutes": 10}
    if step.state == "handoff.with_staff":
        assert step.data["handoff_by"] == "alice"


# The plan flow names the item `plan.mark`'s answer (dialogs/results.py PlanMarked) says it changed.
def plan_item(item_id: int, name: str, *, done: bool = False, snoozed: str | None = None) -> dict[str, Any]:
    return {"id": item_id, "name_zh": name, "name_en": name, "done": done, "snoozed_until": snoozed}


PLAN_BEFORE = {"date": "2026-12-31", "days_left": 36, "done": 0, "total": 3,
               "items": [plan_item(11, "银行卡"), plan_item(12, "微信"), plan_item(13, "SIM")]}
PLAN_AFTER = {**PLAN_BEFORE, "done": 1,
              "items": [plan_item(11, "银行卡"), plan_item(12, "微信", done=True), plan_item(13, "SIM")]}
PLAN_SNOOZED = {**PLAN_BEFORE, "items": [plan_item(11, "银行卡"), plan_item(12, "微信"),
                                         plan_item(13, "SIM", snoozed="2026-12-02")]}
PLAN: list[Row] = [
    # The conversation no longer says which item was asked about (or says another): the answer decides.
    ("plan.view", {"plan": PLAN_BEFORE}, result("plan.mark", ok=True, plan=PLAN_AFTER, item_id=12), "plan.view",
     ["plan.ticked"], []),
    ("plan.view", {"plan": PLAN_BEFORE, "plan_item": 13}, result("plan.mark", ok=True, plan=PLAN_AFTER, item_id=12),
     "plan.view", ["plan.ticked"], []),
    ("plan.item", {"plan": PLAN_BEFORE, "plan_item": 13}, result("plan.mark", ok=True, plan=PLAN_SNOOZED,
                                                                  item_id=13), "plan.view", ["plan.snoozed"], []),
    ("plan.view", {"plan": PLAN_BEFORE, "plan_item": 12}, result("plan.mark", ok=False, reason="unavailable"),
     "plan.view", ["lookup.unavailable", "plan.view"], []),
    ("plan.view", {"plan": PLAN_BEFORE}, text("2"), "plan.view", [], ["plan.mark"]),
    ("plan.item", {"plan": PLAN_BEFORE, "plan_item": 13}, choice("snooze"), "plan.item", [], ["plan.mark"]),
]


@pytest.mark.parametrize("row", PLAN, ids=lambda r: f"{r[0]}+{r[2].kind}:{r[2].choice or r[2].effect or r[2].text}")
def test_plan(row: Row) -> None:
    step = check(row)
    if step.replies and step.replies[0].msg.key in ("plan.ticked", "plan.snoozed"):
        item = row[2].result["item_id"]
        assert step.replies[0].msg.params["n"] == item - 10  # the number the list shows for that item
        assert step.data.get("plan_item") is None
    for effect in step.effects:
        assert effect.args["item_id"] == (12 if row[2].kind == "text" else 13)


# The request list's refresh: with no number verified in the conversation any more it asks for one (it used to
# take an undeclared transition, found by tests/test_dialogs.py's Hypothesis test).
REQUESTS: list[Row] = [
    ("requests.view", VERIFIED, choice("refresh"), "requests.view", [], ["requests.list"]),
    ("requests.view", {}, choice("refresh"), "verify.consent", ["requests.verify_first", "verify.consent"], []),
]


@pytest.mark.parametrize("row", REQUESTS, ids=lambda r: "verified" if r[1] else "not verified")
def test_requests(row: Row) -> None:
    check(row)
