"""Telegram adapter pieces without a server: callback data, rendering, update routing, ordering, pacing,
and the aiohttp transport against the fake Bot API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from telegram import Bot, InlineKeyboardMarkup, ReplyKeyboardMarkup, ReplyKeyboardRemove
from telegram.error import BadRequest, Forbidden, RetryAfter

from bot.channels.telegram import ChatTurns, base_url
from bot.channels.telegram_inbound import UpdatePlan
from bot.channels.telegram_inbound import plan as read_plan
from bot.channels.telegram_render import (
    CALLBACK_MAX_BYTES,
    encode_choice,
    render_batch,
    render_payload,
    resolve_choice,
    say,
    split_text,
)
from bot.channels.telegram_request import AiohttpRequest
from bot.channels.telegram_send import Limits, Sender, Undeliverable, retry_after
from bot.i18n import Catalog
from tests.fakes import fake_bot_api as tg
from tests.fakes.fake_bot_api import FakeBotApi


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def test_callback_data_fits_64_bytes_and_resolves_only_against_the_menu_on_offer() -> None:
    short = "p:weibo"
    assert encode_choice(short) == short
    long_id = "g:" + "平台" * 40
    encoded = encode_choice(long_id)
    assert len(encoded.encode()) <= CALLBACK_MAX_BYTES and encoded != long_id
    assert resolve_choice(encoded, ["menu", long_id]) == long_id
    assert resolve_choice(short, ["menu", short]) == short
    assert resolve_choice(short, ["menu"]) is None
    assert resolve_choice("#forged", ["menu", long_id]) is None
    assert resolve_choice(None, ["menu"]) is None
    assert encode_choice("#looks-hashed") != "#looks-hashed"


def test_channel_strings_come_from_the_catalog(catalog: Catalog) -> None:
    assert say(catalog, "tg.open_private", "zh_CN") == "私聊号清"
    assert say(catalog, "tg.open_private", "en") == "Chat with Haoqing privately"
    assert say(catalog, "common.back_to_menu", "en") == "Back to menu"


def test_choices_become_an_inline_keyboard_and_errors_are_marked(catalog: Catalog) -> None:
    payload = {"seq": 4, "text": "pick", "error": True,
               "choices": [{"id": "a", "label": "Alpha"}, {"id": "b", "label": "Beta"}]}
    (message,) = render_payload(payload, catalog, "en")
    assert message.text.startswith("⚠️ ") and message.seq == 4
    assert isinstance(message.markup, InlineKeyboardMarkup)
    assert [b.callback_data for row in message.markup.inline_keyboard for b in row] == ["a", "b"]
    assert message.buttons == ("a", "b")


def test_contact_request_is_a_reply_keyboard_taken_down_by_the_next_plain_message(catalog: Catalog) -> None:
    ask = {"seq": 1, "text": "phone?", "request_contact": True, "choices": [{"id": "menu", "label": "Back"}]}
    messages, shown = render_batch([ask], catalog, "zh_CN", keyboard_shown=False)
    markup = messages[0].markup
    assert isinstance(markup, ReplyKeyboardMarkup) and shown
    assert markup.keyboard[0][0].request_contact and markup.keyboard[1][0].text == "Back"
    assert markup.one_time_keyboard
    menu = {"seq": 2, "text": "menu", "choices": [{"id": "x", "label": "X"}]}
    messages, shown = render_batch([menu], catalog, "zh_CN", keyboard_shown=True)
    assert shown and isinstance(messages[0].markup, InlineKeyboardMarkup)
    note = {"seq": 3, "text": "ok", "choices": []}
    messages, shown = render_batch([note, menu], catalog, "zh_CN", keyboard_shown=True)
    assert not shown and isinstance(messages[0].markup, ReplyKeyboardRemove)


def test_long_texts_are_split_with_the_keyboard_on_the_last_part(catalog: Catalog) -> None:
    text = "\n".join(f"line {i} " + "x" * 90 for i in range(100))
    parts = split_text(text)
    assert len(parts) == 3 and all(len(p) <= 4096 for p in parts) and "\n".join(parts) == text
    assert split_text("y" * 9000) == ["y" * 4096, "y" * 4096, "y" * 808]
    # Telegram counts UTF-16 units: an emoji is two, and a pair is never split.
    emoji = split_text("😀" * 3000)
    assert [len(p) for p in emoji] == [2048, 952] and "".join(emoji) == "😀" * 3000
    messages = render_payload({"seq": 1, "text": text, "choices": [{"id": "m", "label": "M"}]}, catalog, "en")
    assert [m.markup is None for m in messages] == [True, True, False]


def _update(data: dict[str, Any]) -> dict[str, Any]:
    return {"update_id": 1, **data}


def plan(update: dict[str, Any]) -> UpdatePlan:
    planned = read_plan(update)
    assert planned is not None, update
    return planned


def test_updates_are_routed_by_kind() -> None:
    assert plan(_update(tg.message(5, text="hi"))).route == "dispatch"
    contact = plan(_update(tg.contact(5, "13800138000", owner=5)))
    assert contact.event is not None and contact.event.kind == "contact" and contact.event.contact_own
    forged = plan(_update(tg.contact(5, "13800138000", owner=6)))
    assert forged.event is not None and not forged.event.contact_own
    anonymous = plan(_update(tg.contact(5, "13800138000", owner=None)))
    assert anonymous.event is not None and not anonymous.event.contact_own
    sticker = plan(_update(tg.message(5, sticker={"file_id": "s", "file_unique_id": "u", "type": "regular",
                                                  "width": 1, "height": 1, "is_animated": False,
                                                  "is_video": False})))
    assert sticker.event is not None and sticker.event.media == "sticker"
    assert plan(_update(tg.message(5, text="x", edited=True))).route == "edited"
    group = {"id": -5, "type": "group", "title": "g"}
    assert plan(_update(tg.message(-5, text="/start", chat=group))).route == "group"
    assert plan(_update(tg.message(-5, text="x", chat=group, edited=True))).route == "ignore"
    assert plan(_update({"channel_post": {"message_id": 1, "date": 0, "text": "x",
                                          "chat": {"id": -9, "type": "channel"}}})).route == "ignore"
    assert plan(_update(tg.callback(5, "menu"))).route == "dispatch"
    assert plan(_update(tg.my_chat_member(5, "member", "kicked"))).route == "member"
    pinned = tg.message(5, pinned_message={"message_id": 3, "date": 0, "chat": tg.private_chat(5)})
    assert plan(_update(pinned)).route == "ignore"
    lang = plan(_update(tg.message(5, text="hi", lang="en-GB")))
    assert lang.lang_hint == "en-GB"


def test_a_press_carries_its_keyboard_and_a_group_message_whom_it_answers() -> None:
    press = plan(_update(tg.callback(5, "menu", message_id=42, buttons=["menu", "lookup"]))).press
    assert press is not None and press.message_id == 42 and press.buttons == ("menu", "lookup")
    moved = plan(_update(tg.callback(5, "month:2031-02", buttons=["month:2031-03", "date:2031-02-01", "menu"])))
    assert moved.press is not None and moved.press.extra_rows == ((("menu", "menu"),),)
    group = {"id": -5, "type": "supergroup", "title": "g"}
    reply = tg.message(-5, text="thanks", chat=group, reply_to_message={
        "message_id": 1, "date": 1, "chat": group, "from": tg.BOT_USER, "text": "hi"})
    assert plan(_update(reply)).reply_to_user == tg.BOT_USER["id"]


@pytest.mark.parametrize("update", [
    {"message": {"text": 1}},
    {"message": {"message_id": 1, "date": 1, "chat": {"id": "five", "type": "private"}, "text": "hi"}},
    {"message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"}, "text": ["hi"]}},
    {"message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"}, "from": "me", "text": "hi"}},
    {"message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"}, "contact": {}}},
    {"callback_query": {"id": "cq", "from": "not a user", "data": "x"}},
    {"callback_query": {"id": 7, "from": {"id": 5, "is_bot": False, "first_name": "T"}}},
    {"my_chat_member": {"chat": {"id": 5, "type": "private"}, "from": {"id": 5}, "new_chat_member": {}}},
    {"update_id": "one", "message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"}}},
])
def test_an_update_not_in_the_bot_apis_shape_is_not_understood(update: dict[str, Any]) -> None:
    assert read_plan({"update_id": 1, **update}) is None


def test_base_url_is_what_ptb_appends_the_token_to() -> None:
    assert base_url("") == "https://api.telegram.org/bot"
    assert base_url("http://127.0.0.1:8081") == "http://127.0.0.1:8081/bot"
    assert base_url("http://127.0.0.1:8081/bot/") == "http://127.0.0.1:8081/bot"
    assert base_url("http://h/custom/{token}") == "http://h/custom/{token}"


async def test_chat_turns_run_one_at_a_time_lowest_update_first() -> None:
    turns = ChatTurns()
    ran: list[int] = []

    async def step(update_id: int) -> None:
        async with turns.turn(1, update_id):
            ran.append(update_id)
            await asyncio.sleep(0.01)

    async with turns.turn(1, 0):
        tasks = [asyncio.create_task(step(i)) for i in (5, 2, 9, 1, 7)]
        other = asyncio.create_task(step(3))  # same chat
        await asyncio.sleep(0.01)
        assert ran == [] and turns.waiting(1) == 6
    await asyncio.gather(*tasks, other)
    assert ran == [1, 2, 3, 5, 7, 9]
    assert len(turns) == 0 and turns.waiting(1) == 0


async def test_a_cancelled_waiter_does_not_wedge_the_chat() -> None:
    turns = ChatTurns()
    async with turns.turn(1, 0):
        waiter = asyncio.create_task(turns.turn(1, 5).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    async with asyncio.timeout(1), turns.turn(1, 6):
        pass
    assert len(turns) == 0


class ScriptedBot:
    """Stands in for telegram.Bot in Sender tests: raises the scripted errors, records the rest."""

    def __init__(self, script: dict[int, list[Exception]]) -> None:
        self.script = script
        self.sent: list[tuple[int, str, float]] = []
        self.loop = asyncio.get_running_loop()

    async def send_raw(self, endpoint: str, data: dict[str, Any], seconds: float) -> bool:
        chat_id, text = data["chat_id"], data["text"]
        errors = self.script.get(chat_id)
        if errors:
            raise errors.pop(0)
        self.sent.append((chat_id, text, self.loop.time()))
        return True


async def test_sender_honours_retry_after_per_chat_without_stalling_others() -> None:
    from bot.channels.telegram_render import Outgoing

    bot = ScriptedBot({1: [RetryAfter(1)]})
    sender = Sender(bot, Limits(interactive_burst=5, backoff_base=0.01))  # type: ignore[arg-type]
    slow = asyncio.create_task(sender.deliver(1, [Outgoing("a1"), Outgoing("a2")], push=False))
    await sender.deliver(2, [Outgoing("b1"), Outgoing("b2")], push=False)
    assert [t for c, t, _ in bot.sent] == ["b1", "b2"]
    await slow
    assert [t for c, t, _ in bot.sent if c == 1] == ["a1", "a2"]
    assert bot.sent[2][2] - bot.sent[0][2] >= 0.9


async def test_sender_pushes_keep_one_per_second_per_chat_and_the_bot_budget() -> None:
    from bot.channels.telegram_render import Outgoing

    bot = ScriptedBot({})
    sender = Sender(bot, Limits(chat_per_second=20.0, bot_per_second=40.0))  # type: ignore[arg-type]
    await asyncio.gather(*(sender.deliver(c, [Outgoing("p"), Outgoing("q")], push=True) for c in range(10)))
    times = sorted(t for _, _, t in bot.sent)
    assert times[-1] - times[0] >= 19 / 40.0 * 0.9  # 20 pushes at 40/s across the bot
    for chat in range(10):
        mine = [t for c, _, t in bot.sent if c == chat]
        assert mine[1] - mine[0] >= 1 / 20.0 * 0.9


async def test_sender_gives_up_on_blocked_and_bad_requests_and_after_retries() -> None:
    from telegram.error import NetworkError

    from bot.channels.telegram_render import Outgoing

    bot = ScriptedBot({1: [Forbidden("Forbidden: bot was blocked by the user")],
                       2: [BadRequest("Bad Request: chat not found")],
                       3: [NetworkError("Bad Gateway")] * 3})
    sender = Sender(bot, Limits(max_attempts=3, backoff_base=0.001))  # type: ignore[arg-type]
    with pytest.raises(Undeliverable) as blocked:
        await sender.deliver(1, [Outgoing("x")], push=True)
    assert blocked.value.blocked
    with pytest.raises(Undeliverable) as bad:
        await sender.deliver(2, [Outgoing("x")], push=False)
    assert not bad.value.blocked and "chat not found" in bad.value.reason
    with pytest.raises(Undeliverable):
        await sender.deliver(3, [Outgoing("x")], push=False)
    assert bot.sent == []


async def test_aiohttp_request_speaks_to_the_bot_api() -> None:
    fake = await FakeBotApi("9:T").start()
    requests = [AiohttpRequest(), AiohttpRequest()]
    bot = Bot("9:T", base_url=fake.base_url, request=requests[0], get_updates_request=requests[1])
    try:
        await bot.initialize()
        assert bot.username == "haoqing_test_bot"
        sent = await bot.send_message(42, "你好", reply_markup=InlineKeyboardMarkup.from_button(
            __import__("telegram").InlineKeyboardButton("a", callback_data="a")))
        assert sent.message_id and sent.chat.id == 42
        call = fake.called("sendMessage")[-1]
        assert call.params["text"] == "你好" and call.params["reply_markup"]["inline_keyboard"][0][0]["text"] == "a"
        fake.feed(tg.message(42, text="hi"))
        updates = await bot.get_updates(timeout=1)
        assert updates[0].message is not None and updates[0].message.text == "hi"
        fake.fail("429", method="sendMessage", retry_after=3)
        with pytest.raises(RetryAfter) as flood:
            await bot.send_message(42, "x")
        assert retry_after(flood.value) == 3
        fake.fail("stall", method="sendMessage", seconds=2)
        from telegram.error import TimedOut

        with pytest.raises(TimedOut):
            await bot.send_message(42, "x", read_timeout=0.2)
        bad = Bot("9:T", base_url="http://127.0.0.1:1/bot", request=AiohttpRequest())
        from telegram.error import NetworkError

        with pytest.raises(NetworkError) as unreachable:
            await bad.send_message(1, "x")
        assert "9:T" not in str(unreachable.value) and unreachable.value.__cause__ is None
        await bad.shutdown()
        for request in bad._request:  # type: ignore[attr-defined]
            await request.shutdown()
        assert json.loads(json.dumps(fake.commands)) == {}
    finally:
        await bot.shutdown()
        await fake.stop()


async def test_the_raw_send_path_raises_what_ptb_would() -> None:
    from telegram.error import Conflict, InvalidToken, NetworkError

    from bot.channels.telegram_send import LeanBot

    fake = await FakeBotApi("9:T").start()
    requests = [AiohttpRequest(), AiohttpRequest()]
    bot = LeanBot("9:T", base_url=fake.base_url, request=requests[0], get_updates_request=requests[1])
    markup = InlineKeyboardMarkup.from_button(__import__("telegram").InlineKeyboardButton("a", callback_data="a"))
    try:
        sent = await bot.send_raw("sendMessage", {"chat_id": 42, "text": "你好", "reply_markup": markup,
                                                  "parse_mode": None}, 2.0)
        assert sent["message_id"] and fake.called("sendMessage")[-1].params["reply_markup"] == markup.to_dict()
        assert "parse_mode" not in fake.called("sendMessage")[-1].params, "None is left out, as PTB does"
        for kind, error in (("429", RetryAfter), ("403", Forbidden), ("400", BadRequest), ("409", Conflict),
                            ("502", NetworkError)):
            fake.fail(kind, method="sendMessage", retry_after=2)
            with pytest.raises(error) as raised:
                await bot.send_raw("sendMessage", {"chat_id": 43, "text": "x"}, 2.0)
            if kind == "429":
                assert retry_after(raised.value) == 2  # type: ignore[arg-type]
        wrong = LeanBot("9:WRONG", base_url=fake.base_url, request=AiohttpRequest())
        with pytest.raises(InvalidToken):
            await wrong.send_raw("sendMessage", {"chat_id": 1, "text": "x"}, 2.0)
        await wrong._request[1].shutdown()  # type: ignore[attr-defined]
    finally:
        for request in requests:
            await request.shutdown()
        await fake.stop()


async def test_a_reply_is_waited_for_up_to_its_limit_and_goes_on_after_it() -> None:
    """deliver_reply's wait (`_done_within`): True once the send is done, False at the limit with the send still
    under way, and a cancelled webhook call leaves the send running."""
    from bot.channels.telegram import _done_within

    release = asyncio.Event()

    async def send() -> str:
        await release.wait()
        return "sent"

    quick = asyncio.create_task(asyncio.sleep(0))
    assert await _done_within(quick, 5.0)
    slow = asyncio.create_task(send())
    assert not await _done_within(slow, 0.01)
    assert not slow.done()
    waiting = asyncio.create_task(_done_within(slow, 5.0))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await slow == "sent"
    assert await _done_within(slow, 0.0)
