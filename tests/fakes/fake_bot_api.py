"""A fake Telegram Bot API on loopback: the methods the bot calls, a getUpdates queue, and injected faults.

Every call is recorded (method, parameters, HTTP status). Faults (429 with retry_after, 5xx, 403, 400, or a
stall) are matched by method and chat and consumed in order. It speaks JSON, urlencoded and multipart
bodies, so python-telegram-bot's httpx transport and aiogram can be pointed at it too (bench/).

It refuses on its own what Telegram refuses, at least as strictly: text over 4,096 UTF-16 units, callback data
outside 1–64 bytes, more than 100 buttons, a contact request outside a private chat, setWebhook with a URL that
is not HTTPS on 443/80/88/8443 or a secret outside [A-Za-z0-9_-]{1,256}, getUpdates while a webhook is set
(409), and flood (429 with retry_after): over 30 messages in any second per bot, over 1 per second per private
chat after a burst of 3, over 20 a minute per group. Telegram tolerates short bursts it does not document; the
fake allows only these, with 50 ms for network jitter.

Run standalone: python -m tests.fakes.fake_bot_api --port 8081 (prints its base URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = {"id": 123, "is_bot": True, "first_name": "Haoqing", "username": "haoqing_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}
_JSON_FIELDS = {"reply_markup", "allowed_updates", "commands", "scope", "link_preview_options",
                "reply_parameters", "entities", "caption_entities"}
_INT_FIELDS = {"chat_id", "message_id", "offset", "limit", "timeout", "max_connections", "cache_time"}
# Methods that put a message on a chat, and so count against flood control.
FLOOD_METHODS = frozenset({"sendMessage", "editMessageText", "editMessageReplyMarkup"})
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
JITTER = 0.05


@dataclass
class FloodRules:
    bot_per_second: int = 30
    chat_per_second: float = 1.0
    chat_burst: int = 3
    group_per_minute: int = 20


class Flood:
    """Telegram's flood control as the fake applies it; `check` returns the seconds to wait, 0 when allowed."""

    def __init__(self, rules: FloodRules) -> None:
        self.rules = rules
        self._bot: deque[float] = deque()
        self._chat_tat: dict[int, float] = {}
        self._group: dict[int, deque[float]] = {}

    def check(self, chat_id: int | None, now: float) -> float:
        rules = self.rules
        while self._bot and self._bot[0] <= now - 1.0:
            self._bot.popleft()
        if len(self._bot) >= rules.bot_per_second:
            return self._bot[0] + 1.0 - now
        if chat_id is not None and chat_id < 0:
            window = self._group.setdefault(chat_id, deque())
            while window and window[0] <= now - 60.0:
                window.popleft()
            if len(window) >= rules.group_per_minute:
                return window[0] + 60.0 - now
            window.append(now)
        elif chat_id is not None:
            tolerance = (rules.chat_burst - 1) / rules.chat_per_second
            tat = self._chat_tat.get(chat_id, now)
            if tat - tolerance > now + JITTER:
                return tat - tolerance - now
            self._chat_tat[chat_id] = max(tat, now) + 1.0 / rules.chat_per_second
        self._bot.append(now)
        return 0.0


def flood_violations(timeline: Sequence[Sequence[Any]], rules: FloodRules | None = None) -> list[str]:
    """Replays a timeline of accepted sends [(method, chat_id, t)] against the rules: what should have got a 429.
    The bench asserts this is empty for the fake's log while a load test runs."""
    flood = Flood(rules or FloodRules())
    found = []
    for method, chat_id, at in sorted(timeline, key=lambda entry: entry[2]):
        if method in FLOOD_METHODS and flood.check(chat_id, at) > 0:
            found.append(f"{method} to {chat_id} at {at:.3f}")
    return found


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int
    at: float = field(default_factory=time.monotonic)

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if value is not None else None


@dataclass
class Fault:
    kind: str  # "429" | "500" | "502" | "503" | "403" | "400" | "409" | "stall"
    method: str | None = None
    chat_id: int | None = None
    times: int = 1
    retry_after: int = 1
    seconds: float = 30.0
    description: str = ""

    def matches(self, method: str, params: Mapping[str, Any]) -> bool:
        if self.times <= 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.chat_id is None or _int(params.get("chat_id")) == self.chat_id


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _normalise(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in _JSON_FIELDS and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if key in _INT_FIELDS and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        out[key] = value
    return out


class FakeBotApi:
    def __init__(self, token: str = "123:ABC", *, record: bool = True, timeline: bool = False,
                 flood: FloodRules | None = None, strict_flood: bool = True) -> None:
        self.token = token
        # Flood control on by default; `strict_flood=False` only for baselines that measure other libraries.
        self.flood = Flood(flood or FloodRules()) if strict_flood else None
        # The 429s the fake gave on its own (not scripted): a sender that keeps to the limits causes none.
        self.flood_refusals: list[tuple[str, int | None, float]] = []
        self.record = record
        # Bench mode: (method, chat_id, time.monotonic()) per call, read and cleared at GET /__timeline.
        self.timeline: list[tuple[str, int | None, float]] | None = [] if timeline else None
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.blocked: set[int] = set()
        self.webhook: dict[str, Any] | None = None
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.sent_count = 0
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._new_update = asyncio.Event()
        self._message_ids = itertools.count(1000)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- control ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What TELEGRAM_API_BASE_URL should be (PTB appends the token)."""
        return f"http://127.0.0.1:{self.port}/bot"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/__timeline", self._timeline)
        app.router.add_get("/__count", self._count)
        return app

    async def _timeline(self, request: web.Request) -> web.Response:
        entries = self.timeline or []
        if self.timeline is not None:
            self.timeline = []
        return web.json_response(entries)

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"sent": self.sent_count, "flood_refusals": len(self.flood_refusals)})

    async def start(self, port: int = 0) -> FakeBotApi:
        # Long polls still waiting must not hold up shutdown, nor outlive a client that went away.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def feed(self, *updates: dict[str, Any]) -> list[int]:
        """Queues updates for getUpdates, numbering those without an update_id."""
        ids = []
        for update in updates:
            if "update_id" not in update:
                update = {"update_id": next(self._update_ids), **update}
            self._updates.append(update)
            ids.append(int(update["update_id"]))
        self._new_update.set()
        return ids

    @property
    def pending_updates(self) -> int:
        return len(self._updates)

    def fail(self, kind: str, *, method: str | None = None, chat_id: int | None = None, times: int = 1,
             retry_after: int = 1, seconds: float = 30.0, description: str = "") -> Fault:
        fault = Fault(kind, method, chat_id, times, retry_after, seconds, description)
        self.faults.append(fault)
        return fault

    def block(self, chat_id: int) -> None:
        self.blocked.add(chat_id)

    def called(self, method: str | None = None, *, chat_id: int | None = None, ok: bool | None = None) -> list[Call]:
        return [c for c in self.calls
                if (method is None or c.method == method) and (chat_id is None or c.chat_id == chat_id)
                and (ok is None or (c.status == 200) == ok)]

    def sent(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """sendMessage calls that succeeded, oldest first."""
        return [c.params for c in self.called("sendMessage", chat_id=chat_id, ok=True)]

    def texts(self, chat_id: int | None = None) -> list[str]:
        return [str(p.get("text", "")) for p in self.sent(chat_id)]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("fake Bot API: condition not met in time; calls: "
                                     + ", ".join(f"{c.method}:{c.status}" for c in self.calls[-30:]))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))

    # ---- the API ---------------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if not request.can_read_body:
            return _normalise(params)
        ctype = request.content_type
        if ctype == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            for key, value in form.items():
                params[key] = value if isinstance(value, str) else "<file>"
        return _normalise(params)

    def _answer(self, method: str, params: dict[str, Any], status: int, body: dict[str, Any]) -> web.Response:
        if self.record:
            self.calls.append(Call(method, params, status))
        if self.timeline is not None and status == 200:
            self.timeline.append((method, _int(params.get("chat_id")), time.monotonic()))
        self._changed.set()
        return web.json_response(body, status=status)

    def _error(self, method: str, params: dict[str, Any], status: int, description: str,
               parameters: dict[str, Any] | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return self._answer(method, params, status, body)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await self._params(request)
        if request.match_info["token"] != self.token:
            return self._error(method, params, 401, "Unauthorized")
        for fault in self.faults:
            if fault.matches(method, params):
                fault.times -= 1
                response = await self._fault(fault, method, params)
                if response is not None:
                    return response
                break
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._error(method, params, 404, "Not Found: method not found")
        refused = self._validate(method, params)
        if refused is not None:
            return self._error(method, params, 400, refused)
        if self.flood is not None and method in FLOOD_METHODS:
            wait = self.flood.check(_int(params.get("chat_id")), time.monotonic())
            if wait > 0:
                retry = max(1, math.ceil(wait))
                self.flood_refusals.append((method, _int(params.get("chat_id")), time.monotonic()))
                return self._error(method, params, 429, f"Too Many Requests: retry after {retry}",
                                   {"retry_after": retry})
        result = await handler(params)
        if isinstance(result, web.Response):
            return result
        return self._answer(method, params, 200, {"ok": True, "result": result})

    async def _fault(self, fault: Fault, method: str, params: dict[str, Any]) -> web.Response | None:
        if fault.kind == "429":
            return self._error(method, params, 429, f"Too Many Requests: retry after {fault.retry_after}",
                               {"retry_after": fault.retry_after})
        if fault.kind in ("500", "502", "503"):
            return self._error(method, params, int(fault.kind), fault.description or "Internal Server Error")
        if fault.kind == "403":
            return self._error(method, params, 403, fault.description or "Forbidden: bot was blocked by the user")
        if fault.kind == "409":
            return self._error(method, params, 409, fault.description or "Conflict: terminated by other getUpdates "
                               "request; make sure that only one bot instance is running")
        if fault.kind == "400":
            return self._error(method, params, 400, fault.description or "Bad Request: chat not found")
        if fault.kind == "stall":
            # Record the attempt, then hang: the client's timeout must fire.
            if self.record:
                self.calls.append(Call(method, params, 0))
            self._changed.set()
            await asyncio.sleep(fault.seconds)
            return None
        raise ValueError(fault.kind)

    def _validate(self, method: str, params: dict[str, Any]) -> str | None:
        """Telegram's own 400s for what the bot must never send."""
        if method in ("sendMessage", "editMessageText") and _utf16(str(params.get("text", ""))) > 4096:
            return "Bad Request: message is too long"
        markup = params.get("reply_markup")
        if isinstance(markup, dict):
            rows = markup.get("inline_keyboard")
            if isinstance(rows, list):
                buttons = [b for row in rows if isinstance(row, list) for b in row]
                if len(buttons) > 100:
                    return "Bad Request: reply markup is too long"
                for button in buttons:
                    data = button.get("callback_data") if isinstance(button, dict) else None
                    if data is not None and not 1 <= len(str(data).encode()) <= 64:
                        return "Bad Request: BUTTON_DATA_INVALID"
            keys = markup.get("keyboard")
            if isinstance(keys, list) and any(isinstance(b, dict) and b.get("request_contact")
                                              for row in keys if isinstance(row, list) for b in row):
                chat = _int(params.get("chat_id"))
                if chat is None or chat < 0:
                    return "Bad Request: phone number can be requested in private chats only"
        if method == "setWebhook":
            url = str(params.get("url", ""))
            if url:
                match = re.fullmatch(r"https://[^/:]+(?::(\d+))?(/.*)?", url)
                if match is None:
                    return "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
                if int(match.group(1) or 443) not in (443, 80, 88, 8443):
                    return "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
            secret = params.get("secret_token")
            if secret is not None and not _SECRET.fullmatch(str(secret)):
                return "Bad Request: bad webhook: secret token contains unallowed characters"
        return None

    def _chat(self, chat_id: Any) -> dict[str, Any]:
        cid = int(chat_id)
        return {"id": cid, "type": "private", "first_name": "U"} if cid > 0 else {"id": cid, "type": "group",
                                                                                 "title": "G"}

    async def _m_getMe(self, params: dict[str, Any]) -> Any:
        return BOT_USER

    async def _m_setWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = params if params.get("url") else None
        return True

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = None
        return True

    async def _m_getWebhookInfo(self, params: dict[str, Any]) -> Any:
        return {"url": (self.webhook or {}).get("url", ""), "has_custom_certificate": False,
                "pending_update_count": 0}

    async def _m_setMyCommands(self, params: dict[str, Any]) -> Any:
        self.commands[str(params.get("language_code", ""))] = list(params.get("commands") or [])
        return True

    async def _m_sendChatAction(self, params: dict[str, Any]) -> Any:
        return True

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        return True

    async def _m_sendMessage(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        if chat_id in self.blocked:
            return self._error("sendMessage", params, 403, "Forbidden: bot was blocked by the user")
        text = str(params.get("text", ""))
        if not text:
            return self._error("sendMessage", params, 400, "Bad Request: message text is empty")
        message = {"message_id": next(self._message_ids), "date": int(time.time()), "chat": self._chat(chat_id),
                   "from": BOT_USER, "text": text}
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        if self.record:  # bench mode keeps no per-message state
            self.messages[(chat_id, message["message_id"])] = message
        self.sent_count += 1
        return message

    async def _m_editMessageText(self, params: dict[str, Any]) -> Any:
        chat_id = int(params["chat_id"])
        key = (chat_id, int(params["message_id"]))
        message = self.messages.get(key)
        if message is None:
            return self._error("editMessageText", params, 400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        if message["text"] == params.get("text") and message.get("reply_markup") == markup:
            return self._error("editMessageText", params, 400, "Bad Request: message is not modified: specified "
                               "new message content and reply markup are exactly the same")
        message = {**message, "text": str(params.get("text", "")), "edit_date": int(time.time())}
        if isinstance(markup, dict):
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        self.messages[key] = message
        return message

    async def _m_editMessageReplyMarkup(self, params: dict[str, Any]) -> Any:
        key = (int(params["chat_id"]), int(params["message_id"]))
        message = self.messages.get(key)
        if message is None:
            return self._error("editMessageReplyMarkup", params, 400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        if message.get("reply_markup") == markup:
            return self._error("editMessageReplyMarkup", params, 400, "Bad Request: message is not modified")
        message = {**message, "edit_date": int(time.time())}
        if isinstance(markup, dict):
            message["reply_markup"] = markup
        self.messages[key] = message
        return message

    async def _m_getUpdates(self, params: dict[str, Any]) -> Any:
        if self.webhook and self.webhook.get("url"):
            return self._error("getUpdates", params, 409, "Conflict: can't use getUpdates method while webhook is "
                               "active; use deleteWebhook to delete the webhook first")
        offset = params.get("offset")
        if isinstance(offset, int):
            # The offset acknowledges everything before it, as Telegram does.
            self._updates = [u for u in self._updates if int(u["update_id"]) >= offset]
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + min(timeout, 50.0)
        while not self._updates:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._new_update.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_update.wait(), remaining)
        return self._updates[:limit]


# ---- update builders (real Bot API JSON shapes) ------------------------------------------------------

_clock = itertools.count(1)


def user(user_id: int, *, lang: str = "zh-hans", first_name: str = "Test") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": lang}


def private_chat(chat_id: int) -> dict[str, Any]:
    return {"id": chat_id, "type": "private", "first_name": "Test"}


def message(chat_id: int, *, text: str | None = None, lang: str = "zh-hans", chat: dict[str, Any] | None = None,
            sender: dict[str, Any] | None = None, update_id: int | None = None, edited: bool = False,
            **content: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"message_id": next(_clock), "date": int(time.time()),
                            "chat": chat or private_chat(chat_id), "from": sender or user(chat_id, lang=lang)}
    if text is not None:
        body["text"] = text
        if text.startswith("/"):
            body["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    body.update(content)
    if edited:
        body["edit_date"] = int(time.time())
    update: dict[str, Any] = {"edited_message" if edited else "message": body}
    if update_id is not None:
        update["update_id"] = update_id
    return update


def contact(chat_id: int, phone: str, *, owner: int | None, **kwargs: Any) -> dict[str, Any]:
    card: dict[str, Any] = {"phone_number": phone, "first_name": "Test"}
    if owner is not None:
        card["user_id"] = owner
    return message(chat_id, contact=card, **kwargs)


def callback(chat_id: int, data: str, *, message_id: int = 1, buttons: Iterable[str] = (), lang: str = "zh-hans",
             update_id: int | None = None, text: str = "menu") -> dict[str, Any]:
    keyboard = [[{"text": b, "callback_data": b}] for b in buttons]
    shown: dict[str, Any] = {"message_id": message_id, "date": int(time.time()), "chat": private_chat(chat_id),
                             "from": BOT_USER, "text": text}
    if keyboard:
        shown["reply_markup"] = {"inline_keyboard": keyboard}
    update: dict[str, Any] = {"callback_query": {"id": f"cq{next(_clock)}", "from": user(chat_id, lang=lang),
                                                 "chat_instance": "ci", "data": data, "message": shown}}
    if update_id is not None:
        update["update_id"] = update_id
    return update


def my_chat_member(chat_id: int, old: str, new: str, *, chat: dict[str, Any] | None = None,
                   update_id: int | None = None) -> dict[str, Any]:
    who = user(chat_id)
    update: dict[str, Any] = {"my_chat_member": {
        "chat": chat or private_chat(chat_id), "from": who, "date": int(time.time()),
        "old_chat_member": {"user": BOT_USER, "status": old, **({"until_date": 0} if old == "kicked" else {})},
        "new_chat_member": {"user": BOT_USER, "status": new, **({"until_date": 0} if new == "kicked" else {})},
    }}
    if update_id is not None:
        update["update_id"] = update_id
    return update


async def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default="123:ABC")
    parser.add_argument("--timeline", action="store_true", help="keep call times for GET /__timeline")
    parser.add_argument("--no-flood", action="store_true", help="no flood control (baselines of other libraries)")
    parser.add_argument("--bot-per-second", type=int, default=30, help="flood control: messages/s per bot")
    args = parser.parse_args()
    fake = await FakeBotApi(args.token, record=False, timeline=args.timeline, strict_flood=not args.no_flood,
                            flood=FloodRules(bot_per_second=args.bot_per_second)).start(args.port)
    print(fake.base_url, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
