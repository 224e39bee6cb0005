"""A fake Telegram Bot API on loopback: the methods the bot calls, a getUpdates queue, and injected faults.

Every call is recorded (method, parameters, HTTP status). Faults (429 with retry_after, 5xx, 403, 400, or a
stall) are matched by method and chat and consumed in order. It speaks JSON, urlencoded and multipart
bodies, so python-telegram-bot's httpx transport and aiogram can be pointed at it too (bench/).

Run standalone: python -m tests.fakes.fake_bot_api --port 8081 (prints its base URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = {"id": 123, "is_bot": True, "first_name": "Haoqing", "username": "haoqing_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}
_JSON_FIELDS = {"reply_markup", "allowed_updates", "commands", "scope", "link_preview_options",
                "reply_parameters", "entities", "caption_entities"}
_INT_FIELDS = {"chat_id", "message_id", "offset", "limit", "timeout", "max_connections", "cache_time"}


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
    def __init__(self, token: str = "123:ABC", *, record: bool = True, timeline: bool = False) -> None:
        self.token = token
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
        return web.json_response({"sent": self.sent_count})

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

    def _chat(self, chat_id: Any) -> dict[str, Any]:
        cid = int(chat_id)
        return {"id": cid, "type": "private", "first_name": "U"} if cid > 0 else {"id": cid, "type": "group",
                                                                                 "title": "G"}

    async def _m_getMe(self, params: dict[str, Any]) -> Any:
        return BOT_USER

    async def _m_setWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = params
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
    args = parser.parse_args()
    fake = await FakeBotApi(args.token, record=False, timeline=args.timeline).start(args.port)
    print(fake.base_url, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
