"""Telegram end to end: real update JSON posted to our webhook (and fed to long polling), replies checked at
a fake Bot API on loopback that records every call and can answer 429, 5xx or stall."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlmodel import col, select

from bot.channels.telegram import SECRET_HEADER, WEBHOOK_PATH, TelegramChannel, setup_telegram
from bot.channels.telegram_render import say
from bot.config import ConfigurationError
from bot.server import SANDBOX_REGISTRY_PATH, create_app
from bot.storage import Conversation, InboxItem, OutboxMessage, User
from bot.web.chat import RUNTIME
from dialogs.model import Msg, Reply
from integrations.registry import RegistryClient
from integrations.sandbox_registry.app import MaskingAccessLogger
from tests.conftest import make_settings
from tests.fakes import fake_bot_api as tg
from tests.fakes.fake_bot_api import FakeBotApi, FloodRules, flood_violations

SECRET = "s3cret-token_for-tests"
TOKEN = "123:ABC"


@dataclass
class TgServer:
    """Our server with the Telegram channel mounted, in webhook or polling mode."""

    app: web.Application
    runner: web.AppRunner
    port: int
    fake: FakeBotApi
    http: aiohttp.ClientSession
    update_ids: Any = field(default_factory=lambda: iter(range(10_000, 10**9)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def channel(self) -> TelegramChannel:
        from bot.channels.telegram import TELEGRAM

        return self.app[TELEGRAM]

    @property
    def rt(self) -> Any:
        return self.app[RUNTIME]

    async def post(self, update: dict[str, Any], *, secret: str | None = SECRET, raw: bytes | None = None) -> int:
        if raw is None and "update_id" not in update:
            update = {"update_id": next(self.update_ids), **update}
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[SECRET_HEADER] = secret
        body = raw if raw is not None else json.dumps(update).encode()
        async with self.http.post(self.url + WEBHOOK_PATH, data=body, headers=headers) as r:
            answer = await r.read()
            status = r.status
        if status == 200 and answer:
            # Like Telegram: a method in the webhook response is executed against the Bot API.
            method = json.loads(answer)
            name = method.pop("method")
            async with self.http.post(f"{self.fake.base_url}{TOKEN}/{name}", json=method) as r:
                assert r.status == 200, await r.text()
        return status

    async def rows(self, model: Any, *where: Any) -> list[Any]:
        async with self.rt.db.session() as session:
            return list((await session.exec(select(model).where(*where))).all())

    async def user(self, chat_id: int) -> User | None:
        stored = self.rt.dispatcher.stored_id("telegram", str(chat_id))  # a keyed hash, never the chat id
        found = await self.rows(User, col(User.channel) == "telegram", col(User.external_id) == stored)
        return found[0] if found else None


async def start_tg(tmp_path: Path, fake: FakeBotApi, http: aiohttp.ClientSession, *, webhook: bool = True,
                   real_limits: bool = False, **overrides: Any) -> TgServer:
    """Like bot.server.start_server, with the channel's pacing loosened for tests that are not about pacing,
    and the fake's flood control loosened to match (still enforced: teardown checks it never had to refuse)."""
    overrides.setdefault("telegram_webhook_url", "https://bot.example.test/telegram/webhook" if webhook else "")
    overrides.setdefault("telegram_webhook_secret", SECRET if webhook else "")
    settings = make_settings(tmp_path, telegram_bot_token=TOKEN, telegram_api_base_url=fake.base_url, **overrides)
    app = create_app(settings)
    rt = app[RUNTIME]
    channel = setup_telegram(app, rt)
    assert channel is not None
    if not real_limits:
        # Tests that are not about pacing should not wait a second per message: a faster "Telegram".
        channel.limits.chat_per_second = 200.0
        channel.limits.interactive_burst = 50
        channel.limits.bot_per_second = 900.0
        channel.limits.group_per_minute = 600.0
        if fake.flood is not None:
            fake.flood.rules = FloodRules(bot_per_second=1000, chat_per_second=200.0, chat_burst=50,
                                          group_per_minute=600)
    channel.limits.outbox_poll = 0.1
    channel.limits.backoff_base = 0.05
    channel.limits.api_timeout = 2.0
    channel.limits.retry_base = 0.1
    runner = web.AppRunner(app, access_log_class=MaskingAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    if settings.embedded_registry:
        await rt.registry.close()
        rt.registry = RegistryClient(f"http://127.0.0.1:{port}{SANDBOX_REGISTRY_PATH}",
                                     timeout=settings.registry_timeout)
    rt.callback_url = f"http://127.0.0.1:{port}/registry/callback"
    await asyncio.wait_for(channel.ready.wait(), 10)
    return TgServer(app, runner, port, fake, http)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotApi]:
    api = await FakeBotApi(TOKEN).start()
    yield api
    await api.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def srv(tmp_path: Path, fake: FakeBotApi, http: aiohttp.ClientSession) -> AsyncIterator[TgServer]:
    server = await start_tg(tmp_path, fake, http)
    yield server
    await server.runner.cleanup()
    assert fake.flood_refusals == [], "the bot sent over the limits it was given"


@dataclass
class TgUser:
    """A Telegram user in a private chat with the bot, driving it the way the app does."""

    srv: TgServer
    chat_id: int
    lang: str = "zh-hans"
    seen: int = 0

    @property
    def fake(self) -> FakeBotApi:
        return self.srv.fake

    def new(self) -> list[dict[str, Any]]:
        """Messages the bot sent this chat since the last call."""
        sent = self.fake.sent(self.chat_id)
        fresh, self.seen = sent[self.seen:], len(sent)
        return fresh

    async def send(self, update: dict[str, Any]) -> list[dict[str, Any]]:
        status = await self.srv.post(update)
        assert status == 200
        return self.new()

    async def say(self, text: str) -> list[dict[str, Any]]:
        return await self.send(tg.message(self.chat_id, text=text, lang=self.lang))

    def keyboard_message(self, choice: str) -> tuple[int, list[str]]:
        for call in reversed(self.fake.called(chat_id=self.chat_id, ok=True)):
            if call.method not in ("sendMessage", "editMessageText"):
                continue
            markup = call.params.get("reply_markup") or {}
            buttons = [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row
                       if "callback_data" in b]
            if buttons:
                assert choice in buttons, f"{choice!r} not offered; offered {buttons}"
                message_id = call.params.get("message_id") or self._message_id_of(call.params)
                return int(message_id), buttons
        raise AssertionError(f"no inline keyboard offers {choice!r}")

    def _message_id_of(self, params: dict[str, Any]) -> int:
        for (chat, message_id), message in self.fake.messages.items():
            if chat == self.chat_id and message["text"] == params.get("text"):
                found = message_id
        return found

    async def click(self, choice: str) -> list[dict[str, Any]]:
        message_id, buttons = self.keyboard_message(choice)
        return await self.send(tg.callback(self.chat_id, choice, message_id=message_id, buttons=buttons,
                                           lang=self.lang))

    async def share_contact(self, phone: str, *, own: bool = True) -> list[dict[str, Any]]:
        owner = self.chat_id if own else self.chat_id + 1
        return await self.send(tg.contact(self.chat_id, phone, owner=owner, lang=self.lang))


def texts(messages: list[dict[str, Any]]) -> str:
    return "\n".join(str(m.get("text", "")) for m in messages)


def inline_ids(message: dict[str, Any]) -> list[str]:
    markup = message.get("reply_markup") or {}
    return [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row]


async def demo(srv: TgServer, kind: str = "recycled") -> dict[str, Any]:
    async with srv.http.get(f"{srv.url}/sandbox/registry/numbers", params={"kind": kind}) as r:
        return dict((await r.json())[0])


async def latest_code(srv: TgServer, phone: str) -> str:
    async with srv.http.get(f"{srv.url}/sandbox/sms", params={"phone": phone}) as r:
        sent = await r.json()
    match = re.search(r"\b(\d{6})\b", sent[-1]["text"])
    assert match
    return match.group(1)


# ---- registration and the webhook's gate ------------------------------------------------------------

async def test_webhook_is_registered_with_secret_and_commands_in_both_languages(srv: TgServer) -> None:
    fake = srv.fake
    assert fake.webhook is not None
    assert fake.webhook["url"] == "https://bot.example.test/telegram/webhook"
    assert fake.webhook["secret_token"] == SECRET
    assert "callback_query" in fake.webhook["allowed_updates"]
    assert set(fake.commands) == {"", "zh", "en"}
    en = {c["command"]: c["description"] for c in fake.commands["en"]}
    zh = {c["command"]: c["description"] for c in fake.commands["zh"]}
    assert {"start", "menu", "help", "language", "human", "forget", "stop"} <= set(en)
    assert en["menu"] == "Back to menu" and zh["menu"] != en["menu"]
    assert fake.commands[""] == fake.commands["zh"]


async def test_the_webhook_bench_peers_send_what_ours_sends(srv: TgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/telegram_webhook.py has every peer send ours' own replies, word for word and button for button, so
    that the fake and the wire carry the same bytes for all: ours, fed the bench's two updates, still says that."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import telegram_webhook as bench

    chat = 777_001
    for body in (bench.menu_update(1, chat), bench.click_update(2, chat)):
        assert await srv.post({}, raw=body) == 200
    sent = [(c["text"], c.get("reply_markup")) for c in srv.fake.sent(chat)]
    assert sent == [(bench.MENU_TEXT, bench.keyboard(bench.MENU)),
                    (bench.SETTINGS_TEXT, bench.keyboard(bench.SETTINGS))]


async def test_forged_or_missing_secret_is_refused_before_anything_runs(srv: TgServer) -> None:
    update = tg.message(5001, text="/start")
    assert await srv.post(update, secret="wrong") == 403
    assert await srv.post(update, secret=None) == 403
    assert await srv.post(update, secret=SECRET + "x") == 403
    assert await srv.user(5001) is None
    assert not await srv.rows(InboxItem)
    assert not srv.fake.called("sendMessage")


async def test_oversized_and_malformed_bodies_get_4xx(srv: TgServer) -> None:
    assert await srv.post({}, raw=b"x" * (1024 * 1024 + 10)) == 413
    assert await srv.post({}, raw=b"{not json") == 400
    assert await srv.post({}, raw=b"[1, 2]") == 400
    assert await srv.post({}, raw=json.dumps({"update_id": "seven"}).encode()) == 400
    assert await srv.post({}, raw=json.dumps({"message": {}}).encode()) == 400
    # From Telegram (right secret) but not a shape we understand: acknowledged, not retried forever.
    assert await srv.post({}, raw=json.dumps({"update_id": 3, "message": {"text": 1}}).encode()) == 200
    assert not srv.fake.called("sendMessage")


# ---- the main flow ----------------------------------------------------------------------------------

async def test_verify_lookup_unbind_with_contact_share(srv: TgServer, log_capture: Any) -> None:
    user = TgUser(srv, 7001)
    person = await demo(srv)
    first = await user.say("/start")
    assert len(first) == 2 and "号清" in first[0]["text"]
    assert "lookup" in inline_ids(first[-1])

    await user.click("lookup")
    await user.click("agree")
    ask = user.fake.sent(user.chat_id)[-1]
    keyboard = ask["reply_markup"]["keyboard"]
    assert keyboard[0][0]["request_contact"] is True
    assert keyboard[0][0]["text"] == say(srv.rt.catalog, "tg.share_contact", "zh_CN")
    assert keyboard[1][0]["text"] == "返回主菜单"  # the other choice, typed back as its label

    result = await user.share_contact("+86 " + person["phone"])
    shown = texts(result)
    masked = person["phone"][:3] + "****" + person["phone"][-4:]
    assert masked in shown and person["phone"] not in shown
    assert result[0]["reply_markup"] == {"remove_keyboard": True}, "the contact keyboard is taken down"
    assert "unbind" in inline_ids(result[-1])

    await user.click("unbind")
    await user.say(person["name"])
    await user.say(person["id_number"])
    await user.click("confirm")
    # The list above the button is what is filed: 一键解绑 needs no second screen.
    done = await user.click("all")
    assert re.search(r"HQ\d{8}-[A-Z0-9]{6}", texts(done)), texts(done)

    rows = await srv.rows(OutboxMessage, col(OutboxMessage.channel) == "telegram")
    assert rows and all(r.status == "sent" for r in rows)
    bot_user = await srv.user(user.chat_id)
    assert bot_user is not None and bot_user.lang == "zh_CN"
    logs = log_capture.getvalue()
    for secret in (person["phone"], person["id_number"], person["name"]):
        assert secret not in logs
    for call in srv.fake.calls:
        assert person["id_number"] not in json.dumps(call.params, ensure_ascii=False)


async def test_forged_contact_falls_back_to_the_sms_code(srv: TgServer) -> None:
    user = TgUser(srv, 7002)
    person = await demo(srv)
    await user.say("/start")
    await user.click("lookup")
    await user.click("agree")
    refused = await user.share_contact(person["phone"], own=False)
    assert refused[0]["text"].startswith("⚠️") and "本人" in refused[0]["text"]
    assert refused[-1]["reply_markup"]["keyboard"][0][0]["request_contact"] is True
    # No user_id on the card at all is no better than someone else's.
    await user.send(tg.contact(user.chat_id, person["phone"], owner=None))
    async with srv.http.get(f"{srv.url}/sandbox/sms", params={"phone": person["phone"]}) as r:
        assert await r.json() == []
    await user.say(person["phone"])
    result = await user.say(await latest_code(srv, person["phone"]))
    assert "unbind" in [c for m in result for c in inline_ids(m)]
    verified = await srv.rows(OutboxMessage)
    assert verified


async def test_english_user_gets_english(srv: TgServer) -> None:
    user = TgUser(srv, 7003, lang="en-US")
    result = await user.say("/start")
    assert "Haoqing" in texts(result)
    await user.click("lookup")
    await user.click("agree")
    ask = srv.fake.sent(user.chat_id)[-1]
    assert ask["reply_markup"]["keyboard"][0][0]["text"] == say(srv.rt.catalog, "tg.share_contact", "en")
    # The reply keyboard's other button sends its label as text, which the dialog takes as that choice.
    back = await user.say(ask["reply_markup"]["keyboard"][1][0]["text"])
    assert "lookup" in inline_ids(back[-1])


# ---- delivery ids and ordering --------------------------------------------------------------------

async def test_same_update_id_three_times_gives_one_effect(srv: TgServer) -> None:
    user = TgUser(srv, 7010)
    await user.say("/start")
    update = tg.message(user.chat_id, text="/help", update_id=555)
    statuses = [await srv.post(update) for _ in range(2)]
    statuses += await asyncio.gather(srv.post(update))
    assert statuses == [200, 200, 200]
    help_sends = [m for m in user.new() if "/language" in m["text"]]
    assert len(help_sends) == 1
    inbox = await srv.rows(InboxItem, col(InboxItem.dedupe_key) == "555")
    assert len(inbox) == 1 and inbox[0].status == "done"
    replies = await srv.rows(OutboxMessage, col(OutboxMessage.inbox_id) == inbox[0].id)
    assert len(replies) == len(json.loads(inbox[0].response or "[]"))


async def test_twenty_rapid_updates_from_one_user_run_in_order(srv: TgServer) -> None:
    user = TgUser(srv, 7020)
    await user.say("/start")
    first_id = 20_000
    updates = [tg.message(user.chat_id, text="/help" if i % 2 else "/menu", update_id=first_id + i)
               for i in range(20)]
    # Telegram may deliver over parallel connections, so they arrive scrambled while an earlier step of the
    # same user still runs (held here); they must then run in update_id order.
    order = [3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 19, 16, 17, 18]
    async with srv.channel.turns.turn(user.chat_id, 0):
        posts = [asyncio.create_task(srv.post(updates[i])) for i in order]
        while srv.channel.turns.waiting(user.chat_id) < 20:
            await asyncio.sleep(0.01)
    statuses = await asyncio.gather(*posts)
    assert set(statuses) == {200}
    inbox = await srv.rows(InboxItem, col(InboxItem.channel) == "telegram",
                           col(InboxItem.dedupe_key).startswith("20"))
    assert len(inbox) == 20 and all(i.status == "done" for i in inbox)
    by_id = {i.id: int(i.dedupe_key) for i in inbox}
    replies = await srv.rows(OutboxMessage, col(OutboxMessage.inbox_id).in_(list(by_id)))
    seqs_by_update: dict[int, list[int]] = {}
    for row in replies:
        assert row.inbox_id is not None
        seqs_by_update.setdefault(by_id[row.inbox_id], []).append(row.seq)
    ordered = [seq for uid in sorted(seqs_by_update) for seq in sorted(seqs_by_update[uid])]
    assert ordered == sorted(ordered), "steps ran out of update_id order"
    sent_texts = user.new()
    assert len(sent_texts) == len(replies)


# ---- rendering --------------------------------------------------------------------------------------

async def test_old_or_forged_callback_gets_expired_notice_and_the_menu(srv: TgServer) -> None:
    user = TgUser(srv, 7030)
    await user.say("/start")
    result = await user.send(tg.callback(user.chat_id, "p:not-a-menu", message_id=1, buttons=["p:not-a-menu"]))
    answers = srv.fake.called("answerCallbackQuery", ok=True)
    assert answers and answers[-1].params.get("text")
    assert result[0]["text"] == say(srv.rt.catalog, "tg.menu_expired", "zh_CN")
    assert "lookup" in inline_ids(result[-1])
    # A button from a menu that has since been replaced is expired too.
    await user.click("settings")
    stale = await user.send(tg.callback(user.chat_id, "recycle", message_id=1, buttons=["recycle"]))
    assert stale[0]["text"] == result[0]["text"] and "lookup" in inline_ids(stale[-1])
    # A callback for a user we never met still gets its spinner stopped and the menu.
    stranger = TgUser(srv, 7031)
    hello = await stranger.send(tg.callback(stranger.chat_id, "lookup", message_id=9, buttons=["lookup"]))
    assert "lookup" in inline_ids(hello[-1])
    assert len(srv.fake.called("answerCallbackQuery")) == 4  # every click, valid or not


async def test_button_answer_rides_on_the_webhook_response(srv: TgServer) -> None:
    user = TgUser(srv, 7035)
    await user.say("/start")
    message_id, buttons = user.keyboard_message("settings")
    update = {"update_id": 77_001, **tg.callback(user.chat_id, "settings", message_id=message_id, buttons=buttons)}
    async with srv.http.post(srv.url + WEBHOOK_PATH, json=update, headers={SECRET_HEADER: SECRET}) as r:
        assert r.status == 200
        method = await r.json()
    assert method == {"method": "answerCallbackQuery",
                      "callback_query_id": update["callback_query"]["id"]}
    assert not srv.fake.called("answerCallbackQuery")
    assert "language" in inline_ids(user.new()[-1])


async def test_same_menu_again_is_edited_in_place(srv: TgServer) -> None:
    user = TgUser(srv, 7040)
    person = await demo(srv)
    await user.say("/start")
    # "My requests" belongs to a verified number.
    await user.click("lookup")
    await user.click("agree")
    await user.share_contact("+86 " + person["phone"])
    await user.say("/menu")
    await user.click("requests")
    message_id, _ = user.keyboard_message("refresh")
    edits_before = len(srv.fake.called("editMessageText"))
    sends_before = len(srv.fake.sent(user.chat_id))
    await user.click("refresh")
    edits = srv.fake.called("editMessageText")
    assert len(edits) == edits_before + 1 and edits[-1].params["message_id"] == message_id
    assert len(srv.fake.sent(user.chat_id)) == sends_before
    # Identical content again: Telegram says "not modified", which is fine and sends nothing new.
    await user.click("refresh")
    assert len(srv.fake.sent(user.chat_id)) == sends_before


async def test_every_non_text_kind_gets_a_clear_answer(srv: TgServer) -> None:
    user = TgUser(srv, 7050)
    await user.say("/start")
    photo = [{"file_id": "p1", "file_unique_id": "u1", "width": 90, "height": 90}]
    doc = {"file_id": "d1", "file_unique_id": "ud1"}
    kinds: list[tuple[dict[str, Any], str]] = [
        ({"photo": photo, "caption": "13800138000"}, "photo"),
        ({"sticker": {"file_id": "s1", "file_unique_id": "us1", "type": "regular", "width": 1, "height": 1,
                      "is_animated": False, "is_video": False}}, "sticker"),
        ({"voice": {"file_id": "v1", "file_unique_id": "uv1", "duration": 2}}, "voice"),
        ({"audio": {"file_id": "a1", "file_unique_id": "ua1", "duration": 2}}, "voice"),
        ({"document": doc}, "document"),
        ({"location": {"latitude": 39.9, "longitude": 116.4}}, "location"),
        ({"venue": {"location": {"latitude": 39.9, "longitude": 116.4}, "title": "t", "address": "a"},
          "location": {"latitude": 39.9, "longitude": 116.4}}, "location"),
        ({"video": {"file_id": "w1", "file_unique_id": "uw1", "width": 1, "height": 1, "duration": 1}}, "video"),
        ({"video_note": {"file_id": "n1", "file_unique_id": "un1", "length": 1, "duration": 1}}, "video"),
        ({"animation": {"file_id": "g1", "file_unique_id": "ug1", "width": 1, "height": 1, "duration": 1},
          "document": doc}, "video"),
        ({"dice": {"emoji": "🎲", "value": 3}}, "other"),
        ({"poll": {"id": "p", "question": "q", "options": [], "total_voter_count": 0, "is_closed": False,
                   "is_anonymous": True, "type": "regular", "allows_multiple_answers": False,
                   "allows_revoting": False, "members_only": False}}, "other"),
    ]
    catalog = srv.rt.catalog
    for content, kind in kinds:
        result = await user.send(tg.message(user.chat_id, **content))
        assert result, content
        expected = catalog.render(Msg("input.media", {"kind": Msg(f"media.{kind}")}), "zh_CN")
        assert result[0]["text"] == "⚠️ " + expected, (content, result[0]["text"])
        assert "13800138000" not in texts(result)
    # A service message (the chat's auto-delete timer changed) is nothing to answer.
    assert await user.send(tg.message(user.chat_id, message_auto_delete_timer_changed={
        "message_auto_delete_time": 86400})) == []


async def test_edited_message_gets_a_note_and_changes_nothing(srv: TgServer) -> None:
    user = TgUser(srv, 7060)
    await user.say("/start")
    before = (await srv.rows(Conversation))[0]
    note = await user.send(tg.message(user.chat_id, text="/forget", edited=True))
    assert len(note) == 1 and "修改" in note[0]["text"]
    after = (await srv.rows(Conversation))[0]
    assert (after.state, after.version) == (before.state, before.version)


# ---- groups, channels and blocks -------------------------------------------------------------------

async def test_group_messages_are_refused_without_echo_and_channel_posts_ignored(srv: TgServer) -> None:
    group = {"id": -100777, "type": "supergroup", "title": "Family"}
    sender = tg.user(8001)
    assert await srv.post(tg.message(-100777, chat=group, sender=sender, text="hello all")) == 200
    assert srv.fake.sent(-100777) == []
    leak = "/start 13800138000 11010519491231002X"
    assert await srv.post(tg.message(-100777, chat=group, sender=sender, text=leak)) == 200
    refusals = srv.fake.sent(-100777)
    assert len(refusals) == 1
    body = json.dumps(refusals[0], ensure_ascii=False)
    assert "13800138000" not in body and "1101" not in body and "138" not in body
    assert "私聊" in refusals[0]["text"]
    button = refusals[0]["reply_markup"]["inline_keyboard"][0][0]
    assert button["url"].startswith("https://t.me/haoqing_test_bot")
    # At most one refusal a minute per group (groups allow 20 messages a minute in all).
    await srv.post(tg.message(-100777, chat=group, sender=sender, text="/start@haoqing_test_bot"))
    assert len(srv.fake.sent(-100777)) == 1
    # Added to another group: one polite note there too.
    other = {"id": -100888, "type": "group", "title": "Work"}
    await srv.post(tg.my_chat_member(8001, "left", "member", chat=other))
    assert len(srv.fake.sent(-100888)) == 1
    # Channel posts are acknowledged and ignored.
    post = {"channel_post": {"message_id": 1, "date": int(time.time()), "text": "news 13800138000",
                             "chat": {"id": -100999, "type": "channel", "title": "News"}}}
    assert await srv.post(post) == 200
    assert await srv.post({"edited_channel_post": post["channel_post"]}) == 200
    assert srv.fake.sent(-100999) == []
    assert not await srv.rows(User, col(User.channel) == "telegram")
    assert not await srv.rows(InboxItem)


async def test_blocked_user_is_inactive_gets_no_pushes_and_unblocking_restores(srv: TgServer) -> None:
    user = TgUser(srv, 7070)
    await user.say("/start")
    await srv.post(tg.my_chat_member(user.chat_id, "member", "kicked"))
    row = await srv.user(user.chat_id)
    assert row is not None and row.active is False and row.id is not None
    await srv.rt.dispatcher.push(row.id, [Reply(Msg("help"))], channel="telegram")
    await _wait_rows(srv, lambda rows: rows and all(r.status == "failed" for r in rows if r.kind == "push"))
    assert user.new() == []
    await srv.post(tg.my_chat_member(user.chat_id, "kicked", "member"))
    row = await srv.user(user.chat_id)
    assert row is not None and row.active is True
    await srv.rt.dispatcher.push(row.id, [Reply(Msg("help"))], channel="telegram")
    await srv.fake.wait_for(lambda: user.fake.sent(user.chat_id)[user.seen:])
    await _wait_rows(srv, lambda rows: [r.status for r in rows if r.kind == "push"] == ["failed", "sent"])
    # Telegram says the user blocked us while we send: marked inactive on the spot.
    srv.fake.block(user.chat_id)
    await srv.rt.dispatcher.push(row.id, [Reply(Msg("help"))], channel="telegram")
    await _wait_rows(srv, lambda rows: [r.status for r in rows if r.kind == "push"] == ["failed", "sent", "failed"])
    row = await srv.user(user.chat_id)
    assert row is not None and row.active is False


async def _wait_rows(srv: TgServer, check: Any, seconds: float = 10.0) -> list[OutboxMessage]:
    deadline = time.monotonic() + seconds
    while True:
        rows = await srv.rows(OutboxMessage, col(OutboxMessage.channel) == "telegram")
        rows.sort(key=lambda r: r.seq)
        if check(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError([(r.kind, r.status) for r in rows])
        await asyncio.sleep(0.05)


# ---- the send path under faults -------------------------------------------------------------------

async def test_429_storm_delays_only_the_flooded_chats(srv: TgServer) -> None:
    flooded = [TgUser(srv, 7100 + i) for i in range(4)]
    calm = TgUser(srv, 7200)
    # Each flooded chat's first two sends draw a 429 with retry_after 2, so none of its replies can go out before
    # the bot has waited 4 s as told. The calm chat and the webhooks are checked against that, in the fake's log:
    # no wall clock is asserted.
    for user in flooded:
        srv.fake.fail("429", method="sendMessage", chat_id=user.chat_id, times=2, retry_after=2)
    storm = asyncio.gather(*(srv.post(tg.message(u.chat_id, text="/start")) for u in flooded))
    await srv.fake.wait_for(lambda: all(srv.fake.called("sendMessage", chat_id=u.chat_id, ok=False)
                                        for u in flooded))

    def attempts(user: TgUser) -> int:
        return len(srv.fake.called("sendMessage", chat_id=user.chat_id))

    # While every flooded chat waits out its first retry_after, the calm chat's replies go out with its webhook.
    assert await srv.post(tg.message(calm.chat_id, text="/start")) == 200
    assert len(calm.new()) == 2
    assert [attempts(u) for u in flooded] == [1] * len(flooded), "the calm chat waited for the flooded ones"
    # The flooded webhooks answer without waiting out retry_after: their replies are left to the outbox.
    assert set(await storm) == {200}
    assert all(srv.fake.sent(u.chat_id) == [] for u in flooded)
    for user in flooded:
        await srv.fake.wait_for(lambda u=user: len(srv.fake.sent(u.chat_id)) >= 2, timeout=10)
    await asyncio.sleep(0.3)
    for user in flooded:
        sent = srv.fake.sent(user.chat_id)
        assert len(sent) == 2, "each reply exactly once"
        assert "号清" in sent[0]["text"] and "lookup" in inline_ids(sent[1])
        throttled = srv.fake.called("sendMessage", chat_id=user.chat_id, ok=False)
        assert len(throttled) == 2
        assert sent and srv.fake.called("sendMessage", chat_id=user.chat_id, ok=True)[0].at - throttled[-1].at >= 0
    rows = await _wait_rows(srv, lambda rows: all(r.status == "sent" for r in rows))
    assert len(rows) == 10


async def test_5xx_and_stalls_are_retried_and_delivered_once(srv: TgServer) -> None:
    user = TgUser(srv, 7300)
    srv.fake.fail("502", method="sendMessage", chat_id=user.chat_id, times=2)
    result = await user.say("/start")
    assert len(result) == 2
    srv.channel.limits.api_timeout = 0.3
    srv.fake.fail("stall", method="sendMessage", chat_id=user.chat_id, times=1, seconds=1.0)
    result = await user.say("/help")
    # A stalled call may have reached Telegram, so at-least-once can repeat it; here the fake dropped it.
    assert "/language" in texts(result)
    failed = srv.fake.called("sendMessage", chat_id=user.chat_id, ok=False)
    assert [c.status for c in failed] == [502, 502, 0]


async def test_pushes_are_paced_per_chat(srv: TgServer) -> None:
    user = TgUser(srv, 7400)
    await user.say("/start")
    row = await srv.user(user.chat_id)
    assert row is not None and row.id is not None
    srv.channel.limits.chat_per_second = 4.0
    await srv.rt.dispatcher.push(row.id, [Reply(Msg("help")) for _ in range(4)], channel="telegram")
    await srv.fake.wait_for(lambda: len(srv.fake.sent(user.chat_id)) >= 6, timeout=10)
    times = [c.at for c in srv.fake.called("sendMessage", chat_id=user.chat_id, ok=True)][2:]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2, gaps
    await _wait_rows(srv, lambda rows: all(r.status == "sent" for r in rows))


# ---- long polling -----------------------------------------------------------------------------------

@pytest.fixture
async def polling(tmp_path: Path, fake: FakeBotApi, http: aiohttp.ClientSession) -> AsyncIterator[TgServer]:
    server = await start_tg(tmp_path, fake, http, webhook=False)
    yield server
    await server.runner.cleanup()
    assert fake.flood_refusals == [], "the bot sent over the limits it was given"


async def test_polling_mode_runs_the_conversation_in_order(polling: TgServer) -> None:
    fake = polling.fake
    assert fake.webhook is None and fake.called("deleteWebhook")
    assert not await _post_status(polling)  # no webhook route in polling mode
    fake.feed(tg.message(9001, text="/start"))
    await fake.wait_for(lambda: len(fake.sent(9001)) == 2)
    ids = fake.feed(*(tg.message(9001, text="/help" if i % 2 else "/menu") for i in range(20)))
    await fake.wait_for(lambda: len(fake.sent(9001)) >= 2 + 30, timeout=15)
    inbox = await polling.rows(InboxItem, col(InboxItem.dedupe_key).in_([str(i) for i in ids]))
    assert len(inbox) == 20
    by_inbox = {i.id: int(i.dedupe_key) for i in inbox}
    replies = await polling.rows(OutboxMessage, col(OutboxMessage.inbox_id).in_(list(by_inbox)))
    pairs = sorted((by_inbox[r.inbox_id], r.seq) for r in replies if r.inbox_id is not None)
    assert [seq for _, seq in pairs] == sorted(seq for _, seq in pairs)
    # Everything processed is acknowledged with the next offset.
    await fake.wait_for(lambda: fake.pending_updates == 0)
    # Buttons work the same way; with no webhook response to carry it, the answer is an API call.
    fake.feed(tg.callback(9001, "lookup", buttons=["lookup"]))
    await fake.wait_for(lambda: any("agree" in inline_ids(m) for m in fake.sent(9001)))
    assert fake.called("answerCallbackQuery", ok=True)


async def _post_status(srv: TgServer) -> bool:
    async with srv.http.post(srv.url + WEBHOOK_PATH, json={}) as r:
        return r.status != 404 and r.status != 405


async def test_polling_survives_conflicts_and_errors(polling: TgServer) -> None:
    fake = polling.fake
    fake.fail("409", method="getUpdates", times=1)
    fake.fail("502", method="getUpdates", times=1)
    # One update PTB cannot parse must not wedge the queue (the offset could never move past it).
    fake.feed({"message": {"message_id": 1, "text": 5}}, tg.message(9002, text="/start"))
    await fake.wait_for(lambda: len(fake.sent(9002)) == 2, timeout=15)
    # The long poll already in flight may deliver first; the two failures come on the calls after it.
    await fake.wait_for(lambda: len(fake.called("getUpdates", ok=False)) == 2, timeout=15)
    assert [c.status for c in fake.called("getUpdates", ok=False)] == [409, 502]
    await fake.wait_for(lambda: fake.pending_updates == 0)


async def test_a_send_cut_short_by_a_crash_is_redelivered_after_restart(tmp_path: Path, fake: FakeBotApi,
                                                                        http: aiohttp.ClientSession) -> None:
    first = await start_tg(tmp_path, fake, http)
    user = TgUser(first, 7500)
    await user.say("/start")
    row = await first.user(user.chat_id)
    assert row is not None and row.id is not None
    await first.rt.dispatcher.push(row.id, [Reply(Msg("help"))], channel="telegram")
    await _wait_rows(first, lambda rows: [r.status for r in rows if r.kind == "push"] == ["sent"])
    # A worker claimed the next push and died before sending it.
    first.channel.pump.claim = _never_claims  # type: ignore[method-assign]
    await first.rt.dispatcher.push(row.id, [Reply(Msg("help"))], channel="telegram")
    async with first.rt.db.session() as session:
        pushed = (await session.exec(select(OutboxMessage).where(col(OutboxMessage.kind) == "push")
                                     .order_by(col(OutboxMessage.seq)))).all()[-1]
        pushed.status, pushed.sent_at = "sending", None
        session.add(pushed)
        await session.commit()
    sent_before = len(fake.sent(user.chat_id))
    await first.runner.cleanup()
    second = await start_tg(tmp_path, fake, http)
    try:
        await fake.wait_for(lambda: len(fake.sent(user.chat_id)) == sent_before + 1)
        await _wait_rows(second, lambda rows: [r.status for r in rows if r.kind == "push"] == ["sent", "sent"])
        await asyncio.sleep(0.3)
        assert len(fake.sent(user.chat_id)) == sent_before + 1, "delivered once, not again"
    finally:
        await second.runner.cleanup()


async def _never_claims(_row_id: int) -> bool:
    return False


async def test_plan_date_from_the_calendar(srv: TgServer) -> None:
    user = TgUser(srv, 7077)
    person = await demo(srv, "fresh")
    await user.say("/start")
    await user.click("plan")
    await user.click("agree")
    # Today in Beijing, taken before the calendar is drawn: a test running across midnight there still passes.
    today = (datetime.now(UTC) + timedelta(hours=8)).date().isoformat()
    shown = await user.share_contact(person["phone"])
    calendar = shown[-1]
    days = [d for d in inline_ids(calendar) if d.startswith("date:")]
    assert days and "menu" in inline_ids(calendar), inline_ids(calendar)
    # Every day offered is one the plan accepts: from today to a year ahead.
    assert min(days) >= "date:" + today
    message_id, buttons = user.keyboard_message(days[0])
    # Next month: the calendar is redrawn in place, and no conversation step runs.
    nav = next(b for b in buttons if b.startswith("month:"))
    steps_before = len(await srv.rows(InboxItem))
    await user.send(tg.callback(user.chat_id, nav, message_id=message_id, buttons=buttons))
    await user.fake.wait_for(lambda: user.fake.called("editMessageReplyMarkup", ok=True))
    edited = user.fake.called("editMessageReplyMarkup", ok=True)[-1].params["reply_markup"]
    next_days = [b["callback_data"] for row in edited["inline_keyboard"] for b in row
                 if b["callback_data"].startswith("date:")]
    assert next_days and next_days[0][5:12] == nav[6:13]
    assert any(b["callback_data"] == "menu" for row in edited["inline_keyboard"] for b in row)
    assert len(await srv.rows(InboxItem)) == steps_before  # moving the calendar is not a conversation step
    picked = next_days[3]
    result = await user.send(tg.callback(user.chat_id, picked, message_id=message_id,
                                         buttons=[b["callback_data"] for row in edited["inline_keyboard"]
                                                  for b in row]))
    assert f"注销计划：{picked[5:]}" in texts(result), texts(result)


# ---- Telegram as it really behaves (issue 10) ------------------------------------------------------------

@pytest.mark.parametrize(("url", "secret", "setting"), [
    ("http://bot.example.test/telegram/webhook", SECRET, "TELEGRAM_WEBHOOK_URL"),
    ("https://bot.example.test:8080/telegram/webhook", SECRET, "TELEGRAM_WEBHOOK_URL"),
    ("bot.example.test/telegram/webhook", SECRET, "TELEGRAM_WEBHOOK_URL"),
    ("https://bot.example.test/telegram/webhook", "has spaces!", "TELEGRAM_WEBHOOK_SECRET"),
    ("https://bot.example.test/telegram/webhook", "x" * 257, "TELEGRAM_WEBHOOK_SECRET"),
], ids=["http", "port", "no-scheme", "secret-chars", "secret-long"])
async def test_a_webhook_telegram_would_refuse_stops_the_start(tmp_path: Path, fake: FakeBotApi,
                                                               http: aiohttp.ClientSession, url: str, secret: str,
                                                               setting: str) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        await start_tg(tmp_path, fake, http, telegram_webhook_url=url, telegram_webhook_secret=secret)
    assert fake.called("setWebhook") == [], "refused before asking Telegram"


async def test_a_refused_token_or_webhook_stops_the_start_naming_the_setting(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    other = await FakeBotApi("999:OTHER").start()  # does not know our token: 401 like Telegram
    try:
        with pytest.raises(ConfigurationError, match="TELEGRAM_BOT_TOKEN"):
            await start_tg(tmp_path / "a", other, http)
    finally:
        await other.stop()
    fake = await FakeBotApi(TOKEN).start()
    try:
        # What only Telegram can tell (its DNS, its certificate check) comes back as a 400 from setWebhook.
        fake.fail("400", method="setWebhook", description="Bad Request: bad webhook: Failed to resolve host")
        with pytest.raises(ConfigurationError, match=r"(?i)TELEGRAM_WEBHOOK_URL.*failed to resolve host"):
            await start_tg(tmp_path / "b", fake, http)
        assert len(fake.called("setWebhook")) == 1, "not retried as if it were bad luck"
    finally:
        await fake.stop()


async def test_the_fake_refuses_what_telegram_refuses(fake: FakeBotApi, http: aiohttp.ClientSession) -> None:
    async def call(method: str, **params: Any) -> tuple[int, dict[str, Any]]:
        async with http.post(f"{fake.base_url}{TOKEN}/{method}", json=params) as r:
            return r.status, await r.json()

    assert (await call("sendMessage", chat_id=1, text="a" * 4097))[0] == 400
    assert (await call("sendMessage", chat_id=2, text="😀" * 2049))[0] == 400, "UTF-16 units are counted"
    assert (await call("sendMessage", chat_id=3, text="a" * 4096))[0] == 200
    button = {"text": "b", "callback_data": "x" * 65}
    assert (await call("sendMessage", chat_id=4, text="t", reply_markup={"inline_keyboard": [[button]]}))[0] == 400
    many = [[{"text": "b", "callback_data": str(i)}] for i in range(101)]
    assert (await call("sendMessage", chat_id=5, text="t", reply_markup={"inline_keyboard": many}))[0] == 400
    contact = {"keyboard": [[{"text": "phone", "request_contact": True}]]}
    status, body = await call("sendMessage", chat_id=-100, text="t", reply_markup=contact)
    assert status == 400 and "private chats only" in body["description"]
    for url in ("http://x.example/hook", "https://x.example:8080/hook"):
        assert (await call("setWebhook", url=url))[0] == 400
    assert (await call("setWebhook", url="https://x.example/hook", secret_token="no spaces"))[0] == 400
    assert (await call("setWebhook", url="https://x.example:8443/hook", secret_token="ok_-1"))[0] == 200
    assert (await call("getUpdates"))[0] == 409, "no getUpdates while a webhook is set"
    # Flood control of its own: a burst of 3 per private chat, then one a second.
    statuses = [(await call("sendMessage", chat_id=77, text="m"))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    status, body = await call("sendMessage", chat_id=77, text="m")
    assert status == 429 and body["parameters"]["retry_after"] >= 1
    # 30 a second across the bot.
    statuses = [(await call("sendMessage", chat_id=1000 + i, text="m"))[0] for i in range(31)]
    assert statuses.count(429) >= 1
    assert len(fake.flood_refusals) >= 3
    assert flood_violations([("sendMessage", 5, 0.0), ("sendMessage", 5, 0.1), ("sendMessage", 5, 0.2),
                             ("sendMessage", 5, 0.3)]) == ["sendMessage to 5 at 0.300"]


async def test_under_real_limits_replies_go_first_and_nothing_draws_a_429(tmp_path: Path, fake: FakeBotApi,
                                                                          http: aiohttp.ClientSession) -> None:
    srv = await start_tg(tmp_path, fake, http, real_limits=True)
    try:
        users = [TgUser(srv, 8000 + i) for i in range(30)]
        for user in users:
            await user.say("/start")
            await asyncio.sleep(0)
        ids = []
        for user in users:
            row = await srv.user(user.chat_id)
            assert row is not None and row.id is not None
            ids.append(row.id)
        # 60 pushes: two seconds of the whole bot's budget.
        for user_id in ids:
            await srv.rt.dispatcher.push(user_id, [Reply(Msg("help")), Reply(Msg("help"))], channel="telegram")
        await fake.wait_for(lambda: len(fake.called("sendMessage", ok=True)) >= 60 + 10, timeout=20)
        talker = TgUser(srv, 8100)
        answer = await talker.say("/start")
        assert len(answer) == 2
        reply_at = max(c.at for c in fake.called("sendMessage", chat_id=talker.chat_id, ok=True))
        await fake.wait_for(lambda: len(fake.called("sendMessage", ok=True)) >= 60 + 60 + 2, timeout=30)
        later_pushes = [c for c in fake.called("sendMessage", ok=True) if c.chat_id != talker.chat_id
                        and c.at > reply_at]
        assert later_pushes, "the reply overtook pushes already waiting"
        assert fake.flood_refusals == []
        timeline = [(c.method, c.chat_id, c.at) for c in fake.calls if c.status == 200]
        assert flood_violations(timeline) == []
    finally:
        await srv.runner.cleanup()


async def test_a_button_is_answered_on_every_path(srv: TgServer) -> None:
    user = TgUser(srv, 7600)
    await user.say("/start")
    message_id, buttons = user.keyboard_message("lookup")
    update = {"update_id": 555_001, **tg.callback(user.chat_id, "lookup", message_id=message_id, buttons=buttons)}
    press = update["callback_query"]["id"]
    assert await srv.post(update) == 200
    # Telegram lost our answer and sends the update again: the spinner still turns, so it is answered again.
    assert await srv.post(update) == 200
    answered = [c for c in srv.fake.called("answerCallbackQuery") if c.params.get("callback_query_id") == press]
    assert len(answered) == 2
    # An update we cannot even parse still has its button answered.
    broken = {"update_id": 555_002, "callback_query": {"id": "cq-broken", "from": "not a user", "data": "x"}}
    assert await srv.post(broken) == 200
    assert [c.params.get("callback_query_id") for c in srv.fake.called("answerCallbackQuery")][-1] == "cq-broken"


async def test_a_button_whose_update_keeps_failing_is_still_answered(srv: TgServer) -> None:
    user = TgUser(srv, 7700)
    await user.say("/start")
    message_id, buttons = user.keyboard_message("lookup")
    # A real fault, not a mock: the conversation table is gone, so every try of the step fails.
    async with srv.rt.db.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE conversations")
    update = {"update_id": 556_001, **tg.callback(user.chat_id, "lookup", message_id=message_id, buttons=buttons)}
    press = update["callback_query"]["id"]
    statuses = [await srv.post(update) for _ in range(3)]
    assert statuses == [500, 500, 200], "Telegram retries twice, then the update is given up"
    answered = [c for c in srv.fake.called("answerCallbackQuery") if c.params.get("callback_query_id") == press]
    assert len(answered) == 1, "the give-up answer stops the spinner"
