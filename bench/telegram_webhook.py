"""Telegram webhook bench: updates/s and p50/p99 latency at fixed offered loads (open loop), plus a closed-loop
peak, for our adapter and, in the same run against the same fake Bot API, three peers:

  ours     bot.channels.telegram: webhook -> inbox -> dialog step on SQLite -> sendMessage, before the 200
  ptb      python-telegram-bot the default way: Application + ConversationHandler + default HTTPXRequest,
           updates fed with `await application.process_update(...)` from a plain aiohttp webhook
  aiogram  aiogram 3: Dispatcher with MemoryStorage FSM, SimpleEventIsolation, its AiohttpSession,
           updates fed with `await dp.feed_update(...)` (installed into a throwaway venv, never into .venv)
  raw      a bare aiohttp webhook that calls sendMessage with aiohttp: the harness's own ceiling
  rawuv    the same on uvloop, the loop ours runs on as `make run` ships it (EVENT_LOOP): the ceiling on one loop

The flow is two steps per user: `/menu` (reply: a menu with an inline keyboard), then one second later a tap
on "settings" (answerCallbackQuery + reply: the settings menu). Every update gets exactly one sendMessage, and
every peer sends ours' own replies (MENU, SETTINGS), so the fake and the wire carry the same bytes for all.
Ours answers the tap's callback query in its webhook response (Telegram runs that method; the load generator
does it here, as Telegram would); the peers call answerCallbackQuery themselves, their frameworks' default.
Latency is from an update's scheduled send time to its reply reaching the fake Bot API (the same monotonic
clock: the fake runs in its own process on this machine), so it counts queueing in the bot, not just HTTP.
Each server runs in its own process; the load generator and the fake run in two more. First, the send path
alone: calls/s of PTB's Bot.send_message over our aiohttp transport and over PTB's default httpx one.

All servers run side by side (idle while another is measured), and the closed-loop peak is taken in `--repeats`
rounds that visit them in turn; the figures quoted are medians of the rounds, since on shared cores one run
alone can be off by a fifth.

Beside updates/s, each server's own CPU time per update over the closed loop (read from /proc): on shared
cores the fairer figure, since other load on the machine moves throughput far more than CPU per update. And the
harness's CPU per update (this load generator, which also runs the methods a webhook response carries, and the
fake Bot API): they share the cores with the server, so a peak ratio between two fast servers tends to the ratio
of server and harness CPU together, which is printed too.

The fake Bot API applies Telegram's flood control itself (tests/fakes/fake_bot_api.py). For the throughput
figures its bot-wide limit is lifted, and so is ours (TELEGRAM_BOT_PER_SECOND), as for a bot with paid
broadcasts: they measure the CPU cost of an update, and one chat never gets more than two messages a second.
`--flood-check` then runs ours under Telegram's real limits (about 30/s per bot, 1/s per chat after a burst)
at an offered load above them, and checks every second of the fake's log: no 429, no violation.

Usage: .venv/bin/python bench/telegram_webhook.py [--rates 250,500,1000,2000] [--seconds 5] [--repeats 3]
       [--peers ours,ptb,aiogram,raw,rawuv] [--aiogram-venv /tmp/haoqing-bench-aiogram] [--logging quiet|shipped]
       [--flood-check [--flood-rate 60]] [--peers ours,base --base-tree /path/to/an/earlier/checkout]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from loadgen import wait_ready

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "123:ABC"
SECRET = "bench-secret"
CLICK_DELAY = 1.0
MAX_CONNECTIONS = 40
# What ours answers to the two steps in English, word for word and button for button: every peer sends the same
# replies, so the fake Bot API and the wire carry the same bytes for all (tests/test_telegram.py checks ours still
# says exactly this).
MENU_TEXT = "What would you like to do?"
MENU = [("lookup", "Look up bindings"), ("unbind", "Unbind previous holder's accounts"),
        ("recycle", "Is this number second-hand?"), ("tag", "Number tagging"), ("plan", "Pre-cancellation plan"),
        ("requests", "My requests"), ("guide", "Platforms to fix by hand"), ("human", "Talk to staff"),
        ("settings", "Settings")]
SETTINGS_TEXT = "Settings\nLanguage: English\nReminders: on"
SETTINGS = [("language", "Change language"), ("reminders", "Turn reminders off"), ("forget", "Delete my data"),
            ("menu", "Back to menu")]


def keyboard(buttons: list[tuple[str, str]]) -> dict[str, Any]:
    return {"inline_keyboard": [[{"text": label, "callback_data": cid}] for cid, label in buttons]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- updates, as Telegram sends them ---------------------------------------------------------------

def menu_update(update_id: int, chat_id: int) -> bytes:
    return json.dumps({"update_id": update_id, "message": {
        "message_id": update_id, "date": int(time.time()), "text": "/menu",
        "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
        "chat": {"id": chat_id, "type": "private", "first_name": "B"},
        "from": {"id": chat_id, "is_bot": False, "first_name": "B", "language_code": "en"}}}).encode()


def click_update(update_id: int, chat_id: int) -> bytes:
    return json.dumps({"update_id": update_id, "callback_query": {
        "id": f"q{update_id}", "chat_instance": "c", "data": "settings",
        "from": {"id": chat_id, "is_bot": False, "first_name": "B", "language_code": "en"},
        "message": {"message_id": 1, "date": int(time.time()), "text": "menu",
                    "chat": {"id": chat_id, "type": "private", "first_name": "B"},
                    "from": {"id": 123, "is_bot": True, "first_name": "Haoqing"},
                    "reply_markup": keyboard(MENU)}}}).encode()


# ---- the servers under test (run with --serve in their own process) --------------------------------

async def serve_ours(port: int, api: str) -> web.AppRunner:
    sys.path.insert(0, str(ROOT))
    from bot.channels.telegram import setup_telegram
    from bot.config import Settings
    from bot.server import SANDBOX_REGISTRY_PATH, create_app, tune_gc
    from bot.structured_logs import AccessLogger, configure
    from bot.web.chat import RUNTIME
    from integrations.registry import RegistryClient

    data_dir = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    # --logging shipped: the level and access logger `make run` ships with (JSON lines on stderr, INFO).
    shipped = os.environ.get("BENCH_LOGGING") == "shipped"
    level = "INFO" if shipped else "WARNING"
    settings = Settings(_env_file=None, host="127.0.0.1", port=port, data_dir=data_dir,  # type: ignore[call-arg]
                        secret_key="bench", telegram_bot_token=TOKEN, telegram_api_base_url=api,
                        telegram_webhook_url="https://bench.invalid/telegram/webhook",
                        telegram_webhook_secret=SECRET, log_level=level)
    configure(level)
    app = create_app(settings)
    rt = app[RUNTIME]
    channel = setup_telegram(app, rt)  # create_app mounted it already: this returns that channel
    assert channel is not None
    runner = web.AppRunner(app, access_log_class=AccessLogger) if shipped else web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await rt.registry.close()
    rt.registry = RegistryClient(f"http://127.0.0.1:{port}{SANDBOX_REGISTRY_PATH}", timeout=5)
    await asyncio.wait_for(channel.ready.wait(), 30)
    tune_gc()  # as bot.server.start_server does
    return runner


def _ready_app(handler: Any) -> web.Application:
    app = web.Application()
    app.router.add_post("/telegram/webhook", handler)
    app.router.add_get("/readyz", _ok)
    return app


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve_ptb(port: int, api: str) -> web.AppRunner:
    import warnings

    from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
    from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, ConversationHandler

    warnings.filterwarnings("ignore")
    menu_kb = InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=cid)] for cid, label in MENU])
    settings_kb = InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=cid)] for cid, label in SETTINGS])
    in_menu, in_settings = range(2)

    async def menu(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
        assert update.message is not None
        await update.message.reply_text(MENU_TEXT, reply_markup=menu_kb)
        return in_menu

    async def settings(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
        query = update.callback_query
        assert query is not None and query.message is not None
        await query.answer()
        await query.message.reply_text(SETTINGS_TEXT, reply_markup=settings_kb)  # type: ignore[union-attr]
        return in_settings

    conversation = ConversationHandler(
        entry_points=[CommandHandler("menu", menu)],
        states={in_menu: [CallbackQueryHandler(settings, pattern="^settings$")],
                in_settings: [CommandHandler("menu", menu)]},
        fallbacks=[CommandHandler("menu", menu)])
    application = Application.builder().token(TOKEN).base_url(api).updater(None).build()
    application.add_handler(conversation)
    await application.initialize()
    await application.start()

    async def webhook(request: web.Request) -> web.Response:
        await application.process_update(Update.de_json(await request.json(), application.bot))
        return web.Response()

    runner = web.AppRunner(_ready_app(webhook), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def serve_aiogram(port: int, api: str) -> web.AppRunner:
    from aiogram import Bot, Dispatcher, F, Router
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from aiogram.filters import Command
    from aiogram.fsm.context import FSMContext
    from aiogram.fsm.state import State, StatesGroup
    from aiogram.fsm.storage.memory import MemoryStorage, SimpleEventIsolation
    from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update

    class Flow(StatesGroup):
        menu = State()
        settings = State()

    menu_kb = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text=label, callback_data=cid)]
                                                    for cid, label in MENU])
    settings_kb = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text=label, callback_data=cid)]
                                                        for cid, label in SETTINGS])
    router = Router()

    @router.message(Command("menu"))
    async def menu(message: Message, state: FSMContext) -> None:
        await state.set_state(Flow.menu)
        await message.answer(MENU_TEXT, reply_markup=menu_kb)

    @router.callback_query(Flow.menu, F.data == "settings")
    async def settings(query: CallbackQuery, state: FSMContext) -> None:
        await query.answer()
        await state.set_state(Flow.settings)
        assert query.message is not None
        await query.message.answer(SETTINGS_TEXT, reply_markup=settings_kb)

    dispatcher = Dispatcher(storage=MemoryStorage(), events_isolation=SimpleEventIsolation())
    dispatcher.include_router(router)
    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(api.removesuffix("/bot"))))

    async def webhook(request: web.Request) -> web.Response:
        update = Update.model_validate(await request.json(), context={"bot": bot})
        await dispatcher.feed_update(bot, update)
        return web.Response()

    runner = web.AppRunner(_ready_app(webhook), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def serve_raw(port: int, api: str) -> web.AppRunner:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def close(_app: web.Application) -> None:
        await session.close()

    base = f"{api}{TOKEN}"
    menu_kb, settings_kb = keyboard(MENU), keyboard(SETTINGS)

    async def webhook(request: web.Request) -> web.Response:
        update = await request.json()
        if "callback_query" in update:
            query = update["callback_query"]
            async with session.post(f"{base}/answerCallbackQuery", json={"callback_query_id": query["id"]}) as r:
                await r.read()
            reply = {"chat_id": query["message"]["chat"]["id"], "text": SETTINGS_TEXT, "reply_markup": settings_kb}
        else:
            reply = {"chat_id": update["message"]["chat"]["id"], "text": MENU_TEXT, "reply_markup": menu_kb}
        async with session.post(f"{base}/sendMessage", json=reply) as r:
            await r.read()
        return web.Response()

    app = _ready_app(webhook)
    app.on_cleanup.append(close)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


SERVERS = {"ours": serve_ours, "ptb": serve_ptb, "aiogram": serve_aiogram, "raw": serve_raw, "rawuv": serve_raw}


async def serve(peer: str, port: int, api: str) -> None:
    runner = await SERVERS[peer](port, api)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# ---- the load generator -----------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Run:
    """One offered load against one server: schedules updates, collects replies from the fake's timeline."""

    def __init__(self, http: aiohttp.ClientSession, telegram: aiohttp.ClientSession, url: str, fake: str,
                 first_chat: int) -> None:
        self.http = http
        # Plays Telegram: at most max_connections (40, the default and what ours registers) webhook calls at
        # once per bot; further updates wait on Telegram's side, and that wait counts in their latency.
        self.telegram = telegram
        self.url = url
        self.fake = fake
        self.first_chat = first_chat
        self.errors = 0
        self.sent_before = 0
        self.update_id = first_chat * 10

    async def post(self, body: bytes) -> None:
        try:
            async with self.telegram.post(self.url, data=body, headers={
                    "Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET}) as r:
                answer = await r.read()
                if r.status != 200:
                    self.errors += 1
                    return
            if answer:
                # As Telegram does: a method in the webhook response is run against the Bot API.
                method = json.loads(answer)
                async with self.http.post(f"{self.fake}/bot{TOKEN}/{method.pop('method')}", json=method) as r:
                    await r.read()
        except aiohttp.ClientError:
            self.errors += 1

    async def open_loop(self, rate: float, seconds: float) -> dict[str, float]:
        """`rate` updates/s for `seconds`: half are /menu from new users, half their tap one second later."""
        users = max(1, int(rate * seconds / 2))
        await self._timeline()  # drop what earlier runs left
        schedule: list[tuple[float, int, bytes]] = []
        for u in range(users):
            chat = self.first_chat + u
            at = u / (rate / 2)
            self.update_id += 2
            schedule.append((at, chat, menu_update(self.update_id, chat)))
            schedule.append((at + CLICK_DELAY, chat, click_update(self.update_id + 1, chat)))
        schedule.sort(key=lambda item: item[0])
        expected: dict[int, list[float]] = defaultdict(list)
        tasks = []
        start = time.monotonic()
        for offset, chat, body in schedule:
            when = start + offset
            delay = when - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            expected[chat].append(when)
            tasks.append(asyncio.create_task(self.post(body)))
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with self.http.get(f"{self.fake}/__count") as r:
                sent = (await r.json())["sent"]
            if sent >= self.sent_before + len(schedule):
                break
            await asyncio.sleep(0.1)
        timeline = await self._timeline()
        replies: dict[int, list[float]] = defaultdict(list)
        for method, chat, at in timeline:
            if method == "sendMessage" and chat in expected:
                replies[chat].append(at)
        latencies: list[float] = []
        # Offered load is exactly `rate` between the first tap and the last new user; replies landing in that
        # window measure what the server keeps up with (its capacity, once it falls behind).
        window = (start + CLICK_DELAY, start + seconds)
        in_window = 0
        for chat, sent_at in expected.items():
            for when, got in zip(sent_at, replies.get(chat, []), strict=False):
                latencies.append(got - when)
                in_window += window[0] <= got < window[1]
        lost = len(schedule) - len(latencies)
        self.first_chat += users
        return {"offered": rate, "achieved": in_window / max(window[1] - window[0], 1e-9),
                "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99), "errors": self.errors + lost}

    async def _timeline(self) -> list[tuple[str, int, float]]:
        async with self.http.get(f"{self.fake}/__timeline") as r:
            entries = [tuple(e) for e in await r.json()]
        async with self.http.get(f"{self.fake}/__count") as r:
            self.sent_before = (await r.json())["sent"]
        return entries  # type: ignore[return-value]

    async def closed_loop(self, workers: int, seconds: float) -> tuple[float, int]:
        """Peak: `workers` users doing the flow back to back; every server here replies before its 200.
        Returns updates/s and how many updates that was."""
        done = 0
        stop_at = time.monotonic() + seconds
        chats = iter(range(self.first_chat, self.first_chat + 10**6))

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                chat = next(chats)
                # Telegram's update ids are unique per bot: take both before the first await, or a concurrent
                # user's increment lands in between and two chats' taps share one id (a dedupe collision
                # Telegram never makes, which sent every such tap down the undeduplicated path).
                self.update_id += 2
                update_id = self.update_id
                await self.post(menu_update(update_id, chat))
                await self.post(click_update(update_id + 1, chat))
                done += 2

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.monotonic() - started
        self.first_chat += 10**6
        await self._timeline()
        return done / elapsed, done


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (Linux /proc): unlike updates/s, barely moved by other load on
    the machine, so a fairer figure on shared cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def transport_calls_per_second(api: str, seconds: float) -> dict[str, float]:
    """PTB's Bot.send_message through each transport, 64 calls in flight: the send path's HTTP cost alone."""
    sys.path.insert(0, str(ROOT))
    from telegram import Bot
    from telegram.request import HTTPXRequest

    from bot.channels.telegram_request import AiohttpRequest

    rates: dict[str, float] = {}
    chats = iter(range(9 * 10**8, 10**9))
    for name, make in (("aiohttp (ours)", lambda: AiohttpRequest(connection_pool_size=64)),
                       ("httpx (PTB default)", lambda: HTTPXRequest(connection_pool_size=64))):
        bot = Bot(TOKEN, base_url=api, request=make(), get_updates_request=make())
        await bot.initialize()
        done = 0
        stop_at = time.monotonic() + seconds

        async def worker(bot: Bot = bot, stop_at: float = stop_at) -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                # A new chat each call: the fake holds one chat to Telegram's per-chat pace.
                await bot.send_message(next(chats), "transport bench")
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(64)))
        rates[name] = done / (time.monotonic() - started)
        await bot.shutdown()
    return rates


def aiogram_python(venv: Path) -> str:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import aiogram"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "aiogram>=3.13,<4"], check=True)
    return str(python)


LIFTED = "1000000"


async def flood_check(seconds: float, rate: float) -> bool:
    """Ours under Telegram's real limits, offered more than they allow: every reply still arrives, and the
    fake's log has no second over its limits and no 429. Returns whether it held."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.fake_bot_api import FLOOD_METHODS, flood_violations

    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    env.pop("TELEGRAM_BOT_PER_SECOND", None)
    fake_port, port = free_port(), free_port()
    fake_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.fake_bot_api", "--port", str(fake_port), "--timeline", cwd=ROOT,
        env=env, stdout=asyncio.subprocess.DEVNULL)
    fake = f"http://127.0.0.1:{fake_port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--serve", "ours", "--port", str(port), "--api", f"{fake}/bot",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS)) as telegram:
            await wait_ready(f"{fake}/bot{TOKEN}/getMe", fake_proc)
            await wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
            run = Run(http, telegram, f"http://127.0.0.1:{port}/telegram/webhook", fake, first_chat=7 * 10**8)
            await run._timeline()
            users = int(rate * seconds / 2)
            started = time.monotonic()
            posts = []
            for u in range(users):
                chat = run.first_chat + u
                run.update_id += 2
                delay = started + u / (rate / 2) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                posts.append(asyncio.create_task(run.post(menu_update(run.update_id, chat))))
                posts.append(asyncio.create_task(_later(CLICK_DELAY, run.post(click_update(run.update_id + 1,
                                                                                             chat)))))
            await asyncio.gather(*posts)
            expected = 2 * users
            deadline = time.monotonic() + expected / 25 + 30
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                async with http.get(f"{fake}/__count") as r:
                    counts = await r.json()
                if counts["sent"] >= run.sent_before + expected:
                    break
                await asyncio.sleep(0.5)
            drained = time.monotonic() - started
            timeline = [tuple(e) for e in await (await http.get(f"{fake}/__timeline")).json()]
    finally:
        for p in (proc, fake_proc):
            p.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.wait(), 20)
            except TimeoutError:
                p.kill()
    sends = sorted(at for method, _chat, at in timeline if method in FLOOD_METHODS)
    busiest = max((sum(1 for t in sends[i:] if t - at < 1.0) for i, at in enumerate(sends)), default=0)
    per_chat: dict[int, list[float]] = defaultdict(list)
    for method, chat, at in timeline:
        if method in FLOOD_METHODS:
            per_chat[chat].append(at)
    violations = flood_violations(timeline)
    delivered = counts.get("sent", 0) - run.sent_before
    print(f"flood check (ours, Telegram's limits): offered {rate:.0f} updates/s for {seconds:.0f}s "
          f"({expected} replies); delivered {delivered} in {drained:.1f}s; busiest second {busiest} messages; "
          f"most to one chat {max((len(v) for v in per_chat.values()), default=0)}; "
          f"429s from the fake {counts.get('flood_refusals', '?')}; violations {len(violations)}", flush=True)
    for line in violations[:5]:
        print("  violation:", line)
    return not violations and counts.get("flood_refusals") == 0 and delivered >= expected


async def _later(seconds: float, coro: Any) -> None:
    await asyncio.sleep(seconds)
    await coro


async def bench(args: argparse.Namespace) -> None:
    rates = [int(r) for r in args.rates.split(",")]
    peers = args.peers.split(",") if args.peers else []
    # Throughput: the bot-wide pace lifted on both sides (see the module docstring); per-chat limits hold.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING", "TELEGRAM_BOT_PER_SECOND": LIFTED,
           "BENCH_LOGGING": args.logging}
    fake_port = free_port()
    fake_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.fake_bot_api", "--port", str(fake_port), "--timeline",
        "--bot-per-second", LIFTED, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL)
    fake = f"http://127.0.0.1:{fake_port}"
    api = f"{fake}/bot"
    results: dict[str, tuple[list[dict[str, float]], float, float, float]] = {}
    connector = aiohttp.TCPConnector(limit=200)
    telegram_connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, \
                aiohttp.ClientSession(connector=telegram_connector, timeout=timeout) as telegram:
            await wait_ready(f"{fake}/bot{TOKEN}/getMe", fake_proc)
            print(f"# telegram webhook bench: offered loads {rates}/s for {args.seconds:.0f}s each, two-step flow, "
                  f"closed loop {args.workers} users for {args.seconds:.0f}s; {os.cpu_count()} cores; "
                  f"ours logging {args.logging}")
            if not args.skip_transport:
                transports = await transport_calls_per_second(api, min(args.seconds, 3.0))
                print("send transport, PTB Bot.send_message, 64 in flight: " + ", ".join(
                    f"{name} {rate:.0f} calls/s" for name, rate in transports.items()), flush=True)
            # Every server starts first and idles while another is measured; the closed-loop peak is then taken in
            # `--repeats` rounds that visit the servers in turn, so a slow spell of the shared cores falls on all of
            # them alike, and each figure is the median of its rounds.
            procs: dict[str, asyncio.subprocess.Process] = {}
            runs: dict[str, Run] = {}
            try:
                for n, peer in enumerate(peers):
                    python = aiogram_python(Path(args.aiogram_venv)) if peer == "aiogram" else sys.executable
                    port = free_port()
                    # "base" is ours from another checkout (--base-tree), to measure a change against in one run.
                    tree = Path(args.base_tree).resolve() if peer == "base" else ROOT
                    procs[peer] = await asyncio.create_subprocess_exec(
                        python, str(tree / "bench" / "telegram_webhook.py"), "--serve",
                        "ours" if peer == "base" else peer, "--port", str(port), "--api", api,
                        cwd=tempfile.gettempdir() if peer == "aiogram" else tree,
                        env={**env, "PYTHONPATH": str(tree)},
                        stdout=asyncio.subprocess.DEVNULL,
                        # Shipped logging is written (and paid for) in full, then discarded.
                        stderr=asyncio.subprocess.DEVNULL if args.logging == "shipped" else None)
                    base = f"http://127.0.0.1:{port}"
                    await wait_ready(base + "/readyz", procs[peer])
                    runs[peer] = Run(http, telegram, base + "/telegram/webhook", fake, first_chat=(n + 1) * 10**8)
                    await runs[peer].open_loop(min(rates), 3.0)  # warm-up
                peaks: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
                for round_no in range(args.repeats):
                    for peer in peers:
                        # The peak first: an overloaded open-loop point leaves a backlog behind in some servers.
                        cpu_before = cpu_seconds(procs[peer].pid)
                        # Telegram's side of the same updates, on the same cores: this load generator (which
                        # also runs the methods a webhook response carries, as Telegram does) and the fake Bot API.
                        loadgen_before, fake_before = time.process_time(), cpu_seconds(fake_proc.pid)
                        peak, updates = await runs[peer].closed_loop(args.workers, args.seconds)
                        per = 1000 / max(updates, 1)
                        cpu = per * (cpu_seconds(procs[peer].pid) - cpu_before)
                        loadgen = per * (time.process_time() - loadgen_before)
                        fake_cpu = per * (cpu_seconds(fake_proc.pid) - fake_before)
                        harness = loadgen + fake_cpu
                        peaks[peer].append((peak, cpu, harness))
                        print(f"{peer:<8} round {round_no + 1}: closed loop peak {peak:>7.0f} updates/s, "
                              f"server CPU {cpu:.2f} ms/update, harness CPU {harness:.2f} ms/update "
                              f"(load generator {loadgen:.2f}, fake Bot API {fake_cpu:.2f})", flush=True)
                for peer in peers:
                    points = []
                    for rate in rates:
                        point = await runs[peer].open_loop(rate, args.seconds)
                        points.append(point)
                        print(f"{peer:<8} offered {rate:>5}/s  achieved {point['achieved']:>7.0f}/s  "
                              f"p50 {point['p50']:>8.1f} ms  p99 {point['p99']:>8.1f} ms  "
                              f"errors {point['errors']:.0f}", flush=True)
                    results[peer] = (points, statistics.median(p for p, _, _ in peaks[peer]),
                                     statistics.median(c for _, c, _ in peaks[peer]),
                                     statistics.median(h for _, _, h in peaks[peer]))
            finally:
                for proc in procs.values():
                    proc.send_signal(signal.SIGTERM)
                for proc in procs.values():
                    try:
                        await asyncio.wait_for(proc.wait(), 20)
                    except TimeoutError:
                        proc.kill()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{fake}/__count") as r:
                refusals = (await r.json()).get("flood_refusals")
        if peers:
            print(f"429s the fake gave during the throughput runs (per-chat limits): {refusals}")
    finally:
        fake_proc.send_signal(signal.SIGTERM)
        await fake_proc.wait()
    if args.flood_check:
        held = await flood_check(args.seconds, args.flood_rate)
        print("flood check:", "held" if held else "FAILED")
    if not results:
        return
    print()
    print(f"medians of {args.repeats} closed-loop rounds:")
    print(f"{'peer':<9}{'peak/s':>8}{'CPU ms/update':>15}{'harness ms/update':>19}"
          + "".join(f"{f'p99@{r}':>11}" for r in rates))
    for peer, (points, peak, cpu, harness) in results.items():
        print(f"{peer:<9}{peak:>8.0f}{cpu:>15.2f}{harness:>19.2f}" + "".join(f"{p['p99']:>9.1f}ms" for p in points))
    if "ours" in results:
        _, ours, ours_cpu, ours_harness = results["ours"]
        for peer in ("ptb", "aiogram", "raw", "rawuv", "base"):
            if peer in results:
                _, peak, cpu, harness = results[peer]
                # The closed loop's peak is bounded by the machine: server and harness share its cores, so the
                # last ratio (CPU of both per update) is what the peak ratio tends to.
                print(f"ours / {peer}: {ours / peak:.2f}x peak throughput, {cpu / ours_cpu:.2f}x updates per "
                      f"CPU second of the server, {(cpu + harness) / (ours_cpu + ours_harness):.2f}x of server "
                      f"and harness together")
        if "base" in results:
            # Ours and base get the same replies and the same webhook answers, so the harness does the same work
            # for both: a round's server CPU over its harness CPU cancels out how fast the machine ran that round
            # (on shared cores the CPU per update of one and the same work moves by a third between rounds).
            relative = {peer: statistics.median(c / h for _, c, h in peaks[peer]) for peer in ("ours", "base")}
            print(f"ours / base, server CPU per harness CPU in the same round (medians): "
                  f"{relative['base'] / relative['ours']:.2f}x ({relative['ours']:.3f} against {relative['base']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="250,500,1000,2000")
    parser.add_argument("--seconds", type=float, default=5.0, help="per offered load; at least 3")
    parser.add_argument("--workers", type=int, default=MAX_CONNECTIONS)
    parser.add_argument("--repeats", type=int, default=3, help="closed-loop rounds per server; medians are quoted")
    parser.add_argument("--peers", default="ours,ptb,aiogram,raw,rawuv")
    parser.add_argument("--aiogram-venv", default=str(Path(tempfile.gettempdir()) / "haoqing-bench-aiogram"))
    parser.add_argument("--base-tree", default="",
                        help='a checkout of an earlier commit: peer "base" runs ours from it, for an A/B in one run')
    parser.add_argument("--skip-transport", action="store_true", help="skip the aiohttp-vs-httpx send measure")
    parser.add_argument("--flood-check", action="store_true", help="then run ours under Telegram's real limits")
    parser.add_argument("--logging", choices=("quiet", "shipped"), default="quiet",
                        help="ours at WARNING without access log (quiet), or as `make run` ships it (shipped)")
    parser.add_argument("--flood-rate", type=float, default=60.0, help="updates/s offered in the flood check")
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--api", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seconds = max(args.seconds, 3.0)
    if args.serve:
        factory = None
        if args.serve == "ours":
            # Ours runs on the loop `make run` ships (EVENT_LOOP, bot/loops.py); "rawuv" is the bare webhook on
            # uvloop too, the ceiling to hold ours against on the same loop.
            sys.path.insert(0, str(ROOT))
            from bot.config import Settings
            from bot.loops import loop_factory
            factory = loop_factory(Settings(_env_file=None))  # type: ignore[call-arg]
        elif args.serve == "rawuv":
            import uvloop
            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(args.serve, args.port, args.api))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
