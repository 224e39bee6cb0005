"""The staff console's broadcasts API over real HTTP (issue 14): only an admin composes, dry-runs, starts, pauses,
resumes, cancels, watches and downloads the report; a staff account gets 403, a POST without the CSRF header 403,
no session 401 (the page redirects to the login); bad texts, segments and schedules are 400 with a code, an unknown
id 404, the wrong state 409; every action is in the audit log. Recipients are real web chat users, who find the
broadcast in their chat."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.broadcasts import MAX_TEXT_CHARS
from bot.i18n import Catalog
from bot.server import RunningServer, start_server
from tests.broadcast_support import Recipient, insert, migrate
from tests.conftest import Chat, make_settings
from tests.test_staff import ALWAYS_OPEN, Staff, add_staff
from tests.test_wechat import WxServer, fake_api, wx_factory  # noqa: F401  (fixtures)

TEXTS = {"zh_CN": "号清提醒：您的解绑申请有新进展，请发送「我的申请」查看。",
         "en": "Haoqing: your unbind requests moved on."}
API = "/staff/api/broadcasts"


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_server(make_settings(tmp_path, **ALWAYS_OPEN))
    await add_staff(srv, "alice")
    await add_staff(srv, "root", role="admin")
    yield srv
    await srv.stop()


@pytest.fixture
async def admin(desk: RunningServer) -> AsyncIterator[Staff]:
    member = Staff(desk.url)
    await member.login("root")
    yield member
    await member.close()


async def web_users(base: str, http: aiohttp.ClientSession, langs: list[str]) -> list[Chat]:
    """Web chat users as users make themselves: open a session, say hello."""
    chats = []
    for lang in langs:
        chat = await Chat(http, base).open(lang)
        await chat.say("/start")
        chats.append(chat)
    return chats


async def wait_finished(admin: Staff, broadcast: int) -> dict[str, Any]:
    for _ in range(600):
        state = await admin.get(f"{API}/{broadcast}")
        if state["status"] in ("done", "cancelled"):
            return dict(state)
        await asyncio.sleep(0.1)
    raise AssertionError(f"broadcast {broadcast} never finished: {state}")


async def test_admin_dry_runs_creates_starts_and_every_web_user_gets_it_once(
        desk: RunningServer, admin: Staff, http: aiohttp.ClientSession) -> None:
    chats = await web_users(desk.url, http, ["zh_CN", "zh_CN", "en"])
    quiet = (await web_users(desk.url, http, ["zh_CN"]))[0]
    await quiet.pick("settings")
    await quiet.pick("reminders")
    assert "提醒已关闭" in quiet.text, quiet.text

    dry = await admin.post(API, {"texts": TEXTS, "segment": {}, "dry_run": True})
    assert dry["id"] is None
    assert dry["recipients"] == 3 and dry["opted_out"] == 1, dry
    assert dry["by_channel"]["web"]["recipients"] == 3

    english = await admin.post(API, {"texts": TEXTS, "segment": {"lang": "en", "channel": "web"}, "dry_run": True})
    assert english["recipients"] == 1 and set(english["by_channel"]) == {"web"}

    made = await admin.post(API, {"texts": TEXTS, "segment": {}, "dry_run": False}, expect=201)
    assert made["status"] == "draft" and made["recipients"] == dry["recipients"] and made["sent"] == 0
    broadcast = made["id"]
    assert (await admin.get(f"{API}/{broadcast}"))["status"] == "draft"
    started = await admin.post(f"{API}/{broadcast}/start")
    assert started["status"] in ("running", "done")
    final = await wait_finished(admin, broadcast)
    assert final["status"] == "done"
    assert final["sent"] == dry["recipients"] and final["left"] == 0 and final["failed"] == 0
    assert final["by_channel"]["web"]["sent"] == dry["recipients"]
    assert final["created_by"] == "root" and final["texts"]["en"] == TEXTS["en"]

    # Each web chat user finds it in their chat, in their language, once; the one who turned reminders off does not.
    for chat in chats:
        texts = [m["text"] for m in await chat.pushed(0)]
        mine = TEXTS["en"] if chat is chats[2] else TEXTS["zh_CN"]
        assert sum(mine in t for t in texts) == 1, texts
    assert not any(TEXTS["zh_CN"] in m["text"] for m in await quiet.pushed(0))

    # The recent list, newest first, and the report.
    recent = await admin.get(API)
    assert recent[0]["id"] == broadcast
    async with admin.http.get(f"{desk.url}{API}/{broadcast}/report.csv") as r:
        assert r.status == 200 and r.content_type == "text/csv"
        assert f"broadcast-{broadcast}.csv" in r.headers["Content-Disposition"]
        rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert rows and set(rows[0]) == {"channel", "outcome", "reason", "count"}
    assert sum(int(row["count"]) for row in rows if row["outcome"] == "sent") == dry["recipients"]

    # A finished broadcast cannot start, pause, resume or be cancelled again.
    for action in ("start", "pause", "resume", "cancel"):
        assert (await admin.post(f"{API}/{broadcast}/{action}", expect=409))["error"] == "bad_state"

    audit = await admin.get("/staff/api/audit")
    actions = [entry["action"] for entry in audit if entry["staff"] == "root"]
    for action in ("broadcast_dry_run", "broadcast_create", "broadcast_start", "broadcast_report"):
        assert action in actions, actions
    assert any(f"#{broadcast}" in entry["detail"] for entry in audit if entry["action"] == "broadcast_start")


async def test_dry_run_counts_per_channel_and_who_cannot_be_reached(tmp_path: Path,
                                                                  http: aiohttp.ClientSession) -> None:
    """Telegram and WeChat users as the bot stores them, on a deployment that runs neither channel: counted, and
    counted unreachable; so are users who blocked the bot or unfollowed. Those who turned reminders off are apart."""
    # Written before the bot starts: a blocking write beside the running bot's own would wait on its lock.
    insert(await migrate(tmp_path), "test-secret-key", [
        Recipient("telegram", "1001"), Recipient("telegram", "1002", lang="en"),
        Recipient("telegram", "1003", active=False), Recipient("telegram", "1004", reminders_on=False),
        Recipient("wechat", "o-wx-1"), Recipient("wechat", "o-wx-2"), Recipient("wechat", "o-wx-3", lang="en"),
        Recipient("wechat", "o-wx-4", active=False), Recipient("wechat", "o-wx-5", idle_days=40),
    ])
    srv = await start_server(make_settings(tmp_path, **ALWAYS_OPEN))
    admin = Staff(srv.url)
    try:
        await add_staff(srv, "root", role="admin")
        await admin.login("root")
        await web_users(srv.url, http, ["zh_CN", "en"])
        dry = await admin.post(API, {"texts": TEXTS, "segment": {}, "dry_run": True})
        assert dry["recipients"] == 3 + 5 + 2 and dry["opted_out"] == 1, dry
        assert dry["by_channel"]["telegram"] == {"recipients": 3, "unreachable": 3}, dry
        assert dry["by_channel"]["wechat"]["recipients"] == 5 and dry["by_channel"]["wechat"]["unreachable"] == 5
        assert dry["by_channel"]["web"]["recipients"] == 2 and not dry["by_channel"]["web"].get("unreachable")

        recent = await admin.post(API, {"texts": TEXTS, "segment": {"channel": "wechat", "active_days": 30},
                                        "dry_run": True})
        assert recent["recipients"] == 4 and set(recent["by_channel"]) == {"wechat"}
        english = await admin.post(API, {"texts": TEXTS, "segment": {"lang": "en"}, "dry_run": True})
        assert english["recipients"] == 3
        assert await admin.get(API) == [], "a dry run creates nothing"
    finally:
        await admin.close()
        await srv.stop()


async def test_dry_run_counts_wechat_users_inside_the_window(wx_factory: Any) -> None:  # noqa: F811
    """On a deployment with WeChat: a user who just wrote is reachable now by a customer-service message."""
    wx: WxServer = await wx_factory()
    await add_staff(wx.server, "root", role="admin")
    talker = wx.user("oTalkerBroadcast01")
    await talker.say("/start")
    admin = Staff(wx.url)
    try:
        await admin.login("root")
        dry = await admin.post(API, {"texts": TEXTS, "segment": {"channel": "wechat"}, "dry_run": True})
        assert dry["by_channel"]["wechat"] == {"recipients": 1, "window": 1, "template": 0, "unreachable": 0}, dry
    finally:
        await admin.close()


async def test_pause_resume_cancel_and_state_errors(desk: RunningServer, admin: Staff) -> None:
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    made = await admin.post(API, {"texts": TEXTS, "segment": {"channel": "telegram"}, "dry_run": False,
                                  "scheduled_at": soon}, expect=201)
    broadcast = made["id"]
    assert made["scheduled_at"] is not None
    # A draft cannot pause or resume.
    assert (await admin.post(f"{API}/{broadcast}/pause", expect=409))["error"] == "bad_state"
    assert (await admin.post(f"{API}/{broadcast}/resume", expect=409))["error"] == "bad_state"
    assert (await admin.post(f"{API}/{broadcast}/start"))["status"] == "scheduled"
    assert (await admin.post(f"{API}/{broadcast}/start", expect=409))["error"] == "bad_state"
    assert (await admin.post(f"{API}/{broadcast}/pause"))["status"] == "paused"
    assert (await admin.post(f"{API}/{broadcast}/resume"))["status"] == "scheduled"
    assert (await admin.post(f"{API}/{broadcast}/cancel"))["status"] == "cancelled"
    assert (await admin.post(f"{API}/{broadcast}/resume", expect=409))["error"] == "bad_state"
    # Unknown ids and actions.
    assert (await admin.get(f"{API}/999999", expect=404))["error"] == "not_found"
    assert (await admin.post(f"{API}/999999/start", expect=404))["error"] == "not_found"
    async with admin.http.get(f"{desk.url}{API}/999999/report.csv") as r:
        assert r.status == 404
    async with admin.http.get(f"{desk.url}{API}/abc", headers={"Accept": "application/json"}) as r:
        assert r.status == 404
    async with admin.http.post(f"{desk.url}{API}/{broadcast}/explode", headers={"X-CSRF-Token": admin.csrf}) as r:
        assert r.status == 404
    actions = [entry["action"] for entry in await admin.get("/staff/api/audit")]
    for action in ("broadcast_create", "broadcast_start", "broadcast_pause", "broadcast_resume", "broadcast_cancel"):
        assert action in actions, actions


@pytest.mark.parametrize(("body", "code"), [
    ({"texts": {"zh_CN": "只有中文"}, "segment": {}, "dry_run": True}, "bad_texts"),
    ({"texts": {"zh_CN": "   ", "en": "x"}, "segment": {}, "dry_run": True}, "bad_texts"),
    ({"texts": {"zh_CN": "长" * (MAX_TEXT_CHARS + 1), "en": "x"}, "segment": {}, "dry_run": False}, "bad_texts"),
    ({"texts": {**TEXTS, "fr": "bonjour"}, "segment": {}, "dry_run": True}, "bad_texts"),
    ({"texts": "hello", "segment": {}, "dry_run": True}, "bad_texts"),
    ({"texts": TEXTS, "segment": {"channel": "sms"}, "dry_run": True}, "bad_segment"),
    ({"texts": TEXTS, "segment": {"lang": "fr"}, "dry_run": True}, "bad_segment"),
    ({"texts": TEXTS, "segment": {"active_days": "7"}, "dry_run": True}, "bad_segment"),
    ({"texts": TEXTS, "segment": {"active_days": True}, "dry_run": True}, "bad_segment"),
    ({"texts": TEXTS, "segment": {"has_plan": "yes"}, "dry_run": True}, "bad_segment"),
    ({"texts": TEXTS, "segment": {"vip": True}, "dry_run": True}, "bad_segment"),
    ({"texts": TEXTS, "segment": ["channel"], "dry_run": True}, "bad_segment"),
    ({"texts": TEXTS, "segment": {}, "dry_run": False, "scheduled_at": "tomorrow"}, "bad_schedule"),
    ({"texts": TEXTS, "segment": {}, "dry_run": False, "scheduled_at": "2020-01-01T09:00+08:00"}, "bad_schedule"),
    ({"texts": TEXTS, "segment": {}, "dry_run": False, "scheduled_at": "2099-01-01T09:00"}, "bad_schedule"),
    ({"texts": TEXTS, "segment": {}, "dry_run": "yes"}, "bad_body"),
])
async def test_bad_input_is_a_400_with_a_code_and_creates_nothing(admin: Staff, body: dict[str, Any],
                                                                   code: str) -> None:
    answer = await admin.post(API, body, expect=400)
    assert answer["error"] == code and answer["message"]
    assert await admin.get(API) == []


async def test_malformed_bodies_are_400(desk: RunningServer, admin: Staff) -> None:
    headers = {"X-CSRF-Token": admin.csrf, "Content-Type": "application/json", "Accept": "application/json"}
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'):
        async with admin.http.post(desk.url + API, data=raw, headers=headers) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_body", raw
    async with admin.http.post(desk.url + API, data=b"x" * (70 * 1024), headers=headers) as r:
        assert r.status == 413


async def test_bad_texts_message_states_the_limit_the_service_keeps() -> None:
    catalog = Catalog.load()
    for lang in ("zh_CN", "en"):
        assert str(MAX_TEXT_CHARS) in catalog.text("staff.error.bad_texts", lang)


async def test_preview_renders_each_channel_as_it_will_arrive(admin: Staff) -> None:
    rendered = await admin.post(f"{API}/preview", {"texts": TEXTS})
    for channel in ("telegram", "wechat", "web"):
        assert TEXTS["zh_CN"] in rendered[channel]["zh_CN"] and TEXTS["en"] in rendered[channel]["en"]
    # While composing, a language not written yet previews as empty instead of failing.
    half = await admin.post(f"{API}/preview", {"texts": {"zh_CN": "你好", "en": ""}})
    assert "你好" in half["web"]["zh_CN"] and half["web"]["en"] == ""
    assert (await admin.post(f"{API}/preview", {"texts": {"zh_CN": "长" * (MAX_TEXT_CHARS + 1), "en": "x"}},
                             expect=400))["error"] == "bad_texts"
    assert (await admin.post(f"{API}/preview", {"texts": 7}, expect=400))["error"] == "bad_texts"


async def test_staff_gets_403_no_csrf_403_no_login_401(desk: RunningServer, admin: Staff,
                                                       http: aiohttp.ClientSession) -> None:
    made = await admin.post(API, {"texts": TEXTS, "segment": {}, "dry_run": False}, expect=201)
    broadcast = made["id"]
    staff = Staff(desk.url)
    try:
        await staff.login("alice")
        body = {"texts": TEXTS, "segment": {}, "dry_run": True}
        for path in (API, f"{API}/{broadcast}", f"{API}/{broadcast}/report.csv"):
            assert (await staff.get(path, expect=403))["error"] == "admin_only"
        for path in (API, f"{API}/preview", *(f"{API}/{broadcast}/{a}" for a in ("start", "pause", "resume",
                                                                                   "cancel"))):
            assert (await staff.post(path, body, expect=403))["error"] == "admin_only"
        async with staff.http.get(desk.url + "/staff/broadcasts", allow_redirects=False) as r:
            assert r.status == 403
    finally:
        await staff.close()

    # An admin without the CSRF header, or with another session's, changes nothing.
    for token in ("", "forged-token"):
        assert (await admin.post(f"{API}/{broadcast}/start", expect=403, csrf=token))["error"] == "csrf"
        assert (await admin.post(API, {"texts": TEXTS, "segment": {}, "dry_run": False}, expect=403,
                                 csrf=token))["error"] == "csrf"
    assert (await admin.get(f"{API}/{broadcast}"))["status"] == "draft"
    assert len(await admin.get(API)) == 1

    # Without a session: 401 on the API, the page sends the browser to the login.
    for path in (API, f"{API}/{broadcast}"):
        async with http.get(desk.url + path) as r:
            assert r.status == 401 and (await r.json())["error"] == "login_required"
    async with http.post(desk.url + f"{API}/{broadcast}/start", json={}) as r:
        assert r.status == 401
    async with http.get(desk.url + "/staff/broadcasts", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/staff"


async def test_the_page_for_an_admin_carries_its_strings_and_csp(desk: RunningServer, admin: Staff) -> None:
    async with admin.http.get(desk.url + "/staff/broadcasts?lang=en") as r:
        assert r.status == 200
        html = await r.text()
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert 'id="strings"' in html and "Broadcasts" in html and "{{" not in html and "__STRINGS__" not in html
    assert f'maxlength="{MAX_TEXT_CHARS}"' in html
    assert "<style" not in html and "onclick" not in html and " style=" not in html
    async with admin.http.get(desk.url + "/staff/static/broadcasts.js") as r:
        assert r.status == 200 and "javascript" in r.content_type
    async with admin.http.get(desk.url + "/staff?lang=zh_CN") as r:
        assert 'href="/staff/broadcasts"' in await r.text()


def test_the_page_takes_its_words_from_the_catalog() -> None:
    import re

    from tests.test_locales import CJK

    static = Path(__file__).resolve().parent.parent / "bot" / "staff" / "static"
    html = (static / "broadcasts.html").read_text()
    visible = re.sub(r"<script[^>]*>.*?</script>|<style>.*?</style>|\{\{[^}]+\}\}", "", html, flags=re.S)
    assert not CJK.search(visible)
    assert not re.search(r">\s*[A-Za-z][A-Za-z ]{3,}\s*<", visible), "hard-coded English in broadcasts.html"
    script = (static / "broadcasts.js").read_text()
    assert not CJK.search(script)
    # Every string the script asks for is in both catalogs (a missing one would fail the page).
    from bot.staff.broadcasts_api import SCRIPT_KEYS

    catalog = Catalog.load()
    asked = set(re.findall(r'S\["([a-z_.A-Z]+)"\]', script))
    prefixes = set(re.findall(r'S\["([a-z_.]+\.)" \+', script))
    assert asked <= set(SCRIPT_KEYS), asked - set(SCRIPT_KEYS)
    for key in SCRIPT_KEYS:
        assert key in catalog.messages["zh_CN"] and key in catalog.messages["en"], key
    assert prefixes <= {"staff.channel.", "staff.bc.status.", "staff.bc.lang.", "staff.bc.dry."}, prefixes
