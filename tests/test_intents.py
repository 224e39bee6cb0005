"""Typed intent (issue 12, finding 5): the labelled set, the figure bench/intents.py prints, and what the
machine does with a guess — greet, route, offer the three likeliest, or ask what a typed number is for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bench.intents import load, predicted
from bot.i18n import Catalog
from dialogs import machine
from dialogs.intents import IntentModel
from dialogs.model import LANGS, Event, Step

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CATALOG = Catalog.load()
MODEL = IntentModel.from_catalog(CATALOG.messages)


def text(value: str) -> Event:
    return Event("text", text=value, now=NOW)


def advance(state: str, data: dict[str, Any], event: Event) -> Step:
    """One step as the dispatcher runs it: the last reply with buttons is what a typed number refers to."""
    step = machine.step(state, data, event, MODEL)
    offered = next((r for r in reversed(step.replies) if r.choices), None)
    new = dict(step.data)
    if offered is not None:
        new["_offered"] = [[c.id, c.label.key] for c in offered.choices]
    return Step(step.state, new, step.replies, step.effects)


def test_the_labelled_set_is_big_varied_and_bilingual() -> None:
    rows = load()
    assert len(rows) >= 200
    assert len({label for label, _ in rows}) >= 15
    latin = [t for _, t in rows if t.isascii()]
    assert 50 <= len(latin) <= len(rows) - 100  # both languages, Chinese first


def test_top1_accuracy_is_at_least_90_percent() -> None:
    rows = load()
    right = sum(1 for label, t in rows if predicted(MODEL.understand(t)) == label)
    assert right / len(rows) >= 0.90, right / len(rows)


def test_no_utterance_lands_in_a_dead_end() -> None:
    """Whatever a text is taken for, the user ends up somewhere with buttons, one of them a way back."""
    ways_back = {"menu", "go:menu", "back", "decline", "leave"}
    for _label, typed in load():
        step = advance("menu", {"lang": "zh_CN"}, text(typed))
        if step.effects and step.effects[0].kind == "phone.seal":
            step = advance(step.state, dict(step.data), Event(
                "result", effect="phone.seal", now=NOW,
                result={"ok": True, "sealed": "x", "masked": "138****8000", "then": step.effects[0].args["then"]}))
        assert step.state in machine.HANDLERS, typed
        offered = {c for c, _ in step.data.get("_offered", [])}
        if step.state.startswith("handoff."):
            continue  # a person answers next
        assert step.state == "menu" or offered & ways_back or step.effects, (typed, step.state, offered)
        for lang in LANGS:
            for reply in step.replies:
                CATALOG.render(reply.msg, lang)


def test_the_findings_phrases_are_understood_at_the_menu() -> None:
    greeted = advance("menu", {}, text("你好"))
    assert [r.msg.key for r in greeted.replies] == ["intent.greeting", "menu.prompt"]
    unbind = advance("menu", {}, text("解绑"))
    assert unbind.state == "verify.consent" and unbind.data["goal"] == "unbind"
    lookup = advance("menu", {}, text("查询"))
    assert lookup.state == "verify.consent" and lookup.data["goal"] == "lookup"
    wechat = advance("menu", {}, text("我想解绑前任机主的微信"))
    assert wechat.data["goal"] == "unbind"
    english = advance("menu", {"lang": "en"}, text("hi there"))
    assert english.replies[0].msg.key == "intent.greeting"


def test_a_phone_number_typed_at_the_menu_offers_a_lookup_or_a_recycled_number_check() -> None:
    step = advance("menu", {}, text("138 0013 8000"))
    assert [e.kind for e in step.effects] == ["phone.seal"] and not step.replies
    assert step.effects[0].args["phone"] == "13800138000"
    sealed = advance(step.state, dict(step.data), Event("result", effect="phone.seal", now=NOW, result={
        "ok": True, "sealed": "CIPHERTEXT", "masked": "138****8000", "then": ""}))
    assert "13800138000" not in str(sealed.data)
    assert sealed.replies[0].msg.key == "intent.phone_seen"
    assert [c.id for c in sealed.replies[0].choices] == ["go:phone_lookup", "go:phone_recycle", "go:menu"]
    # "2" picks the second button as shown: the recycled-number check, on the sealed number, with no retyping.
    check = advance(sealed.state, dict(sealed.data), text("2"))
    assert check.state == "recycle.phone" and check.effects[0].kind == "recycle.check"
    assert check.effects[0].args == {"sealed": "CIPHERTEXT"}


def test_intent_and_number_in_one_message_goes_straight_to_the_code() -> None:
    step = advance("menu", {"consent": "2026-11-v1"}, text("帮我解绑13800138000"))
    assert step.effects[0].args["then"] == "unbind"
    sent = advance(step.state, dict(step.data), Event("result", effect="phone.seal", now=NOW, result={
        "ok": True, "sealed": "CIPHERTEXT", "masked": "138****8000", "then": "unbind"}))
    assert sent.state == "verify.phone" and sent.effects[0].kind == "otp.send"
    assert sent.effects[0].args["sealed"] == "CIPHERTEXT" and "typed_phone" not in sent.data


def test_text_not_understood_gets_the_three_likeliest_intents_not_the_menu() -> None:
    step = advance("menu", {}, text("嗯嗯那个啥"))
    assert step.replies[-1].msg.key == "intent.not_understood"
    ids = [c.id for c in step.replies[-1].choices]
    assert len(ids) == 4 and ids[-1] == "go:menu" and all(i.startswith("go:") for i in ids)
    assert not any(r.msg.key == "menu.prompt" for r in step.replies)
    # Half a word still ranks the right errand first among the three.
    partial = advance("menu", {}, text("绑定那个事"))
    assert partial.replies[-1].choices[0].id in ("go:lookup", "go:unbind")
    picked = advance(step.state, dict(step.data), text("1"))
    assert picked.state != "menu" or picked.replies


def test_a_confident_intent_mid_flow_leaves_the_flow_but_an_unclear_one_keeps_its_prompt() -> None:
    data = {"challenge_id": 1, "phone_masked": "138****8000", "consent": "2026-11-v1"}
    away = advance("verify.code", data, text("我想看看我的申请进度"))
    # My requests need a verified number first (invariant 7): the goal survives the detour.
    assert away.state == "requests.view" or away.data.get("goal") == "requests"
    stay = advance("verify.code", data, text("嗯？"))
    assert stay.state == "verify.code" and stay.replies[0].error
