"""The staff console over HTTP, as a staff member's browser and the web chat user drive it: login, CSRF, roles,
the tickets contract, the masked context, the handoff journey, off-hours and timeout on an injected clock,
the audit log, and the `python -m bot staff` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from sqlmodel import select

from bot.config import Settings
from bot.server import RunningServer, start_server
from bot.staff import auth, cli
from bot.storage import Conversation, StaffAudit, Ticket, TicketMessage
from tests.conftest import Chat, make_settings
from tests.processes import ROOT

PASSWORD = "correct horse battery staple"
ALWAYS_OPEN = {"staff_hours": "00:00-24:00", "staff_days": "1-7"}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


_HASHED: dict[str, str] = {}
_HASH = auth.hash_password


def _hash_once(password: str) -> str:
    """An argon2 hash costs 0.4 s of CPU, and accounts are made by the dozen: each password is hashed once per
    test process (salt included), which any login then verifies for real. Only add_staff uses this."""
    if password not in _HASHED:
        _HASHED[password] = _HASH(password)
    return _HASHED[password]


async def add_staff(srv: Any, name: str, role: str = "staff", password: str = PASSWORD) -> None:
    """Through the CLI's own code, on the server's database (a RunningServer, or the Telegram tests' TgServer)."""
    settings = srv.runtime.settings if hasattr(srv, "runtime") else srv.rt.settings
    with mock.patch.object(auth, "hash_password", _hash_once):
        code = await cli.run(["add", name, "--role", role], settings, io.StringIO(password + "\n"))
    assert code == 0


class Staff:
    """A staff member's browser: its own cookie jar, the CSRF token from the login answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        # Cookies for a bare IP address (127.0.0.1) need the unsafe jar.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""
        self.set_cookie = ""

    async def login(self, name: str, password: str = PASSWORD, expect: int = 200) -> dict[str, Any]:
        async with self.http.post(f"{self.base}/staff/login", data={"name": name, "password": password},
                                  headers={"Accept": "application/json"}) as r:
            body = await r.json()
            assert r.status == expect, body
            self.set_cookie = r.headers.get("Set-Cookie", "")
        self.csrf = body.get("csrf", "")
        return dict(body)

    async def get(self, path: str, expect: int = 200) -> Any:
        async with self.http.get(self.base + path, headers={"Accept": "application/json"}) as r:
            body = await r.json()
            assert r.status == expect, body
            return body

    async def post(self, path: str, body: dict[str, Any] | None = None, expect: int = 200,
                   csrf: str | None = None) -> Any:
        headers = {"Accept": "application/json", "X-CSRF-Token": self.csrf if csrf is None else csrf}
        async with self.http.post(self.base + path, json=body or {}, headers=headers) as r:
            answer = await r.json()
            assert r.status == expect, answer
            return answer

    async def tickets(self, status: str = "open") -> list[dict[str, Any]]:
        return list(await self.get(f"/staff/api/tickets?status={status}"))

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[RunningServer]:
    srv = await start_server(make_settings(tmp_path, **ALWAYS_OPEN))
    await add_staff(srv, "alice")
    await add_staff(srv, "bob")
    await add_staff(srv, "root", role="admin")
    yield srv
    await srv.stop()


@pytest.fixture
async def chat(desk: RunningServer, http: aiohttp.ClientSession) -> Chat:
    """A web chat user of the staffed server (this module's own, unlike conftest's)."""
    return await Chat(http, desk.url).open()


@pytest.fixture
async def staff(desk: RunningServer) -> AsyncIterator[Staff]:
    member = Staff(desk.url)
    await member.login("alice")
    yield member
    await member.close()


async def rows(srv: RunningServer, model: Any, *where: Any) -> list[Any]:
    async with srv.runtime.db.session() as session:
        return list((await session.exec(select(model).where(*where))).all())


async def pushed_texts(chat: Chat, after: int) -> list[str]:
    return [m["text"] for m in await chat.pushed(after)]


def last_seq(chat: Chat) -> int:
    return max((m["seq"] for m in chat.transcript if "seq" in m), default=0)


# --- login, session cookie, CSRF, roles -------------------------------------------------------------------------
async def test_login_page_then_session_cookie_and_csrf(desk: RunningServer) -> None:
    member = Staff(desk.url)
    try:
        async with member.http.get(desk.url + "/staff") as r:
            page = await r.text()
            assert r.status == 200 and 'action="/staff/login"' in page and "客服登录" in page
        body = await member.login("alice")
        assert set(body) >= {"csrf"} and len(body["csrf"]) >= 32
        cookie = member.set_cookie.lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/staff" in cookie
        async with member.http.get(desk.url + "/staff") as r:
            page = await r.text()
            assert r.status == 200 and f'<meta name="csrf" content="{body["csrf"]}">' in page
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        # Another site posting the login form (login CSRF) is refused before any password is checked.
        async with member.http.post(desk.url + "/staff/login", data={"name": "bob", "password": PASSWORD},
                                    headers={"Origin": "https://evil.example", "Accept": "application/json"}) as r:
            assert r.status == 403
        # A plain form post (the login page's own) answers with a redirect to the console.
        plain = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with plain.post(desk.url + "/staff/login", data={"name": "bob", "password": PASSWORD},
                              allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/staff"
        await plain.close()
    finally:
        await member.close()


async def test_wrong_passwords_get_401_then_429(desk: RunningServer) -> None:
    member = Staff(desk.url)
    try:
        for _ in range(desk.runtime.settings.staff_login_max_failures):
            answer = await member.login("alice", "wrong password!", expect=401)
            assert answer["error"] == "bad_login"
        answer = await member.login("alice", "wrong password!", expect=429)
        assert answer["error"] == "throttled"
        # Locked even with the right password: a guesser learns nothing from the answer.
        await member.login("alice", expect=429)
        # Another account from the same address is not locked by alice's failures (below the per-address cap).
        await member.login("bob")
        # An unknown name costs a failure like a wrong password and says nothing more.
        assert (await member.login("nobody", "whatever-password", expect=401))["error"] == "bad_login"
        async with member.http.post(desk.url + "/staff/login", data={"name": "bob", "password": "nope"}) as r:
            assert r.status == 401 and "账号或密码不对" in await r.text()
    finally:
        await member.close()
    audit = await rows(desk, StaffAudit)
    assert sum(1 for entry in audit if entry.action == "login_failed") >= 6


async def test_post_without_csrf_token_gets_403(desk: RunningServer, staff: Staff, chat: Chat) -> None:
    await chat.say("人工")
    ticket = (await staff.tickets())[0]
    for token in ("", "forged-token"):
        answer = await staff.post(f"/staff/api/tickets/{ticket['id']}/claim", expect=403, csrf=token)
        assert answer["error"] == "csrf"
    assert (await staff.tickets())[0]["status"] == "open"
    # Another member's token is not this session's.
    other = Staff(desk.url)
    await other.login("bob")
    await staff.post(f"/staff/api/tickets/{ticket['id']}/claim", expect=403, csrf=other.csrf)
    await other.close()
    await staff.post(f"/staff/api/tickets/{ticket['id']}/claim")
    # Logged out, the cookie is worthless.
    await staff.post("/staff/logout")
    await staff.get("/staff/api/tickets?status=open", expect=401)


async def test_no_session_gets_401_on_the_api(desk: RunningServer, http: aiohttp.ClientSession) -> None:
    for path in ("/staff/api/tickets?status=open", "/staff/api/tickets/1", "/staff/api/events"):
        async with http.get(desk.url + path) as r:
            assert r.status == 401, path
    async with http.post(desk.url + "/staff/api/tickets/1/claim") as r:
        assert r.status == 401


async def test_a_staff_account_cannot_reach_broadcasts_or_the_audit_log(desk: RunningServer, staff: Staff) -> None:
    for path in ("/staff/api/broadcasts", "/staff/api/broadcasts/7", "/staff/api/audit"):
        assert (await staff.get(path, expect=403))["error"] == "admin_only"
    for path in ("/staff/api/broadcasts", "/staff/api/broadcasts/7/start", "/staff/api/broadcasts/7/pause"):
        await staff.post(path, {"texts": {"zh_CN": "x", "en": "x"}, "segment": {}, "dry_run": True}, expect=403)
    async with staff.http.get(desk.url + "/staff/broadcasts", allow_redirects=False) as r:
        assert r.status == 403
    admin = Staff(desk.url)
    try:
        await admin.login("root")
        async with admin.http.get(desk.url + "/staff/api/broadcasts") as r:
            assert r.status != 403
        assert isinstance(await admin.get("/staff/api/audit"), list)
    finally:
        await admin.close()


# --- the journey over the API --------------------------------------------------------------------------------------
async def test_web_user_reaches_staff_and_is_handed_back(desk: RunningServer, staff: Staff, chat: Chat) -> None:
    await chat.say("/start")
    answer = await chat.say("人工")
    assert "正在为您转接人工客服" in chat.text and "排在人工客服队列第 1 位" in chat.text
    assert any(c["id"] == "leave" for m in answer for c in m["choices"])
    await chat.say("我的号码 13800138000 收到催收电话")
    assert "已转给客服" in chat.text

    [ticket] = await staff.tickets("open")
    assert set(ticket) >= {"id", "status", "channel", "waiting_since", "context"}
    assert ticket["status"] == "open" and ticket["channel"] == "web"
    assert ticket["context"]["state"] == "handoff.waiting" and ticket["context"]["verified"] is False
    seen = last_seq(chat)
    claimed = await staff.post(f"/staff/api/tickets/{ticket['id']}/claim")
    assert claimed["status"] == "claimed" and claimed["claimed_by"] == "alice"
    assert any("客服 alice 已接入" in text for text in await pushed_texts(chat, seen))
    # A colleague cannot take it again.
    bob = Staff(desk.url)
    await bob.login("bob")
    assert (await bob.post(f"/staff/api/tickets/{ticket['id']}/claim", expect=409))["error"] == "already_claimed"
    assert (await bob.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "hi"}, expect=409))["error"] \
        == "claim_first"
    await bob.close()

    # With staff the bot is silent: the user's text goes to the ticket and nothing comes back.
    assert await chat.say("还在吗？") == []
    detail = await staff.get(f"/staff/api/tickets/{ticket['id']}")
    users = [line["text"] for line in detail["transcript"] if line["author"] == "user"]
    assert users == ["我的号码 138****8000 收到催收电话", "还在吗？"], "user text reaches staff scrubbed"
    assert any(line["author"] == "bot" for line in detail["transcript"]), "the bot's last words give context"

    seen = last_seq(chat) or seen
    seen = max([seen, *[m["seq"] for m in await chat.pushed(0)]])
    await staff.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "您好，我来帮您看看。"})
    assert await pushed_texts(chat, seen) == ["客服 alice：您好，我来帮您看看。"]
    await staff.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "   "}, expect=400)

    # /menu asks before leaving the human; staying keeps the ticket.
    await chat.say("/menu")
    assert "要结束人工对话、回到机器人吗" in chat.text
    await chat.pick("stay")
    assert "继续为您保留人工客服" in chat.text
    assert (await staff.tickets("claimed"))[0]["id"] == ticket["id"]

    seen = max(m["seq"] for m in await chat.pushed(0))
    closed = await staff.post(f"/staff/api/tickets/{ticket['id']}/close")
    assert closed["status"] == "closed"
    after = await chat.pushed(seen)
    assert "客服已结束本次对话" in after[0]["text"] and any(c["id"] == "lookup" for c in after[-1]["choices"])
    [conversation] = await rows(desk, Conversation, Conversation.user_id == (await rows(desk, Ticket))[0].user_id)
    assert conversation.state == "menu"
    # Back with the bot: the menu answers again, and typing "1" picks its first item.
    await chat.send({"choice": "settings"})
    assert any(c["id"] == "language" for m in chat.last for c in m["choices"]), chat.text
    assert (await staff.tickets("closed"))[0]["id"] == ticket["id"]
    await staff.post(f"/staff/api/tickets/{ticket['id']}/close", expect=409)

    actions = [(entry.staff_name, entry.action) for entry in await rows(desk, StaffAudit)]
    for expected in (("alice", "login"), ("alice", "claim"), ("alice", "view"), ("alice", "reply"),
                     ("alice", "close")):
        assert expected in actions
    replies = [entry.detail for entry in await rows(desk, StaffAudit, StaffAudit.action == "reply")]
    assert replies == ["您好，我来帮您看看。"], "who wrote what"


async def test_user_leaves_the_queue_and_the_ticket_closes(desk: RunningServer, staff: Staff, chat: Chat) -> None:
    await chat.say("人工")
    await chat.pick("leave")
    assert "已结束人工客服对话" in chat.text and any(c["id"] == "lookup" for m in chat.last for c in m["choices"])
    assert await staff.tickets("open") == []
    [closed] = await staff.tickets("closed")
    assert closed["close_reason"] == "user"
    assert (await staff.post(f"/staff/api/tickets/{closed['id']}/claim", expect=409))["error"] == "closed"


async def test_menu_command_with_staff_asks_then_leaves_and_runs_it(desk: RunningServer, staff: Staff,
                                                                      chat: Chat) -> None:
    await chat.say("人工")
    ticket = (await staff.tickets())[0]
    await staff.post(f"/staff/api/tickets/{ticket['id']}/claim")
    await chat.say("/language")
    assert "要结束人工对话" in chat.text
    await chat.pick("leave")
    assert "已结束人工客服对话" in chat.text and any(c["id"] == "en" for m in chat.last for c in m["choices"])
    assert (await staff.tickets("closed"))[0]["close_reason"] == "user"


async def test_assign_to_a_colleague(desk: RunningServer, staff: Staff, chat: Chat) -> None:
    await chat.say("人工")
    ticket = (await staff.tickets())[0]
    await staff.post(f"/staff/api/tickets/{ticket['id']}/claim")
    colleagues = [c["name"] for c in await staff.get("/staff/api/staff")]
    assert {"alice", "bob", "root"} <= set(colleagues)
    await staff.post(f"/staff/api/tickets/{ticket['id']}/assign", {"to": "nobody"}, expect=400)
    seen = max(m["seq"] for m in await chat.pushed(0))
    assigned = await staff.post(f"/staff/api/tickets/{ticket['id']}/assign", {"to": "bob"})
    assert assigned["claimed_by"] == "bob"
    assert any("客服 bob 已接入" in text for text in await pushed_texts(chat, seen))
    # Now bob's: alice may no longer answer.
    await staff.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "x"}, expect=409)
    bob = Staff(desk.url)
    await bob.login("bob")
    await bob.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "我是 bob。"})
    await bob.close()


async def test_context_is_the_masked_case_across_the_users_data(desk: RunningServer, staff: Staff, chat: Chat,
                                                                 log_capture: Any) -> None:
    demo = await chat.demo("recycled")
    await chat.verify(demo["phone"])
    await chat.say("人工")
    # Numbers typed in free text are masked on the way in; a name in free text cannot be recognised, which is
    # why the canned replies ask users not to send personal data.
    await chat.say(f"我的身份证 {demo['id_number']}，号码 {demo['phone']}")
    [ticket] = await staff.tickets()
    context = ticket["context"]
    masked = demo["phone"][:3] + "****" + demo["phone"][-4:]
    assert context["verified"] is True and context["phone_masked"] == masked
    assert context["channel"] == "web" and context["channels"] == ["web"]
    assert set(context) >= {"state", "requests", "plan", "realname_checked"}
    detail = await staff.get(f"/staff/api/tickets/{ticket['id']}")
    everything = json.dumps([await staff.tickets(), detail], ensure_ascii=False)
    assert masked in everything
    for secret in (demo["phone"], demo["id_number"], demo["name"]):
        assert secret not in everything
    user_line = next(line["text"] for line in detail["transcript"] if line["author"] == "user")
    assert demo["id_number"][:4] in user_line and demo["phone"] not in user_line
    # Nor in the database: the transcript holds the scrubbed text only.
    stored = " ".join(m.text for m in await rows(desk, TicketMessage))
    assert demo["phone"] not in stored and demo["id_number"] not in stored
    await staff.post(f"/staff/api/tickets/{ticket['id']}/claim")
    await staff.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": f"您是 {demo['phone']} 吗？"})
    assert demo["phone"] not in json.dumps(await chat.pushed(0), ensure_ascii=False), "staff typos are masked too"
    logs = log_capture.getvalue()
    for secret in (demo["phone"], demo["id_number"], demo["name"]):
        assert secret not in logs


async def test_three_misunderstandings_in_a_row_open_a_ticket(desk: RunningServer, staff: Staff,
                                                              chat: Chat) -> None:
    await chat.say("/start")
    for _ in range(2):
        await chat.send({"choice": "no-such-choice"})
        assert "没看懂" in chat.text
    assert await staff.tickets() == []
    await chat.send({"choice": "no-such-choice"})
    assert "没能理解您的意思" in chat.text and "正在为您转接人工客服" in chat.text
    [ticket] = await staff.tickets()
    assert ticket["reason"] == "stuck"


async def test_live_updates_reach_a_connected_console(desk: RunningServer, staff: Staff, chat: Chat) -> None:
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    connected = asyncio.Event()

    async def listen() -> None:
        async with staff.http.get(desk.url + "/staff/api/events") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            async for raw in r.content:
                line = raw.decode().strip()
                if line.startswith("event: ready"):
                    connected.set()
                if line.startswith("data: {") and "ticket" in line:
                    await events.put(json.loads(line[6:]))

    task = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await chat.say("人工")
        new = await asyncio.wait_for(events.get(), 10)
        assert new["event"] == "new" and new["status"] == "open"
        await chat.say("有人吗")
        assert (await asyncio.wait_for(events.get(), 10))["event"] == "message"
        await staff.post(f"/staff/api/tickets/{new['ticket']}/claim")
        claimed = await asyncio.wait_for(events.get(), 10)
        assert claimed["event"] == "claimed" and claimed["by"] == "alice"
        assert "text" not in json.dumps(claimed), "events carry ids, never message text"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- business hours and the timeout, on an injected clock ----------------------------------------------------
async def test_off_hours_message_then_timeout_back_to_the_bot(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    srv = await start_server(make_settings(tmp_path, staff_hours="09:00-18:00", staff_days="1-5",
                                           staff_ticket_timeout_minutes=30, scheduler_poll_seconds=3600))
    try:
        rt = srv.runtime
        assert rt.tickets is not None
        # Saturday 2026-12-05, 12:00 Beijing time: staff are next in on Monday at 09:00.
        clock = Clock(datetime(2026, 12, 5, 4, 0, tzinfo=UTC))
        rt.tickets.clock = clock
        rt.jobs.clock = clock
        chat = await Chat(http, srv.url).open()
        await chat.say("人工")
        assert "现在不是人工客服的工作时间（北京时间 09:00-18:00）" in chat.text
        assert "2026-12-07 09:00" in chat.text
        seen = max(m["seq"] for m in chat.transcript)
        # Monday 09:29: thirty business minutes have not passed yet (the weekend does not count).
        clock.now = datetime(2026, 12, 7, 1, 29, tzinfo=UTC)
        await rt.jobs.run_due()
        assert await chat.pushed(seen) == []
        clock.now = datetime(2026, 12, 7, 1, 31, tzinfo=UTC)
        await rt.jobs.run_due()
        pushed = await chat.pushed(seen)
        assert "非常抱歉，暂时没有客服能接入" in pushed[0]["text"]
        assert any(c["id"] == "lookup" for c in pushed[-1]["choices"])
        [ticket] = await rows(srv, Ticket)
        assert ticket.status == "closed" and ticket.close_reason == "timeout"
        clock.now += timedelta(minutes=5)
        await rt.jobs.run_due()
        assert len(await chat.pushed(seen)) == len(pushed), "the apology goes once"
        # In hours, the user is told their place in the queue instead.
        clock.now = datetime(2026, 12, 8, 2, 0, tzinfo=UTC)  # Tuesday 10:00
        await chat.say("人工")
        assert "排在人工客服队列第 1 位，预计等待约 5 分钟" in chat.text
    finally:
        await srv.stop()


async def test_a_claimed_ticket_does_not_time_out(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    srv = await start_server(make_settings(tmp_path, scheduler_poll_seconds=3600, **ALWAYS_OPEN))
    try:
        rt = srv.runtime
        assert rt.tickets is not None
        # Today, not a fixed date: the scheduler's first round (retention among it) may run after the clock is
        # set, and a clock days ahead would purge the test's own web session as idle.
        clock = Clock(datetime.now(UTC).replace(microsecond=0))
        rt.tickets.clock = clock
        rt.jobs.clock = clock
        await add_staff(srv, "alice")
        chat = await Chat(http, srv.url).open()
        await chat.say("人工")
        member = Staff(srv.url)
        await member.login("alice")
        ticket = (await member.tickets())[0]
        await member.post(f"/staff/api/tickets/{ticket['id']}/claim")
        clock.now += timedelta(hours=3)
        await rt.jobs.run_due()
        assert (await member.tickets("claimed"))[0]["id"] == ticket["id"]
        await member.close()
    finally:
        await srv.stop()


# --- /forget and the audit log --------------------------------------------------------------------------------------
async def test_forget_erases_the_transcript_but_keeps_the_audit_log(desk: RunningServer, staff: Staff,
                                                                    chat: Chat) -> None:
    await chat.say("人工")
    ticket = (await staff.tickets())[0]
    await staff.post(f"/staff/api/tickets/{ticket['id']}/claim")
    await chat.say("请删除我的资料")
    await staff.post(f"/staff/api/tickets/{ticket['id']}/messages", {"text": "好的，请发送 /forget。"})
    await chat.say("/forget")
    await chat.pick("leave")
    confirm = next(c["id"] for m in chat.last for c in m["choices"] if c["id"] not in ("menu", "back", "cancel"))
    await chat.pick(confirm)
    assert await rows(desk, TicketMessage) == []
    assert (await staff.tickets("closed"))[0]["id"] == ticket["id"]
    audit = [(entry.action, entry.ticket_id) for entry in await rows(desk, StaffAudit)]
    assert ("reply", ticket["id"]) in audit and ("claim", ticket["id"]) in audit


# --- the CLI contract -----------------------------------------------------------------------------------------------
async def test_staff_cli_adds_lists_disables_and_changes_passwords(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path), "SECRET_KEY": "test-secret-key", "LOG_LEVEL": "WARNING"}

    async def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        """`python -m bot staff ARGS` as an operator runs it: a process of its own, the settings from the
        environment, the password on standard input."""
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "staff", *args, cwd=ROOT, env=env,
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(stdin.encode())
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def run_here(*args: str, stdin: str = "") -> tuple[int, str, str]:
        """The same command through the same function (bot.staff.cli.run) in this process: an interpreter start
        costs some 3 s of CPU, and the process boundary is what `run` covers (first use of a new data folder,
        standard input, standard output and exit codes 0 and 1)."""
        settings = Settings(_env_file=None, data_dir=tmp_path, secret_key="test-secret-key",  # type: ignore[call-arg]
                            log_level="WARNING")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = await cli.run(list(args), settings, io.StringIO(stdin))
        return code, out.getvalue(), err.getvalue()

    code, out, _err = await run("add", "carol", "--role", "admin", stdin=PASSWORD + "\n")
    assert code == 0 and out == "carol: admin account created\n", out
    code, _out, err = await run_here("add", "carol", stdin=PASSWORD + "\n")
    assert code == 1 and "exists already" in err
    code, _out, err = await run_here("add", "dave", stdin="short\n")
    assert code == 2 and "at least" in err
    assert (await run_here("add", "dave", "--role", "staff", stdin=PASSWORD + "\n"))[0] == 0
    code, out, _err = await run_here("list")
    assert code == 0 and "carol\tadmin\tactive" in out and "dave\tstaff\tactive" in out
    assert PASSWORD not in out

    srv = await start_server(make_settings(tmp_path, **ALWAYS_OPEN))
    member = Staff(srv.url)
    try:
        assert (await member.login("carol"))["role"] == "admin"
        assert (await run_here("passwd", "carol", stdin="a brand new password\n"))[0] == 0
        await member.get("/staff/api/tickets?status=open", expect=401)  # passwd ends open sessions
        await member.login("carol", "a brand new password")
        assert (await run_here("disable", "carol"))[0] == 0
        await member.get("/staff/api/tickets?status=open", expect=401)
        await member.login("carol", "a brand new password", expect=401)
        assert (await run("disable", "nobody"))[0] == 1
    finally:
        await member.close()
        await srv.stop()
