"""A fake WeChat server API on a loopback port: access tokens, customer-service and template messages, the menu.

It issues numbered tokens, rejects unknown ones with 40001 and expired ones with 42001, records every call,
and misbehaves on cue: scripted error codes (40001, 42001, 45047…) for the next calls to a path, or a stall.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import xmltodict
from aiohttp import web
from wechatpy.crypto import WeChatCrypto

TOKEN_PATH = "/cgi-bin/token"
CUSTOM_SEND = "/cgi-bin/message/custom/send"
TEMPLATE_SEND = "/cgi-bin/message/template/send"
MENU_CREATE = "/cgi-bin/menu/create"


@dataclass
class Call:
    path: str
    token: str
    body: dict[str, Any] = field(default_factory=dict)
    errcode: int = 0


class FakeWeChatApi:
    def __init__(self, app_id: str = "wx-test-app", app_secret: str = "test-app-secret") -> None:
        self.app_id = app_id
        self.app_secret = app_secret
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
        try:
            body = json.loads(await request.read())
        except ValueError:
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
        self.calls.append(Call(request.path, token, body, errcode))
        async with self.delivered:
            self.delivered.notify_all()
        if errcode:
            return web.json_response({"errcode": errcode, "errmsg": f"fake error {errcode}"})
        return web.json_response({"errcode": 0, "errmsg": "ok"})


# --- the other direction: WeChat's servers posting a user's messages to our webhook ----------------------
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
        async with self.http.post(f"{self.base_url}/wechat", params=params, data=payload,
                                  headers=headers or {"Content-Type": "text/xml"}) as response:
            text = await response.text()
            status = response.status
        return Answer(status, text, self._open(text) if status == 200 and text not in ("", "success") else {})

    def _open(self, text: str) -> dict[str, str]:
        outer = xmltodict.parse(text)["xml"]
        if "Encrypt" in outer:
            assert self.safe, "an encrypted reply to a plaintext request"
            inner = self._crypto().decrypt_message(text, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"])
            outer = xmltodict.parse(inner)["xml"]
        else:
            assert not self.safe, "a plaintext reply to a safe-mode request"
        return {k: str(v) for k, v in outer.items()}

    async def say(self, content: str) -> Answer:
        return await self.post(self.text_xml(content))

    async def click(self, key: str) -> Answer:
        return await self.post(self.event_xml("CLICK", key))

    async def subscribe(self, scene: str | None = None) -> Answer:
        return await self.post(self.event_xml("subscribe", f"qrscene_{scene}" if scene else None))

    async def unsubscribe(self) -> Answer:
        return await self.post(self.event_xml("unsubscribe"))
