"""The WeChat channel over real WeChat XML, in plaintext and safe mode: Tencent's published crypto vectors, forged
signatures, replays, hostile bodies, triple delivery, native support handoff, the access token, the menu, the
5-second rule with a stalled registry, the customer-service windows, and verify → lookup → unbind end to end."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xmltodict
from aiohttp import web
from wechatpy.crypto import PrpCrypto, WeChatCrypto

from bot.channels.wechat import MENU_CHOICES, MENU_COMMANDS, WECHAT, WeChatChannel, create_menu
from bot.channels.wechat_api import WeChatApi, WeChatApiError
from bot.channels.wechat_crypto import NonceCache, SafeModeCodec, request_digest, signature_matches
from bot.channels.wechat_text import (
    clip,
    numbered_index,
    paginate,
    parse_template_fields,
    payload_text,
    split_fitting,
    template_data,
)
from bot.config import ConfigurationError
from bot.server import RunningServer, start_server
from dialogs.model import Msg, Reply
from tests.conftest import IN_CI, make_settings
from tests.fakes.fake_wechat_api import (
    CUSTOM_SEND,
    MENU_CREATE,
    TEMPLATE_SEND,
    FakeWeChatApi,
    WeChatUser,
    Window,
    url_signature,
)
from tests.test_budgets import redis_url_or_skip
from tests.test_postgres import pg_url  # noqa: F401 - the fixture

TOKEN = "test-token-123"
AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")

# Tencent's published sample (WXBizMsgCrypt Python Sample.py, cryptoDemo): token, key, AppID, the request's
# timestamp, nonce and msg_signature, and the <Encrypt> it carries. The expected plaintext is not printed by
# the sample; the string below is what that ciphertext decrypts to, as recorded by independent
# implementations' test suites (and its fields repeat the sample's own plaintext fields).
TENCENT_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
TENCENT_TOKEN = "spamtest"
TENCENT_APPID = "wx2c2769f8efd9abc2"
TENCENT_TIMESTAMP = "1409735669"
TENCENT_NONCE = "1320562132"
TENCENT_MSG_SIGNATURE = "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
TENCENT_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2Ld"
    "JF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5"
    "VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpX"
    "gCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu"
    "9GhglF2PE="
)
TENCENT_PLAINTEXT = (
    "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n"
    "<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n"
    "<CreateTime>1409735668</CreateTime>\n"
    "<MsgType><![CDATA[text]]></MsgType>\n"
    "<Content><![CDATA[abcdteT]]></Content>\n"
    "<MsgId>6054768590064713728</MsgId>\n"
    "</xml>"
)
# Tencent's Java sample (WXBizMsgCryptTest.testAesEncrypt): a fixed random prefix gives a fixed ciphertext.
JAVA_APPID = "wxb11529c136998cb6"
JAVA_RANDOM = "aaaabbbbccccdddd"
JAVA_PLAINTEXT = "我是中文abcd123"
JAVA_CIPHERTEXT = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="


@dataclass
class WxServer:
    server: RunningServer
    fake: FakeWeChatApi
    http: aiohttp.ClientSession
    token: str = TOKEN
    aes_key: str = ""
    app_id: str = "wx-test-app"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def channel(self) -> WeChatChannel:
        return self.server.app[WECHAT]

    @property
    def db_path(self) -> str:
        return str(self.server.runtime.settings.data_dir / "haoqing.sqlite3")

    def user(self, openid: str = "oTestUser000001", *, clock: Callable[[], float] | None = None) -> WeChatUser:
        return WeChatUser(self.http, self.url, self.token, openid, app_id=self.app_id, aes_key=self.aes_key,
                          clock=clock, api=self.fake)

    def stored(self, openid: str) -> str:
        """How users.external_id holds an openid: a keyed hash, never the openid itself."""
        return self.server.runtime.dispatcher.stored_id("wechat", openid)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Reads the server's database. It blocks the event loop, so it must not write: see `execute`."""
        with sqlite3.connect(self.db_path) as conn:
            return list(conn.execute(sql, args).fetchall())

    async def execute(self, sql: str, *args: Any) -> None:
        """Writes to the server's database from another thread. A write on the event loop's own thread would wait
        for the in-process server's open write transaction, which cannot end while the loop is blocked: sqlite3's
        5-second timeout then fails the test ("database is locked"), as it did under load."""
        def write() -> None:
            with sqlite3.connect(self.db_path, timeout=60) as conn:
                conn.execute(sql, args)

        await asyncio.to_thread(write)


async def start_wechat_server(settings: Any) -> RunningServer:
    server = await start_server(settings)
    assert WECHAT in server.app, "WECHAT_TOKEN mounts the channel"
    return server


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeWeChatApi]:
    fake = FakeWeChatApi()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def wx_factory(tmp_path: Path, fake_api: FakeWeChatApi,
                     http: aiohttp.ClientSession) -> AsyncIterator[Callable[..., Any]]:
    servers: list[RunningServer] = []

    async def make(*, safe: bool = False, token: str = TOKEN, app_id: str | None = None, aes_key: str | None = None,
                   sandbox: bool = False, **overrides: Any) -> WxServer:
        """`sandbox`: mount the embedded sandbox registry (slower to start); otherwise no registry answers."""
        key = (aes_key if aes_key is not None else AES_KEY) if safe else ""
        if not sandbox:
            overrides.setdefault("registry_url", "http://127.0.0.1:9")
        # The fake answers as the account type it plays; most tests play a verified service account.
        overrides.setdefault("wechat_account", fake_api.account)
        app = app_id or fake_api.app_id
        directory = tmp_path / f"srv{len(servers)}"
        overrides.setdefault("wechat_app_secret", fake_api.app_secret)
        settings = make_settings(directory, wechat_token=token, wechat_app_id=app, wechat_api_base_url=fake_api.url,
                                 wechat_aes_key=key, **overrides)
        server = await start_wechat_server(settings)
        servers.append(server)
        return WxServer(server, fake_api, http, token=token, aes_key=key, app_id=app)

    yield make
    for server in servers:
        await server.stop()


# --- known answers ------------------------------------------------------------------------------------------
def test_tencent_sample_decrypts_to_its_published_plaintext() -> None:
    codec = SafeModeCodec(TENCENT_TOKEN, TENCENT_KEY, TENCENT_APPID)
    assert codec.signature_ok(TENCENT_MSG_SIGNATURE, TENCENT_TIMESTAMP, TENCENT_NONCE, TENCENT_ENCRYPT)
    assert not codec.signature_ok(TENCENT_MSG_SIGNATURE, TENCENT_TIMESTAMP, "1320562133", TENCENT_ENCRYPT)
    assert codec.decrypt(TENCENT_ENCRYPT) == TENCENT_PLAINTEXT
    with pytest.raises(ValueError):
        SafeModeCodec(TENCENT_TOKEN, TENCENT_KEY, "wx-another-app").decrypt(TENCENT_ENCRYPT)


def test_tencent_java_sample_encrypts_to_its_published_ciphertext() -> None:
    class FixedRandom(PrpCrypto):  # type: ignore[misc]
        def get_random_string(self) -> str:
            return JAVA_RANDOM

    key = base64.b64decode(TENCENT_KEY + "=")
    assert FixedRandom(key).encrypt(JAVA_PLAINTEXT, JAVA_APPID).decode() == JAVA_CIPHERTEXT
    assert SafeModeCodec("pamtest", TENCENT_KEY, JAVA_APPID).decrypt(JAVA_CIPHERTEXT) == JAVA_PLAINTEXT


def test_signature_check_and_nonce_cache() -> None:
    good = url_signature(TOKEN, "1700000000", "42")
    assert signature_matches(good, TOKEN, "1700000000", "42")
    assert not signature_matches(good.upper(), TOKEN, "1700000000", "42")
    assert not signature_matches(good[:-1] + ("0" if good[-1] != "0" else "1"), TOKEN, "1700000000", "42")
    assert not signature_matches("", TOKEN, "1700000000", "42")
    assert not signature_matches("é" * 40, TOKEN, "1700000000", "42")
    cache = NonceCache(max_age=10, max_entries=3)
    one, other = request_digest(good, "", b"<xml>1</xml>"), request_digest(good, "", b"<xml>2</xml>")
    assert cache.check("100", "a", one, now=100) == "new"
    assert cache.check("100", "a", one, now=105) == "retry", "WeChat's byte-identical retry"
    assert cache.check("100", "a", other, now=105) == "replay", "another body under a seen nonce"
    assert cache.check("101", "a", other, now=105) == "new", "the nonce is only seen under the same timestamp"
    assert cache.check("100", "a", other, now=110) == "replay"
    assert cache.check("112", "b", one, now=112) == "new" and len(cache) == 2, "a bucket too old to pass is dropped"
    assert cache.check("112", "c", one, now=112) == "new" and not cache.overflowed
    assert cache.check("112", "d", one, now=112) == "new" and cache.overflowed and len(cache) == 3
    assert request_digest("a", "bc", b"") != request_digest("ab", "c", b""), "parts are length-prefixed"


def test_payload_rendering_numbers_only_the_live_choices_and_fits_wechat() -> None:
    payloads: list[dict[str, Any]] = [{"text": "a", "choices": [{"id": "x", "label": "X"}]}, {"text": "b"},
                {"text": "c", "choices": [{"id": "y", "label": "Y"}, {"id": "z", "label": "Z"}]}, {"text": "d"}]
    index = numbered_index(payloads)
    assert index == 2, "typed numbers map to the last offered choices, so only those are numbered"
    texts = [payload_text(p, numbered=i == index, hint="H") for i, p in enumerate(payloads)]
    assert texts == ["a", "b", "c\n\n1. Y\n2. Z\nH", "d"]
    assert split_fitting(["x" * 1700, "y" * 400, "z" * 400]) == 1
    assert split_fitting(["x" * 1500, "y" * 400, "z" * 400]) == 2
    assert split_fitting(["x" * 2500]) == 1 and len(clip("汉" * 1000, 2000, "…").encode()) <= 2000
    assert split_fitting(["a", "b"]) == 2


async def test_tencent_sample_over_http_round_trips_our_encrypted_reply(wx_factory: Any,
                                                                      fake_api: FakeWeChatApi) -> None:
    fake_api.app_id = TENCENT_APPID  # the API knows the app it serves, as WeChat does
    wx: WxServer = await wx_factory(safe=True, token=TENCENT_TOKEN, app_id=TENCENT_APPID, aes_key=TENCENT_KEY)
    wx.channel.clock = lambda: float(TENCENT_TIMESTAMP)
    body = ("<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>"
            f"<Encrypt><![CDATA[{TENCENT_ENCRYPT}]]></Encrypt></xml>")
    params = {"timestamp": TENCENT_TIMESTAMP, "nonce": TENCENT_NONCE, "encrypt_type": "aes",
              "msg_signature": TENCENT_MSG_SIGNATURE,
              "signature": url_signature(TENCENT_TOKEN, TENCENT_TIMESTAMP, TENCENT_NONCE)}
    async with wx.http.post(wx.url + "/wechat", params=params, data=body) as r:
        assert r.status == 200
        answer = await r.text()
    envelope = xmltodict.parse(answer)["xml"]
    assert set(envelope) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"} and envelope["TimeStamp"] == \
        TENCENT_TIMESTAMP
    # Opened with wechatpy's own verifier, not with the bot's code.
    inner = WeChatCrypto(TENCENT_TOKEN, TENCENT_KEY, TENCENT_APPID).decrypt_message(
        answer, envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"])
    reply = xmltodict.parse(inner)["xml"]
    assert reply["ToUserName"] == "oyORnuP8q7ou2gfYjqLzSIWZf0rs" and reply["FromUserName"] == "gh_10f6c3c3ac5a"
    assert reply["MsgType"] == "text" and "号清" in reply["Content"] and "\n1. 查询号码绑定" in reply["Content"]
    async with wx.http.post(wx.url + "/wechat", params=params, data=body) as r:
        assert r.status == 200, "the byte-identical request again is WeChat's retry"
        again = await r.text()
    inner = WeChatCrypto(TENCENT_TOKEN, TENCENT_KEY, TENCENT_APPID).decrypt_message(
        again, *(xmltodict.parse(again)["xml"][k] for k in ("MsgSignature", "TimeStamp", "Nonce")))
    assert xmltodict.parse(inner)["xml"]["Content"] == reply["Content"], "the retry gets the same answer"
    assert wx.query("SELECT count(*) FROM inbox") == [(1,)]
    async with wx.http.post(wx.url + "/wechat", params=params, data=body.replace("gh_10f6", "gh_20f6")) as r:
        assert r.status == 403, "the same nonce with another body is a replay"


# --- the webhook ------------------------------------------------------------------------------------------
async def test_get_echoes_echostr_only_when_signed_and_fresh(wx_factory: Any) -> None:
    wx: WxServer = await wx_factory()
    ts, nonce = str(int(time.time())), "987654321"
    params = {"timestamp": ts, "nonce": nonce, "signature": url_signature(TOKEN, ts, nonce), "echostr": "echo-1"}
    async with wx.http.get(wx.url + "/wechat", params=params) as r:
        assert r.status == 200 and await r.text() == "echo-1"
    async with wx.http.get(wx.url + "/wechat", params={**params, "signature": "0" * 40, "nonce": "1"}) as r:
        assert r.status == 403
    old = str(int(time.time()) - 301)
    async with wx.http.get(wx.url + "/wechat", params={**params, "timestamp": old, "nonce": "2",
                                                       "signature": url_signature(TOKEN, old, "2")}) as r:
        assert r.status == 403


@pytest.mark.parametrize("safe", [False, True], ids=["plaintext", "safe"])
async def test_every_kind_of_message(wx_factory: Any, safe: bool) -> None:
    wx: WxServer = await wx_factory(safe=safe)
    user = wx.user()
    answer = await user.subscribe(scene="poster42")
    assert answer.kind == "text" and answer.reply["ToUserName"] == user.openid, answer
    assert "号清" in answer.text and "1. 查询号码绑定" in answer.text and "回复序号即可选择" in answer.text
    answer = await user.say("1")  # the number of "查询号码绑定"
    assert "1. 同意并继续" in answer.text, answer.text
    # A menu click where that item is not on offer: the menu first, then the item.
    answer = await user.click("recycle")
    assert "11 位手机号码" in answer.text, answer.text
    answer = await user.click("lookup")
    assert "同意并继续" in answer.text and "没看懂" not in answer.text
    for build, kind in ((user.image_xml, "图片"), (user.voice_xml, "语音"), (user.location_xml, "位置"),
                        (user.link_xml, "链接")):
        answer = await user.post(build())
        assert answer.kind == "text" and f"暂时无法识别{kind}" in answer.text, answer
    assert (await user.post(user.event_xml("VIEW", "https://example.com/"))).kind == "success"
    assert (await user.unsubscribe()).kind == "success"
    active = "SELECT active FROM users WHERE channel = 'wechat' AND external_id = ?"
    assert wx.query(active, wx.stored(user.openid)) == [(0,)]
    assert (await user.subscribe()).kind == "text"
    assert wx.query(active, wx.stored(user.openid)) == [(1,)]


async def test_forged_signatures_and_replays_change_nothing(wx_factory: Any) -> None:
    wx: WxServer = await wx_factory(safe=True)
    user = wx.user()
    xml = user.text_xml("/start")
    now = int(time.time())
    assert (await user.post(xml, signature="0" * 40)).status == 403
    assert (await user.post(xml, signature="")).status == 403
    assert (await user.post(xml, msg_signature="1" * 40)).status == 403
    for ts in (now - 301, now + 120):
        assert (await user.post(xml, timestamp=str(ts))).status == 403, ts
    # A valid Encrypt from one request under another request's msg_signature.
    other = user.text_xml("/menu")
    assert (await user.post(other, body=_envelope(user, xml, "55", str(now)))).status == 403
    plaintext = WeChatUser(wx.http, wx.url, TOKEN, user.openid, app_id=wx.app_id)
    assert (await plaintext.post(xml)).status == 403, "with a key set, an unsealed body is not trusted"
    assert wx.query("SELECT count(*) FROM inbox") == [(0,)], "nothing refused may reach the inbox"
    first = await user.post(xml, nonce="777", timestamp=str(now))
    assert first.status == 200 and first.kind == "text"
    # Same nonce, same text, but sealed afresh (a new IV): not the byte-identical retry WeChat sends.
    assert (await user.post(xml, nonce="777", timestamp=str(now))).status == 403
    assert wx.query("SELECT count(*) FROM inbox") == [(1,)]


async def test_compatible_mode_trusts_only_the_sealed_copy(wx_factory: Any) -> None:
    keyed: WxServer = await wx_factory(safe=True)
    user = keyed.user()
    ts, nonce = str(int(time.time())), "24680"
    sealed = xmltodict.parse(WeChatCrypto(TOKEN, AES_KEY, keyed.app_id).encrypt_message(
        user.text_xml("/start"), nonce, ts))["xml"]
    # Compatible mode: plaintext fields beside <Encrypt>. The plaintext says /forget; the sealed copy /start.
    body = user.text_xml("/forget").replace("</xml>", f"<Encrypt><![CDATA[{sealed['Encrypt']}]]></Encrypt></xml>")
    answer = await user.post("", body=body.encode(), nonce=nonce, timestamp=ts, msg_signature=sealed["MsgSignature"])
    assert answer.kind == "text" and "号清" in answer.text and "删除" not in answer.text, answer
    # No key configured: a compatible-mode body is read from its plaintext fields and answered in plaintext.
    unkeyed: WxServer = await wx_factory()
    reader = unkeyed.user()
    body = reader.text_xml("/start").replace("</xml>", "<Encrypt><![CDATA[opaque]]></Encrypt></xml>")
    ts = str(int(time.time()))
    async with unkeyed.http.post(unkeyed.url + "/wechat", data=body.encode(), params={
            "timestamp": ts, "nonce": "13579", "signature": url_signature(TOKEN, ts, "13579"),
            "encrypt_type": "aes", "msg_signature": "0" * 40}) as r:
        assert r.status == 200
        reply = xmltodict.parse(await r.text())["xml"]
    assert "Encrypt" not in reply and "号清" in reply["Content"]


def _envelope(user: WeChatUser, inner: str, nonce: str, timestamp: str) -> bytes:
    sealed = xmltodict.parse(WeChatCrypto(user.token, user.aes_key, user.app_id).encrypt_message(
        inner, nonce, timestamp))["xml"]
    return f"<xml><ToUserName>x</ToUserName><Encrypt><![CDATA[{sealed['Encrypt']}]]></Encrypt></xml>".encode()


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<xml><ToUserName>gh</ToUserName><FromUserName>oTestUser000001</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&lol4;</Content><MsgId>1</MsgId></xml>"""
XXE = """<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>gh</ToUserName><FromUserName>oTestUser000001</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&xxe;</Content><MsgId>2</MsgId></xml>"""


async def test_hostile_bodies_get_4xx_not_5xx(wx_factory: Any, log_capture: Any) -> None:
    wx: WxServer = await wx_factory()
    user = wx.user()
    for body in (BILLION_LAUGHS, XXE, "<xml><unclosed>", "<notxml/>", "", "<xml><MsgType>text</MsgType></xml>",
                 "<xml><ToUserName>gh</ToUserName><FromUserName>bad id!</FromUserName><CreateTime>1</CreateTime>"
                 "<MsgType>text</MsgType><Content>x</Content><MsgId>3</MsgId></xml>"):
        answer = await user.post("", body=body.encode())
        assert answer.status == 400, (body[:40], answer)
    big = user.text_xml("x" * (64 * 1024))
    assert (await user.post(big)).status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"<!-- padding padding padding -->" * 32

    assert (await user.post("", body=chunks(), headers={"Content-Type": "text/xml"})).status == 413  # type: ignore[arg-type]
    assert "root:x:0:0" not in log_capture.getvalue()
    # In safe mode the entity check applies to what the envelope decrypts to, too.
    safe: WxServer = await wx_factory(safe=True)
    safe_user = safe.user()
    assert (await safe_user.post(XXE)).status == 400
    assert (await safe_user.post(BILLION_LAUGHS)).status == 400
    wrong_app = WeChatUser(wx.http, safe.url, TOKEN, "oTestUser000001", app_id="wx-someone-else", aes_key=AES_KEY)
    assert (await wrong_app.say("hi")).status == 400
    assert safe.query("SELECT count(*) FROM inbox") == [(0,)]


async def test_triple_delivery_of_one_msgid_has_one_effect(wx_factory: Any) -> None:
    wx: WxServer = await wx_factory()
    demo = {"phone": "13912345678"}
    user = wx.user()
    await user.subscribe()
    await user.click("lookup")
    await user.say("同意并继续")
    phone_xml = user.text_xml(demo["phone"])
    answers = await asyncio.gather(*(user.post(phone_xml) for _ in range(3)))
    assert {a.status for a in answers} == {200}
    assert len({a.text for a in answers}) == 1 and "验证码" in answers[0].text, answers
    again = await user.post(phone_xml)
    assert again.text == answers[0].text
    # Past the channel's own memory of the delivery (another worker, a restart): the inbox answers.
    wx.channel._deliveries.clear()
    assert (await user.post(phone_xml)).text == answers[0].text
    rt = wx.server.runtime
    assert rt.sandbox_sms is not None and len(rt.sandbox_sms.sent(demo["phone"])) == 1
    msg_id = phone_xml.split("<MsgId>")[1].split("<")[0]
    key = f"m:{wx.stored(user.openid)}:{msg_id}"
    assert wx.query("SELECT count(*) FROM inbox WHERE dedupe_key = ?", key) == [(1,)]
    assert wx.query("SELECT count(*) FROM outbox o JOIN inbox i ON o.inbox_id = i.id WHERE i.dedupe_key = ?",
                    key) == [(1,)]
    assert demo["phone"] not in str(wx.query("SELECT payload FROM outbox"))


async def test_native_support_hands_over_to_wechat_agents(wx_factory: Any) -> None:
    wx: WxServer = await wx_factory(wechat_native_support=True)
    user = wx.user()
    for answer in (await user.say("人工"), await user.click("human")):
        assert answer.kind == "transfer_customer_service", answer
        assert answer.reply["ToUserName"] == user.openid
    plain: WxServer = await wx_factory()
    answer = await plain.user().say("人工")
    assert answer.kind == "text" and "人工" in answer.text


# --- the server API ---------------------------------------------------------------------------------------
async def test_access_token_is_fetched_once_and_refreshed_once_on_rejection(fake_api: FakeWeChatApi) -> None:
    api = WeChatApi(fake_api.url, fake_api.app_id, fake_api.app_secret)
    # Each send to a user who just wrote, so the fake's customer-service windows let every one through.
    real_check = fake_api._window_error
    fake_api._window_error = lambda openid: 0  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(api.send_text("oTestUser000001", f"m{i}") for i in range(10)))
        assert fake_api.tokens_issued == ["token-1"], "concurrent callers share one fetch"
        fake_api.fail_next(CUSTOM_SEND, 40001)
        await api.send_text("oTestUser000001", "after 40001")
        assert len(fake_api.tokens_issued) == 2
        fake_api.expire_tokens()
        await api.send_text("oTestUser000001", "after 42001")
        assert len(fake_api.tokens_issued) == 3
        assert [c.errcode for c in fake_api.calls if c.path == CUSTOM_SEND][-4:] == [40001, 0, 42001, 0]
        fake_api.fail_next(CUSTOM_SEND, 40001, times=2)
        with pytest.raises(WeChatApiError) as refused:
            await api.send_text("oTestUser000001", "rejected twice")
        assert refused.value.errcode == 40001 and len(fake_api.tokens_issued) == 4, "one refresh, then give up"
        fake_api.fail_next(CUSTOM_SEND, 45047)
        with pytest.raises(WeChatApiError) as window:
            await api.send_text("oTestUser000001", "out of window")
        assert window.value.errcode == 45047 and len(fake_api.tokens_issued) == 4
    finally:
        fake_api._window_error = real_check  # type: ignore[method-assign]
        await api.close()
    assert len(fake_api.texts()) == 12


async def test_create_menu_maps_clicks_to_dialog_choices(fake_api: FakeWeChatApi, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, wechat_token=TOKEN, wechat_app_id=fake_api.app_id,
                             wechat_app_secret=fake_api.app_secret, wechat_api_base_url=fake_api.url)
    assert (await create_menu(settings))["errcode"] == 0
    [call] = fake_api.sent(MENU_CREATE)
    buttons = call.body["button"]
    assert 1 <= len(buttons) <= 3
    keys = []
    for button in buttons:
        assert len(button["name"].encode()) <= 16
        for sub in button.get("sub_button", []):
            assert len(sub["name"].encode()) <= 60 and sub["type"] == "click"
            keys.append(sub["key"])
        if "key" in button:
            keys.append(button["key"])
    assert keys and all(k in MENU_CHOICES or k in MENU_COMMANDS for k in keys), keys


# --- flows ------------------------------------------------------------------------------------------------
@pytest.fixture
async def stalled_registry() -> AsyncIterator[dict[str, Any]]:
    """A registry that takes 8 s to fail every call ("answered": how many calls it has answered so far)."""
    state: dict[str, Any] = {"calls": 0, "answered": 0}

    async def slow(_request: web.Request) -> web.Response:
        state["calls"] += 1
        await asyncio.sleep(8)
        state["answered"] += 1
        return web.json_response({"error": "stalled"}, status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


async def test_stalled_registry_gets_a_passive_answer_in_time_and_the_result_later(
        wx_factory: Any, stalled_registry: dict[str, Any]) -> None:
    wx: WxServer = await wx_factory(registry_url=stalled_registry["url"], registry_timeout=10,
                                    wechat_registry_timeout=10)
    # Alice's result goes out by customer-service message; WeChat refuses Bob's (45047), so it waits for him.
    alice, bob = wx.user("oAlice00000001"), wx.user("oBob0000000001")
    wx.fake.fail_next(CUSTOM_SEND, 45047, openid=bob.openid)
    xml = {}
    for user in (alice, bob):
        await user.subscribe()
        assert "11 位手机号码" in (await user.click("recycle")).text
        xml[user.openid] = user.text_xml("13912345678")

    async def timed(user: WeChatUser, delay: float) -> tuple[int, Any]:
        await asyncio.sleep(delay)
        answer = await user.post(xml[user.openid])
        return stalled_registry["answered"], answer

    # Each delivery, and for Alice a WeChat retry a second later (as if our first answer had been lost). Each gets
    # the passive "processing" answer while the registry has answered nothing yet: the answer does not wait for
    # the step. How long it may wait is the setting (WeChat drops an answer after 5 s); no wall clock is asserted.
    assert wx.server.runtime.settings.wechat_passive_seconds < 5
    results = await asyncio.gather(timed(alice, 0), timed(bob, 0), timed(alice, 1.0))
    for answered, answer in results:
        assert answered == 0 and answer.kind == "text" and "正在处理" in answer.text, (answered, answer)
    [call] = await wx.fake.wait_for_sent(1, openid=alice.openid, timeout=12)
    assert "号码绑定查询平台暂时无法访问" in call.body["text"]["content"]
    assert "1. 查询号码绑定" in call.body["text"]["content"], "the menu that follows is numbered too"
    assert stalled_registry["calls"] == 2, "the retry joined the running step"
    # A retry after the result went out: nothing left to say.
    assert (await alice.post(xml[alice.openid])).kind == "success"
    assert len(wx.fake.sent(CUSTOM_SEND, alice.openid)) == 1
    # Bob's result is still pending; WeChat's retry of his message gets it as the passive answer.
    while not any(c.errcode == 45047 for c in wx.fake.calls):
        await asyncio.sleep(0.05)
    late = await bob.post(xml[bob.openid])
    assert late.kind == "text" and "号码绑定查询平台暂时无法访问" in late.text, late
    assert wx.fake.sent(CUSTOM_SEND, bob.openid) == []
    await wx.channel.sender.flush()
    assert wx.fake.sent(CUSTOM_SEND, bob.openid) == [], "what went passively is not sent again"


async def _push(wx: WxServer, openid: str, count: int) -> None:
    [(user_id,)] = wx.query("SELECT id FROM users WHERE channel = 'wechat' AND external_id = ?", wx.stored(openid))
    for _ in range(count):
        await wx.server.runtime.dispatcher.push(user_id, [Reply(Msg("settings.reminders_now_on"))],
                                                channel="wechat")


def _pending(wx: WxServer, openid: str) -> int:
    return int(wx.query("SELECT count(*) FROM outbox o JOIN users u ON u.id = o.user_id "
                        "WHERE u.external_id = ? AND o.status = 'pending'", wx.stored(openid))[0][0])


async def test_customer_service_windows(wx_factory: Any) -> None:
    wx: WxServer = await wx_factory()
    sender = wx.channel.sender
    fake = wx.fake

    # A message opens 5 within 48 h; the rest waits for the next message.
    talker = wx.user("oTalker0000001")
    await talker.say("/start")
    await _push(wx, talker.openid, 7)
    await sender.flush()
    assert len(fake.texts(talker.openid)) == 5 and _pending(wx, talker.openid) == 2
    await sender.flush()
    assert len(fake.texts(talker.openid)) == 5, "no more until the user writes again"
    await talker.say("/menu")
    await fake.wait_for_sent(7, openid=talker.openid, timeout=5)
    assert _pending(wx, talker.openid) == 0

    # A follow opens 3 within a minute; after that minute only a template message can carry a push.
    follower = wx.user("oFollower00001")
    await follower.subscribe()
    await _push(wx, follower.openid, 5)
    await sender.flush()
    assert len(fake.texts(follower.openid)) == 3 and _pending(wx, follower.openid) == 2
    await wx.execute("UPDATE inbox SET received_at = datetime(received_at, '-2 minutes') WHERE dedupe_key LIKE ?",
                     f"c:{wx.stored(follower.openid)}:%")
    sender.parked.clear()  # re-examine now, not at the next inbound message
    await sender.flush()
    assert len(fake.texts(follower.openid)) == 3 and _pending(wx, follower.openid) == 2
    sender.template_id = "tpl-status"
    sender.caps.templates, sender.caps.template_fields = True, {"thing1": "summary", "time2": "time"}
    sender.parked.clear()
    await sender.flush()
    templates = fake.sent(TEMPLATE_SEND, follower.openid)
    assert len(templates) == 2 and _pending(wx, follower.openid) == 0, fake.calls[-3:]
    data = templates[0].body["data"]
    assert templates[0].body["template_id"] == "tpl-status" and set(data) == {"thing1", "time2"}
    assert data["thing1"]["value"] == "提醒已开启。" and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d",
                                                                 data["time2"]["value"])
    sender.template_id = ""

    # WeChat's own word wins: 45047 leaves the rows pending until the user's next message.
    quiet = wx.user("oQuiet00000001")
    await quiet.say("/start")
    fake.fail_next(CUSTOM_SEND, 45047)
    await _push(wx, quiet.openid, 2)
    await sender.flush()
    assert fake.texts(quiet.openid) == [] and _pending(wx, quiet.openid) == 2
    await sender.flush()
    assert len([c for c in fake.calls if c.body.get("touser") == quiet.openid]) == 1, "no hammering"
    await quiet.say("/menu")
    await fake.wait_for_sent(2, openid=quiet.openid, timeout=5)

    # 43004: they unfollowed without our noticing. Their messages wait for a re-follow instead of failing.
    gone = wx.user("oGone000000001")
    await gone.say("/start")
    fake.fail_next(CUSTOM_SEND, 43004, openid=gone.openid)
    await _push(wx, gone.openid, 1)
    await sender.flush()
    assert wx.query("SELECT active FROM users WHERE external_id = ?", wx.stored(gone.openid)) == [(0,)]
    assert _pending(wx, gone.openid) == 1
    await gone.subscribe()
    [call] = await fake.wait_for_sent(1, openid=gone.openid, timeout=5)
    assert call.body["text"]["content"] == "提醒已开启。"


async def _number_of(wx: WxServer, user: WeChatUser, choice: str) -> str:
    [(data,)] = wx.query("SELECT c.data FROM conversations c JOIN users u ON u.id = c.user_id "
                         "WHERE u.external_id = ?", wx.stored(user.openid))
    offered = [item[0] for item in json.loads(data)["_offered"]]
    assert choice in offered, (choice, offered)
    return str(offered.index(choice) + 1)


async def test_verify_lookup_unbind_end_to_end_over_wechat(wx_factory: Any, log_capture: Any) -> None:
    wx: WxServer = await wx_factory(sandbox=True, sandbox_processing_seconds=0.5, sandbox_done_seconds=1.0,
                                    unbind_poll_seconds=0.5)
    async with wx.http.get(wx.url + "/sandbox/registry/numbers", params={"kind": "recycled"}) as r:
        demo = (await r.json())[0]
    user = wx.user("oHolder0000001")
    await user.subscribe()
    assert "同意并继续" in (await user.click("lookup")).text
    assert "11 位手机号码" in (await user.say("1")).text
    assert "验证码" in (await user.say(demo["phone"])).text
    sms = wx.server.runtime.sandbox_sms
    assert sms is not None
    code = re.search(r"\b(\d{6})\b", sms.sent(demo["phone"])[-1]["text"]).group(1)  # type: ignore[union-attr]
    found = await user.say(code)
    masked = demo["phone"][:3] + "****" + demo["phone"][-4:]
    assert f"号码：{masked}" in found.text and "前任机主期间绑定" in found.text, found.text
    assert "解绑前任账号" in found.text
    assert "姓名" in (await user.say("解绑前任账号")).text  # the label typed as text picks the choice
    await user.say(demo["name"])
    checked = await user.say(demo["id_number"])
    assert f"号码：{masked}" in checked.text and "开户时间" in checked.text, checked.text
    listed = await user.say(await _number_of(wx, user, "confirm"))
    assert re.search(r"· .+（\d{4}-\d{2}）", listed.text), listed.text
    # The list above the button is what is filed: 一键解绑 needs no second screen.
    done = await user.say(await _number_of(wx, user, "all"))
    reference = re.search(r"编号 (HQ\d{8}-[A-Z0-9]{6})", done.text)
    assert reference and "5 个工作日" in done.text, done.text

    deadline = time.monotonic() + 15
    while not any("已办结" in t for t in wx.fake.texts(user.openid)):
        assert time.monotonic() < deadline, wx.fake.texts(user.openid)
        await asyncio.sleep(0.2)
    assert all(reference.group(1) in t for t in wx.fake.texts(user.openid))
    logs = log_capture.getvalue()
    for secret in (demo["phone"], demo["id_number"], demo["name"]):
        assert secret not in logs
        assert secret not in json.dumps([c.body for c in wx.fake.calls], ensure_ascii=False)


@pytest.fixture
def redis_url() -> str:
    import redis

    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {url}: {exc}")
        pytest.skip(f"Redis is not reachable: {exc}")
    return url


async def test_a_replay_to_another_worker_is_refused_through_redis(wx_factory: Callable[..., Any],
                                                                   redis_url: str) -> None:
    first = await wx_factory(redis_url=redis_url)
    second = await wx_factory(redis_url=redis_url)
    nonce, timestamp = str(secrets.randbelow(10**9) + 10**9), str(int(time.time()))
    answer = await first.user().post(first.user().text_xml("/start"), nonce=nonce, timestamp=timestamp)
    assert answer.status == 200
    replay = await second.user().post(second.user().text_xml("/start"), nonce=nonce, timestamp=timestamp)
    assert replay.status == 403
    fresh = await second.user().post(second.user().text_xml("/start"))
    assert fresh.status == 200


# --- WeChat as it really behaves (issue 10) ------------------------------------------------------------------
def _key_rows(wx: WxServer, key: str) -> int:
    return int(wx.query("SELECT count(*) FROM inbox WHERE dedupe_key = ?", key)[0][0])


@pytest.mark.parametrize("safe", [False, True], ids=["plaintext", "safe"])
async def test_an_identical_retry_joins_the_running_step_and_gets_its_answer(
        wx_factory: Any, stalled_registry: dict[str, Any], safe: bool) -> None:
    # The registry stalls; the WeChat budget (wechat_registry_timeout, 3 s by default) ends the step inside
    # the passive reply. WeChat, hearing nothing within its patience, re-posts the very same bytes.
    wx: WxServer = await wx_factory(safe=safe, registry_url=stalled_registry["url"], registry_timeout=10)
    user = wx.user("oRetry00000001")
    await user.subscribe()
    assert "11 位手机号码" in (await user.click("recycle")).text
    xml = user.text_xml("13912345678")
    answer, attempts = await user.deliver(xml, patience=2.0)
    assert attempts >= 2, "the first post was abandoned and retried byte for byte"
    assert answer.kind == "text" and "号码绑定查询平台暂时无法访问" in answer.text, answer
    assert stalled_registry["calls"] == 1, "the retry joined the step; it did not run it again"
    again = await user.repost()
    assert again.status == 200 and again.text == answer.text, "a later identical retry gets the same answer"
    msg_id = xml.split("<MsgId>")[1].split("<")[0]
    assert _key_rows(wx, f"m:{wx.stored(user.openid)}:{msg_id}") == 1
    assert wx.fake.sent(CUSTOM_SEND, user.openid) == [], "the answer went passively, not again by customer service"
    # The same nonce under another body is still a replay.
    assert user.last_request is not None
    params, _payload, headers = user.last_request
    other = user.text_xml("/menu") if not safe else None
    body = other.encode() if other is not None else _envelope(user, user.text_xml("/menu"), params["nonce"],
                                                               params["timestamp"])
    async with wx.http.post(f"{wx.url}/wechat", params=params, data=body, headers=headers) as r:
        assert r.status == 403


async def test_a_retry_to_another_worker_is_recognised_through_redis(wx_factory: Callable[..., Any],
                                                                   redis_url: str) -> None:
    first = await wx_factory(redis_url=redis_url)
    second = await wx_factory(redis_url=redis_url)
    user = first.user("oRedis00000001")
    answer = await user.say("/start")
    assert answer.status == 200
    assert user.last_request is not None
    params, payload, headers = user.last_request
    async with first.http.post(f"{second.url}/wechat", params=params, data=payload, headers=headers) as r:
        assert r.status == 200, "WeChat's identical retry may land on another worker"
    async with first.http.post(f"{second.url}/wechat", params=params, data=payload.replace(b"/start", b"/menu"),
                               headers=headers) as r:
        assert r.status == 403, "another body under the same nonce is a replay there too"


async def test_two_users_with_the_same_msgid_each_get_their_own_answer(
        wx_factory: Any, stalled_registry: dict[str, Any]) -> None:
    wx: WxServer = await wx_factory(registry_url=stalled_registry["url"], registry_timeout=10,
                                    wechat_registry_timeout=1.0)
    alice, bob = wx.user("oAliceSame0001"), wx.user("oBobSame000001")
    for user in (alice, bob):
        await user.subscribe()
    await alice.click("recycle")
    alice.msg_id = bob.msg_id = 6054768590064713000  # WeChat's MsgIds collide across users (WxJava #333)
    alice_xml, bob_xml = alice.text_xml("13912345678"), bob.text_xml("/help")
    assert alice_xml.split("<MsgId>")[1] == bob_xml.split("<MsgId>")[1]

    async def bob_later() -> Any:
        await asyncio.sleep(0.3)  # while Alice's step is still waiting on the registry
        return await bob.post(bob_xml)

    first, second = await asyncio.gather(alice.post(alice_xml), bob_later())
    assert "号码绑定查询平台暂时无法访问" in first.text and first.reply["ToUserName"] == alice.openid
    assert second.reply["ToUserName"] == bob.openid and "使用帮助" in second.text, second
    assert "139" not in second.text and "暂时无法访问" not in second.text, "nothing of Alice's reaches Bob"
    msg_id = alice_xml.split("<MsgId>")[1].split("<")[0]
    assert _key_rows(wx, f"m:{wx.stored(alice.openid)}:{msg_id}") == 1
    assert _key_rows(wx, f"m:{wx.stored(bob.openid)}:{msg_id}") == 1


async def _wait_pending_reply(wx: WxServer, openid: str) -> None:
    for _ in range(200):
        if wx.query("SELECT count(*) FROM outbox o JOIN users u ON u.id = o.user_id WHERE u.external_id = ? "
                    "AND o.kind = 'reply' AND o.status = 'pending'", wx.stored(openid))[0][0]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the deferred result never reached the outbox")


PUSH_PROMISES = ("马上发给您", "通知您", "提醒您", "主动通知")


async def test_unverified_account_never_promises_a_push_and_the_next_message_collects_the_result(
        wx_factory: Any, fake_api: FakeWeChatApi, stalled_registry: dict[str, Any]) -> None:
    fake_api.account = "unverified"
    # The step outlasts the passive reply (1.5 s here) and ends at the registry budget (2 s): deferred.
    wx: WxServer = await wx_factory(registry_url=stalled_registry["url"], registry_timeout=10,
                                    wechat_registry_timeout=2.0, wechat_passive_seconds=1.5)
    user = wx.user("oUnverified001")
    answers = [await user.subscribe(), await user.click("recycle")]
    working = await user.say("13912345678")
    answers.append(working)
    assert "回复任意内容" in working.text, working.text
    # The next message while the step still runs joins it and is answered with its result.
    collected = await user.say("好的")
    answers.append(collected)
    assert "号码绑定查询平台暂时无法访问" in collected.text, collected.text
    # Again, but this time the result is already waiting in the outbox when the user writes.
    await user.click("recycle")
    assert "回复任意内容" in (await user.say("13912345678")).text
    await _wait_pending_reply(wx, user.openid)
    later = await user.say("1")
    answers.append(later)
    assert "号码绑定查询平台暂时无法访问" in later.text, "the result, not choice 1 of a menu never seen"
    assert stalled_registry["calls"] == 2
    plan = await user.click("plan")
    answers.append(plan)
    assert "无法主动给您发提醒" in plan.text, plan.text
    for answer in answers:
        assert not any(promise in answer.text for promise in PUSH_PROMISES), answer.text
    # Reminders and broadcasts cannot reach the user: reported as unreachable, never tried.
    await _push(wx, user.openid, 2)
    await wx.channel.sender.flush()
    assert wx.query("SELECT status, count(*) FROM outbox WHERE kind = 'push' GROUP BY status") == [("unreachable", 2)]
    assert [c for c in fake_api.calls if c.path in (CUSTOM_SEND, TEMPLATE_SEND)] == []
    assert "查询号码绑定" in (await user.say("/menu")).text, "the user is back to ordinary steps"


@pytest.mark.parametrize(("setup", "overrides", "setting"), [
    ("unverified", {"wechat_account": "verified_service"}, "WECHAT_ACCOUNT"),
    ("unverified", {"wechat_account": "verified_subscription"}, "WECHAT_ACCOUNT"),
    ("blocked_ip", {}, "IP whitelist"),
    ("", {"wechat_app_secret": "not-the-secret"}, "WECHAT_APP_SECRET"),
    ("", {"wechat_account": "verified_subscription", "wechat_template_id": "tpl-status",
          "wechat_template_fields": "thing1=summary"}, "WECHAT_TEMPLATE_ID"),
    ("verified_subscription", {"wechat_account": "verified_service", "wechat_template_id": "tpl-status",
                               "wechat_template_fields": "thing1=summary"}, "WECHAT_TEMPLATE_ID"),
    ("", {"wechat_template_id": "tpl-nope", "wechat_template_fields": "thing1=summary"}, "WECHAT_TEMPLATE_ID"),
    ("", {"wechat_template_id": "tpl-status", "wechat_template_fields": "thing9=summary"},
     "WECHAT_TEMPLATE_FIELDS"),
    ("", {"wechat_template_id": "tpl-status"}, "WECHAT_TEMPLATE_FIELDS"),
    ("", {"wechat_template_id": "tpl-status", "wechat_template_fields": "thing1=secrets"}, "WECHAT_TEMPLATE_FIELDS"),
    ("", {"wechat_account": "verified_service", "wechat_app_secret": ""}, "WECHAT_APP_SECRET"),
], ids=["unverified-as-service", "unverified-as-subscription", "ip-whitelist", "app-secret", "template-on-sub",
        "template-48001", "template-unknown", "template-field-unknown", "template-fields-missing",
        "template-value-unknown", "no-secret"])
async def test_each_misconfiguration_stops_the_start_naming_the_setting(
        wx_factory: Any, fake_api: FakeWeChatApi, log_capture: Any, setup: str, overrides: dict[str, Any],
        setting: str) -> None:
    if setup == "blocked_ip":
        fake_api.whitelisted = False
    elif setup:
        fake_api.account = setup
    overrides.setdefault("wechat_account", "verified_service")
    with pytest.raises(ConfigurationError, match=re.escape(setting)):
        await wx_factory(**overrides)
    assert fake_api.sent(CUSTOM_SEND) == [] and fake_api.sent(TEMPLATE_SEND) == []
    # The failed start stopped what its earlier steps started: no scheduler or sender loop outlives it (the process
    # would wait on them at exit instead of saying which setting to fix).
    assert not [t for t in asyncio.all_tasks() if "run_forever" in repr(t.get_coro())]


async def test_a_configuration_error_at_run_time_is_reported_once_and_not_retried(
        wx_factory: Any, fake_api: FakeWeChatApi, log_capture: Any) -> None:
    wx: WxServer = await wx_factory()
    user = wx.user("oDowngraded001")
    await user.say("/start")
    fake_api.account = "unverified"  # the account's verification lapsed while the bot runs
    await _push(wx, user.openid, 3)
    for _ in range(3):
        await wx.channel.sender.flush()
        wx.channel.sender.parked.clear()
    calls = [c for c in fake_api.calls if c.path == CUSTOM_SEND]
    assert [c.errcode for c in calls] == [48001], "one try, then no more"
    assert wx.query("SELECT status, count(*) FROM outbox WHERE kind = 'push' GROUP BY status") == [("unreachable", 3)]
    critical = [line for line in log_capture.getvalue().splitlines() if "configuration error" in line]
    assert len(critical) == 1 and "WECHAT_ACCOUNT" in critical[0]
    # From now on the bot stops promising a customer-service follow-up.
    assert "wechat" in wx.server.runtime.dispatcher.no_push_channels


async def test_customer_service_windows_are_the_fakes_own_rule(fake_api: FakeWeChatApi) -> None:
    now = [1_000_000.0]
    fake_api.clock = lambda: now[0]
    api = WeChatApi(fake_api.url, fake_api.app_id, fake_api.app_secret)
    try:
        with pytest.raises(WeChatApiError) as closed:
            await api.send_text("oNever00000001", "x")
        assert closed.value.errcode == 45015, "no window without a message from the user"
        fake_api.user_posted("oWriter0000001", "message")
        for _ in range(5):
            await api.send_text("oWriter0000001", "x")
        with pytest.raises(WeChatApiError) as used:
            await api.send_text("oWriter0000001", "x")
        assert used.value.errcode == 45047
        fake_api.user_posted("oClicker000001", "click")
        now[0] += 61
        with pytest.raises(WeChatApiError) as late:
            await api.send_text("oClicker000001", "x")
        assert late.value.errcode == 45015, "a click opens a minute only"
        fake_api.windows["oBig0000000001"]["message"] = Window(now[0])
        with pytest.raises(WeChatApiError) as big:
            await api.send_text("oBig0000000001", "汉" * 700)
        assert big.value.errcode == 45002
    finally:
        await api.close()


def test_long_texts_page_at_line_ends_within_wechats_size() -> None:
    lines = [f"{n}. 平台{n}（2019-0{n % 9 + 1}）" for n in range(1, 120)]
    text = "\n".join(lines)
    pages = paginate(text, 1880)
    assert len(pages) > 1 and all(len(p.encode()) <= 1880 for p in pages)
    assert "\n".join(pages) == text, "nothing lost, no line split"
    assert paginate("x" * 5000, 2000) == ["x" * 2000, "x" * 2000, "x" * 1000]
    assert paginate("", 10) == [""]


async def test_a_long_answer_comes_in_pages_the_user_asks_for(wx_factory: Any) -> None:
    wx: WxServer = await wx_factory()
    user = wx.user("oPager00000001")
    await user.subscribe()
    choices = [{"id": f"p:{n}", "label": f"平台第{n}号（2019-01）"} for n in range(1, 101)]
    first = wx.channel._passive_text(user.openid, [{"text": "请选择：", "choices": choices}], "zh_CN")
    assert len(first.encode()) <= 2048 and "回复 0 查看更多" in first and "1. 平台第1号" in first
    seen = [first]
    while "回复 0 查看更多" in seen[-1]:
        page = await user.say("0")
        assert page.kind == "text" and len(page.text.encode()) <= 2048
        seen.append(page.text)
    joined = "\n".join(seen)
    assert all(f"{n}. 平台第{n}号" in joined for n in range(1, 101)), "every numbered choice is shown"
    assert "回复序号即可选择" in seen[-1]
    # Paging over, "0" is an ordinary message again.
    assert "回复 0 查看更多" not in (await user.say("0")).text


async def test_a_push_over_wechats_size_goes_as_pages_not_cut(wx_factory: Any, fake_api: FakeWeChatApi) -> None:
    wx: WxServer = await wx_factory()
    user = wx.user("oLongPush00001")
    await user.say("/start")
    [(user_id,)] = wx.query("SELECT id FROM users WHERE external_id = ?", wx.stored(user.openid))
    lines = "\n".join(f"· 平台第{n}号（2019-01）" for n in range(1, 90))
    await wx.server.runtime.dispatcher.push(user_id, [Reply(Msg("lookup.previous", {"count": 89, "lines": lines}))],
                                            channel="wechat")
    await wx.channel.sender.flush()
    texts = fake_api.texts(user.openid)
    assert len(texts) >= 2 and all(len(t.encode()) <= 2048 for t in texts), [len(t.encode()) for t in texts]
    assert "……（内容过长" not in "".join(texts) and all(f"平台第{n}号" in "".join(texts) for n in range(1, 90))


def test_template_fields_are_mapped_and_cut_to_each_types_limit() -> None:
    mapping = parse_template_fields("thing1=summary, character_string2=detail,time3=time,phrase4=summary")
    data = template_data("您的解绑申请 HQ20261130-ABC123 已办结：淘宝、微博、美团、抖音均已解除绑定。\n详情见我的申请",
                         mapping, "2026-11-30 15:00", 20)
    assert set(data) == {"thing1", "character_string2", "time3", "phrase4"}
    assert len(data["thing1"]["value"]) == 20 and data["thing1"]["value"].endswith("…")
    assert data["character_string2"]["value"] == "详情见我的申请" and data["time3"]["value"] == "2026-11-30 15:00"
    assert len(data["phrase4"]["value"]) == 5
    with pytest.raises(ValueError, match="WECHAT_TEMPLATE_FIELDS"):
        parse_template_fields("thing1")


# --- past one machine (issue 15) ------------------------------------------------------------------------------
async def test_two_workers_share_one_customer_service_window(wx_factory: Callable[..., Any],
                                                            pg_url: str) -> None:  # noqa: F811
    """Both workers see the same window: together they send the 5 a message allows, and WeChat refuses none."""
    first = await wx_factory(database_url=pg_url)
    second = await wx_factory(database_url=pg_url)
    talker = first.user("oShared0000001")
    await talker.say("/start")
    user = await first.server.runtime.dispatcher.user_for("wechat", talker.openid, create=False)
    assert user is not None
    for _ in range(8):
        await first.server.runtime.dispatcher.push(user.id, [Reply(Msg("settings.reminders_now_on"))],
                                                   channel="wechat")
    for _ in range(3):
        await asyncio.gather(first.channel.sender.flush(), second.channel.sender.flush())
    attempts = [c for c in first.fake.calls if c.path == CUSTOM_SEND and c.body.get("touser") == talker.openid]
    assert len(first.fake.texts(talker.openid)) == 5
    assert len(attempts) == 5, "no send beyond the window, from either worker"


async def test_a_failed_start_with_redis_leaves_no_staff_listener(wx_factory: Any, fake_api: FakeWeChatApi) -> None:
    """With REDIS_URL the staff console's live updates subscribe at start; a start that then fails on a WeChat
    setting stops that subscription with everything else."""
    redis_url = await redis_url_or_skip()
    fake_api.account = "verified_subscription"
    with pytest.raises(ConfigurationError, match="WECHAT_TEMPLATE_ID"):
        await wx_factory(wechat_account="verified_service", wechat_template_id="tpl-status",
                         wechat_template_fields="thing1=summary", redis_url=redis_url)
    loops = ("LiveHub._listen", "run_forever")
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                and any(name in repr(t.get_coro()) for name in loops)]
