"""A fake WeChat server API on a loopback port: access tokens, customer-service and template messages, the menu.

It issues numbered tokens, rejects unknown ones with 40001 and expired ones with 42001, records every call,
and misbehaves on cue: scripted error codes (40001, 42001, 45047…) for the next calls to a path, or a stall.
It is at least as strict as WeChat on its own: an `unverified` account gets 48001 from the customer-service and
template APIs (a `verified_subscription` one from the template API); a customer-service message needs an open
window (5 within 48 h of a user message, 3 within a minute of a click, follow or scan; 45015 outside, 45047 over
the count) and at most 2048 bytes (45002); a template message needs one of the account's templates (40037),
exactly its fields, each within its type's length (47003). The windows open when a WeChatUser given this fake
posts to the webhook, as WeChat's own servers would know.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import xmltodict
from aiohttp import web
from wechatpy.crypto import WeChatCrypto

TOKEN_PATH = "/cgi-bin/token"
CUSTOM_SEND = "/cgi-bin/message/custom/send"
TEMPLATE_SEND = "/cgi-bin/message/template/send"
MENU_CREATE = "/cgi-bin/menu/create"
KF_LIST = "/cgi-bin/customservice/getkflist"
TEMPLATE_LIST = "/cgi-bin/template/get_all_private_template"
MAX_TEXT_BYTES = 2048
MESSAGE_WINDOW = (48 * 3600.0, 5)
CLICK_WINDOW = (60.0, 3)
# Field types and the longest value WeChat takes since 2023 (characters).
FIELD_LIMITS = {"thing": 20, "character_string": 32, "phrase": 5, "name": 10, "number": 32, "letter": 32,
                "symbol": 5, "time": 30, "date": 30, "amount": 32, "const": 20}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\.DATA\s*\}\}")


@dataclass
class Call:
    path: str
    token: str
    body: dict[str, Any] = field(default_factory=dict)
    errcode: int = 0


@dataclass
class Window:
    opened_at: float
    used: int = 0


class FakeWeChatApi:
    def __init__(self, app_id: str = "wx-test-app", app_secret: str = "test-app-secret", *,
                 account: str = "verified_service", clock: Callable[[], float] = time.time,
                 templates: dict[str, str] | None = None, whitelisted: bool = True) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.account = account
        self.clock = clock
        self.whitelisted = whitelisted
        # template id -> content with {{field.DATA}} placeholders, as get_all_private_template lists them.
        self.templates = templates if templates is not None else {
            "tpl-status": "状态：{{thing1.DATA}}\n时间：{{time2.DATA}}"}
        # openid -> the latest window of each kind: "message" (48 h, 5) and "click" (1 min, 3).
        self.windows: dict[str, dict[str, Window]] = defaultdict(dict)
        self.url = ""
        self.calls: list[Call] = []
        self.tokens_issued: list[str] = []
        self._valid: set[str] = set()
        self._expired: set[str] = set()
        self._script: dict[str, deque[tuple[int, str | None]]] = defaultdict(deque)
        self.stall_seconds = 0.0
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.delivered = asyncio.Condition()

    # --- what to answer --------------------------------------------------------------------------
    def fail_next(self, path: str, errcode: int, times: int = 1, *, openid: str | None = None) -> None:
        """The next `times` calls to `path` (for `openid`, if given) get `errcode`, after the token check."""
        self._script[path].extend([(errcode, openid)] * times)

    def expire_tokens(self) -> None:
        self._expired |= self._valid
        self._valid.clear()

    def stall(self, seconds: float) -> None:
        self.stall_seconds = seconds

    def user_posted(self, openid: str, kind: str) -> None:
        """What WeChat's servers know when a user writes (`message`) or clicks, follows or scans (`click`)."""
        self.windows[openid][kind] = Window(self.clock())

    def _window_error(self, openid: str) -> int:
        """0 and the message counted when a window is open; else 45015 (none open) or 45047 (count used)."""
        now = self.clock()
        best: Window | None = None
        exhausted = False
        for kind, (length, limit) in (("message", MESSAGE_WINDOW), ("click", CLICK_WINDOW)):
            window = self.windows.get(openid, {}).get(kind)
            if window is None or now - window.opened_at >= length:
                continue
            if window.used >= limit:
                exhausted = True
                continue
            best = best or window
        if best is None:
            return 45047 if exhausted else 45015
        for window in self.windows[openid].values():
            window.used += 1
        return 0

    def _template_error(self, body: dict[str, Any]) -> int:
        content = self.templates.get(str(body.get("template_id", "")))
        if content is None:
            return 40037
        fields = set(_PLACEHOLDER.findall(content))
        data = body.get("data")
        if not isinstance(data, dict) or set(data) != fields:
            return 47003
        for name, item in data.items():
            value = item.get("value") if isinstance(item, dict) else None
            limit = FIELD_LIMITS.get(name.rstrip("0123456789"), 20)
            if not isinstance(value, str) or not value or len(value) > limit or "\n" in value \
                    or any(ord(ch) > 0xFFFF for ch in value):  # no emoji since 2023
                return 47003
        if "first" in data or "remark" in data or any(isinstance(i, dict) and "color" in i for i in data.values()):
            return 47003
        return 0

    # --- what happened ---------------------------------------------------------------------------
    def sent(self, path: str = CUSTOM_SEND, openid: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.path == path and c.errcode == 0
                and (openid is None or c.body.get("touser") == openid)]

    def texts(self, openid: str | None = None) -> list[str]:
        return [str(c.body.get("text", {}).get("content", "")) for c in self.sent(CUSTOM_SEND, openid)]

    async def wait_for_sent(self, count: int, path: str = CUSTOM_SEND, openid: str | None = None,
                            timeout: float = 10.0) -> list[Call]:
        async def enough() -> None:
            async with self.delivered:
                await self.delivered.wait_for(lambda: len(self.sent(path, openid)) >= count)

        await asyncio.wait_for(enough(), timeout)
        return self.sent(path, openid)

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(TOKEN_PATH, self._token)
        for path in (CUSTOM_SEND, TEMPLATE_SEND, MENU_CREATE):
            app.router.add_post(path, self._api)
        for path in (KF_LIST, TEMPLATE_LIST):
            app.router.add_get(path, self._api)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- handlers --------------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("grant_type") != "client_credential" or query.get("appid") != self.app_id:
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        if query.get("secret") != self.app_secret:
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret"})
        if not self.whitelisted:
            return web.json_response({"errcode": 40164, "errmsg": "invalid ip 127.0.0.1, not in whitelist"})
        token = f"token-{len(self.tokens_issued) + 1}"
        self.tokens_issued.append(token)
        # Like WeChat: a new token makes the previous one invalid.
        self._expired |= self._valid
        self._valid = {token}
        self.calls.append(Call(TOKEN_PATH, ""))
        return web.json_response({"access_token": token, "expires_in": 7200})

    async def _api(self, request: web.Request) -> web.Response:
        if self.stall_seconds:
            try:
                await asyncio.wait_for(self._released.wait(), self.stall_seconds)
            except TimeoutError:
                pass
        token = request.query.get("access_token", "")
        body: Any = {}
        if request.method == "POST":
            try:
                body = json.loads(await request.read())
            except ValueError:
                return web.json_response({"errcode": 47001, "errmsg": "data format error"})
            if not isinstance(body, dict):
                return web.json_response({"errcode": 47001, "errmsg": "data format error"})
        errcode = 0
        if token in self._expired:
            errcode = 42001
        elif token not in self._valid:
            errcode = 40001
        else:
            script = self._script[request.path]
            for entry in script:
                if entry[1] is None or entry[1] == body.get("touser"):
                    errcode = entry[0]
                    script.remove(entry)
                    break
            if not errcode:
                errcode = self._rules(request.path, body)
        self.calls.append(Call(request.path, token, body, errcode))
        async with self.delivered:
            self.delivered.notify_all()
        if errcode:
            return web.json_response({"errcode": errcode, "errmsg": f"fake error {errcode}"})
        if request.path == KF_LIST:
            return web.json_response({"kf_list": []})
        if request.path == TEMPLATE_LIST:
            return web.json_response({"template_list": [{"template_id": tid, "title": "status", "content": content}
                                                        for tid, content in self.templates.items()]})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    def _rules(self, path: str, body: dict[str, Any]) -> int:
        """WeChat's own refusals, which the bot must expect without being told."""
        if path in (CUSTOM_SEND, KF_LIST) and self.account == "unverified":
            return 48001
        if path in (TEMPLATE_SEND, TEMPLATE_LIST) and self.account != "verified_service":
            return 48001
        if path == CUSTOM_SEND:
            text = body.get("text", {}).get("content", "") if isinstance(body.get("text"), dict) else ""
            if len(str(text).encode("utf-8")) > MAX_TEXT_BYTES:
                return 45002
            return self._window_error(str(body.get("touser", "")))
        if path == TEMPLATE_SEND:
            return self._template_error(body)
        return 0


# --- the other direction: WeChat's servers posting a user's messages to our webhook ----------------------
def _window_kind(inner: str) -> str | None:
    """Which customer-service window a user's action opens: a message, or a click, follow or scan."""
    try:
        fields = xmltodict.parse(inner)["xml"]
    except Exception:
        return None
    if not isinstance(fields, dict):
        return None
    msg_type = str(fields.get("MsgType", ""))
    if msg_type == "event":
        event = str(fields.get("Event", "")).lower()
        return "click" if event in ("click", "subscribe", "scan") else None
    return "message" if msg_type else None


def url_signature(token: str, timestamp: str, nonce: str) -> str:
    # Written out here rather than imported, so a bug in the bot's signing cannot hide behind this one.
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


def cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


@dataclass
class Answer:
    status: int
    body: str
    # Parsed (and decrypted) passive reply: MsgType, Content, ToUserName…; empty for "success" and errors.
    reply: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.reply.get("Content", "")

    @property
    def kind(self) -> str:
        if self.status != 200:
            return f"http {self.status}"
        if self.body in ("success", ""):
            return "success"
        return self.reply.get("MsgType", "?")


@dataclass
class WeChatUser:
    """One follower, as WeChat's servers present them to the webhook: signed (and in safe mode, encrypted) XML."""

    http: Any  # aiohttp.ClientSession
    base_url: str
    token: str
    openid: str
    app_id: str = "wx-test-app"
    aes_key: str = ""
    account: str = "gh_test_account"
    clock: Any = None  # () -> float; time.time when None
    msg_id: int = 0
    created: int = 0
    # The fake API, told of each message as WeChat's servers would know it, so it can hold the windows itself.
    api: FakeWeChatApi | None = None
    # The last request exactly as sent, for a byte-identical retry.
    last_request: tuple[dict[str, str], bytes, dict[str, str]] | None = None

    def __post_init__(self) -> None:
        if not self.msg_id:
            self.msg_id = random.randrange(10**18, 9 * 10**18)
        if not self.created:
            self.created = int(self.now())

    def now(self) -> float:
        return float(self.clock()) if self.clock else time.time()

    @property
    def safe(self) -> bool:
        return bool(self.aes_key)

    # --- message builders (each call is a new delivery; re-post the string for a retry) -------------------
    def _xml(self, msg_type: str, fields: dict[str, str], *, with_msg_id: bool = True) -> str:
        self.created += 1
        parts = [f"<ToUserName>{cdata(self.account)}</ToUserName>",
                 f"<FromUserName>{cdata(self.openid)}</FromUserName>",
                 f"<CreateTime>{self.created}</CreateTime>", f"<MsgType>{cdata(msg_type)}</MsgType>"]
        parts += [f"<{name}>{cdata(value)}</{name}>" for name, value in fields.items()]
        if with_msg_id:
            self.msg_id += 1
            parts.append(f"<MsgId>{self.msg_id}</MsgId>")
        return "<xml>" + "".join(parts) + "</xml>"

    def text_xml(self, content: str) -> str:
        return self._xml("text", {"Content": content})

    def image_xml(self) -> str:
        return self._xml("image", {"PicUrl": "http://mmbiz.qpic.cn/fake.jpg", "MediaId": "media-1"})

    def voice_xml(self) -> str:
        return self._xml("voice", {"MediaId": "media-2", "Format": "amr"})

    def location_xml(self) -> str:
        return self._xml("location", {"Location_X": "39.9", "Location_Y": "116.4", "Scale": "15", "Label": "北京"})

    def link_xml(self) -> str:
        return self._xml("link", {"Title": "t", "Description": "d", "Url": "https://example.com/"})

    def event_xml(self, event: str, key: str | None = None) -> str:
        fields = {"Event": event}
        if key is not None:
            fields["EventKey"] = key
        return self._xml("event", fields, with_msg_id=False)

    # --- sending ----------------------------------------------------------------------------------------
    def _crypto(self) -> Any:
        return WeChatCrypto(self.token, self.aes_key, self.app_id)

    async def post(self, inner: str, *, nonce: str | None = None, timestamp: str | None = None,
                   signature: str | None = None, msg_signature: str | None = None,
                   body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        nonce = nonce or str(random.randrange(10**9, 10**10))
        timestamp = timestamp or str(int(self.now()))
        if signature is None:
            signature = url_signature(self.token, timestamp, nonce)
        params = {"timestamp": timestamp, "nonce": nonce, "signature": signature, "openid": self.openid}
        if self.safe:
            envelope = xmltodict.parse(self._crypto().encrypt_message(inner, nonce, timestamp))["xml"]
            params["encrypt_type"] = "aes"
            params["msg_signature"] = envelope["MsgSignature"] if msg_signature is None else msg_signature
            payload = body if body is not None else (
                f"<xml><ToUserName>{cdata(self.account)}</ToUserName>"
                f"<Encrypt>{cdata(envelope['Encrypt'])}</Encrypt></xml>").encode()
        else:
            payload = body if body is not None else inner.encode()
        if self.api is not None and inner:
            kind = _window_kind(inner)
            if kind:
                self.api.user_posted(self.openid, kind)
        if isinstance(payload, bytes):
            self.last_request = (params, payload, headers or {"Content-Type": "text/xml"})
        return await self._send(params, payload, headers or {"Content-Type": "text/xml"})

    async def _send(self, params: dict[str, str], payload: Any, headers: dict[str, str],
                    timeout: float | None = None) -> Answer:
        async with self.http.post(f"{self.base_url}/wechat", params=params, data=payload, headers=headers,
                                  timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.text()
            status = response.status
        return Answer(status, text, self._open(text) if status == 200 and text not in ("", "success") else {})

    async def repost(self) -> Answer:
        """WeChat's retry: the last request again, byte for byte (same timestamp, nonce, signatures, body)."""
        assert self.last_request is not None, "nothing posted yet"
        params, payload, headers = self.last_request
        return await self._send(params, payload, headers)

    async def deliver(self, inner: str, *, patience: float = 5.0, retries: int = 3) -> tuple[Answer, int]:
        """As WeChat delivers: a request that gets no answer within `patience` is dropped and re-posted
        byte-identically, up to `retries` times. Returns the answer that came back and how many posts it took."""
        attempts = 1
        try:
            return await asyncio.wait_for(self.post(inner), patience), attempts
        except TimeoutError:
            pass
        while True:
            attempts += 1
            try:
                return await asyncio.wait_for(self.repost(), patience), attempts
            except TimeoutError:
                if attempts > retries:
                    raise

    def _open(self, text: str) -> dict[str, str]:
        outer = xmltodict.parse(text)["xml"]
        if "Encrypt" in outer:
            assert self.safe, "an encrypted reply to a plaintext request"
            inner = self._crypto().decrypt_message(text, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"])
            outer = xmltodict.parse(inner)["xml"]
        else:
            assert not self.safe, "a plaintext reply to a safe-mode request"
        reply = {k: str(v) for k, v in outer.items()}
        # WeChat drops an oversized passive reply and shows the user "该公众号暂时无法提供服务".
        assert len(reply.get("Content", "").encode("utf-8")) <= MAX_TEXT_BYTES, "passive reply over 2048 bytes"
        return reply

    async def say(self, content: str) -> Answer:
        return await self.post(self.text_xml(content))

    async def click(self, key: str) -> Answer:
        return await self.post(self.event_xml("CLICK", key))

    async def subscribe(self, scene: str | None = None) -> Answer:
        return await self.post(self.event_xml("subscribe", f"qrscene_{scene}" if scene else None))

    async def unsubscribe(self) -> Answer:
        return await self.post(self.event_xml("unsubscribe"))
