"""Broadcast benchmarks (issue 14). Prints its figures; run `python bench/broadcast.py [capacity|interactive|memory]`.

- capacity: the engine with the channel limits lifted (a transport that accepts at once), one process on one
  core, SQLite: messages per second, against a same-run baseline of the bare database work (claim and settle the
  same rows with no engine around them).
- interactive: the p99 of a user's reply time through the Telegram webhook while a broadcast runs at the channel
  limit, against the p99 with no broadcast, in the same run (the bot and the fake Bot API as separate processes):
  rounds of one phase of each kind, in alternating order, a few hundred replies a phase; the median across rounds
  of the per-round p99s and ratios, the pooled figures, the bot's CPU, and how busy the machine was with other
  work meanwhile (on a shared machine that, more than anything, moves a p99).
- memory: peak RSS of the process that creates and sends a 1,000,000-recipient broadcast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.broadcasts import SENT, BroadcastEngine, BroadcastService, Delivery, Outcome  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.i18n import Catalog  # noqa: E402
from bot.storage import Database  # noqa: E402
from bot.vault import Vault  # noqa: E402
from tests.broadcast_support import Recipient, insert, migrate  # noqa: E402

SECRET = "bench-broadcast-secret"
TEXTS = {"zh_CN": "号清提醒：系统将于周六维护。", "en": "Haoqing: maintenance on Saturday."}


class Accept:
    """The channel with its limits lifted: every send is accepted at once."""

    channel = "telegram"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.count = 0

    async def send(self, delivery: Delivery) -> Outcome:
        self.count += 1
        return SENT


def _service(data_dir: Path) -> tuple[Database, BroadcastService]:
    # The deployment runs Telegram (its users are reachable); the bench swaps in its own transport.
    settings = Settings(_env_file=None, data_dir=data_dir, secret_key=SECRET,  # type: ignore[call-arg]
                        telegram_bot_token=TOKEN)
    db = Database(settings.resolved_database_url())
    return db, BroadcastService(db, Vault(SECRET.encode()), Catalog.load(), settings)


async def _populate(data_dir: Path, users: int) -> None:
    path = await migrate(data_dir)
    insert(path, SECRET, (Recipient("telegram", str(500_000_000 + i), lang="en" if i % 3 == 0 else "zh_CN")
                          for i in range(users)))


async def _run_engine(data_dir: Path, concurrency: int) -> dict[str, float]:
    db, service = _service(data_dir)
    created = await service.create(texts=TEXTS, segment={}, dry_run=False)
    transport = Accept(concurrency)
    engine = BroadcastEngine(service, {"telegram": transport}, poll_seconds=0.05, round_seconds=0.0)
    await service.start(created["id"])
    wall, cpu = time.perf_counter(), time.process_time()
    runner = asyncio.create_task(engine.run_forever())
    while (await service.status(created["id"]))["status"] != "done":
        await asyncio.sleep(0.2)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    status = await service.status(created["id"])
    await db.close()
    assert status["sent"] == created["recipients"] == transport.count, status
    return {"messages": transport.count, "wall": wall, "cpu": cpu}


async def _baseline(data_dir: Path, batch: int) -> dict[str, float]:
    """The same claims and settles as bare SQL, batch by batch, with no engine: the floor the engine sits on."""
    from sqlalchemy import text

    from bot.storage import sqlite_time, utcnow

    db, service = _service(data_dir)
    created = await service.create(texts=TEXTS, segment={}, dry_run=False)
    now = sqlite_time(utcnow())
    wall, cpu = time.perf_counter(), time.process_time()
    done = 0
    while True:
        async with db.engine.begin() as conn:
            rows = (await conn.execute(text(
                "UPDATE broadcast_recipients SET status = 'sending', claimed_at = :now WHERE id IN (SELECT id FROM "
                "broadcast_recipients WHERE broadcast_id = :bid AND status = 'pending' ORDER BY id LIMIT :n) "
                "RETURNING id, user_id"), {"now": now, "bid": created["id"], "n": batch})).all()
            if not rows:
                break
            await conn.execute(text("SELECT id, external_enc FROM users WHERE id IN (" + ",".join(
                str(int(r[1])) for r in rows) + ")"))
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE broadcast_recipients SET status = 'sent' WHERE id IN (" + ",".join(
                str(int(r[0])) for r in rows) + ")"))
        done += len(rows)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await db.close()
    return {"messages": done, "wall": wall, "cpu": cpu}


def capacity(users: int, runs: int) -> None:
    rates, base_rates = [], []
    for run in range(runs):
        with tempfile.TemporaryDirectory() as scratch:
            data = Path(scratch)
            asyncio.run(_populate(data, users))
            base = asyncio.run(_baseline(data, 512))
        with tempfile.TemporaryDirectory() as scratch:
            data = Path(scratch)
            asyncio.run(_populate(data, users))
            got = asyncio.run(_run_engine(data, 1024))
        rates.append(got["messages"] / got["wall"])
        base_rates.append(base["messages"] / base["wall"])
        print(f"  run {run + 1}: engine {rates[-1]:,.0f} msg/s (cpu {got['cpu']:.1f} s for {got['wall']:.1f} s wall); "
              f"bare SQL {base_rates[-1]:,.0f} rows/s", flush=True)
    engine, bare = statistics.median(rates), statistics.median(base_rates)
    print(f"capacity, {users:,} recipients, limits lifted, one process: median {engine:,.0f} messages/s "
          f"(target >= 3,000); {engine / bare:.2f}x the bare claim-and-settle SQL ({bare:,.0f} rows/s)")


# --- memory -----------------------------------------------------------------------------------------------------


def memory(users: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        started = time.perf_counter()
        asyncio.run(_populate(data, users))
        print(f"  {users:,} users written in {time.perf_counter() - started:.0f} s", flush=True)
        child = subprocess.run([sys.executable, __file__, "_memory_child", str(data)], capture_output=True,
                               text=True, check=False)
        if child.returncode != 0:
            raise SystemExit(child.stderr[-3000:])
        figures = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"memory, {figures['messages']:,}-recipient broadcast created and sent in one process: peak RSS "
          f"{figures['peak_rss_mb']:.0f} MB (target <= 200 MB); baseline after imports "
          f"{figures['baseline_rss_mb']:.0f} MB; {figures['messages'] / figures['wall']:,.0f} msg/s")


def _hwm_mb() -> float:
    """This process's peak RSS (VmHWM): unlike ru_maxrss, it starts afresh at exec, not at the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(data: str) -> None:
    baseline = _hwm_mb()
    got = asyncio.run(_run_engine(Path(data), 1024))
    print(json.dumps({"peak_rss_mb": _hwm_mb(), "baseline_rss_mb": baseline, **got}))


# --- interactive latency ----------------------------------------------------------------------------------------


TOKEN = "123456:BENCH-broadcast"
HOOK_SECRET = "bench-broadcast-hook"


def _text_update(update_id: int, chat_id: int) -> bytes:
    return json.dumps({"update_id": update_id, "message": {
        "message_id": update_id, "date": int(time.time()), "text": "/menu",
        "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
        "chat": {"id": chat_id, "type": "private", "first_name": "B"},
        "from": {"id": chat_id, "is_bot": False, "first_name": "B", "language_code": "zh-hans"}}}).encode()


def _cpu(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds these processes used), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for v in fields[:8]) - int(fields[3]) - int(fields[4])  # all but idle and iowait
    ours = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ours += int(stat[11]) + int(stat[12])
    return busy / tick, ours / tick


class Load:
    """How busy the machine was with other work (other engineers' tests) between two marks: cores' worth of CPU
    used by everything but the bench, the bot and the fake Bot API."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.mark()

    def mark(self) -> None:
        self.at, (self.busy, self.ours) = time.monotonic(), _cpu(self.pids)

    def others(self) -> float:
        busy, ours = _cpu(self.pids)
        return max(0.0, (busy - self.busy) - (ours - self.ours)) / max(time.monotonic() - self.at, 0.001)


async def _interactive(seconds: float, rounds: int, users: int, rate: float, recipients: int) -> None:
    """Rounds of two phases each, one with a broadcast running and one without, in alternating order (ABBA), while
    users talk to the bot at `rate` updates/s; every round gives a p99 of each phase and their ratio."""
    import aiohttp
    from loadgen import free_port, pct, wait_ready  # type: ignore[import-not-found]

    scratch = tempfile.TemporaryDirectory()
    data = Path(scratch.name)
    await migrate(data)
    insert(data / "haoqing.sqlite3", SECRET, (Recipient("telegram", str(800_000_000 + i)) for i in range(recipients)))
    fake_port, port = free_port(), free_port()
    fake = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.fake_bot_api", "--port", str(fake_port), "--timeline", "--token", TOKEN,
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL)
    env = {**os.environ, "DATA_DIR": str(data), "SECRET_KEY": SECRET, "PORT": str(port), "HOST": "127.0.0.1",
           "LOG_LEVEL": "WARNING", "TELEGRAM_BOT_TOKEN": TOKEN,
           "TELEGRAM_API_BASE_URL": f"http://127.0.0.1:{fake_port}/bot",
           "TELEGRAM_WEBHOOK_URL": "https://bot.example.test/telegram/webhook",
           "TELEGRAM_WEBHOOK_SECRET": HOOK_SECRET}
    bot = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", cwd=ROOT, env=env,
                                               stdout=asyncio.subprocess.DEVNULL)
    db, service = _service(data)
    fake_url, hook = f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{port}/telegram/webhook"
    per_round: list[dict[str, list[float]]] = []
    pooled: dict[str, list[float]] = {"quiet": [], "broadcast": []}
    broadcast_rates: list[float] = []
    bot_cpu: dict[str, list[float]] = {"quiet": [], "broadcast": []}
    others_by_phase: list[float] = []
    loads: list[float] = []
    load = Load([os.getpid(), bot.pid, fake.pid])
    # Every reply as (posted at, latency, chat), for BENCH_SAMPLES=path: to line up with the bot's own traces.
    samples: list[tuple[float, float, int]] = []
    try:
        await wait_ready(f"http://127.0.0.1:{port}/readyz", bot)
        created = await service.create(texts=TEXTS, segment={}, dry_run=False)
        broadcast_id = int(created["id"])
        update_id = 1
        started = False
        async with aiohttp.ClientSession() as http:
            async def timeline() -> list[tuple[str, int, float]]:
                async with http.get(f"{fake_url}/__timeline") as r:
                    return [tuple(e) for e in await r.json()]  # type: ignore[misc]

            async def post(body: bytes) -> None:
                async with http.post(hook, data=body, headers={"Content-Type": "application/json",
                                                               "X-Telegram-Bot-Api-Secret-Token": HOOK_SECRET}) as r:
                    await r.read()

            async def phase(out: list[float], cpu: list[float]) -> float:
                """Users talk for `seconds`; each reply's latency (update posted -> the fake gets sendMessage)
                goes into `out`, the bot's CPU share meanwhile into `cpu`. Returns the broadcast messages per
                second the fake got meanwhile."""
                nonlocal update_id
                await timeline()
                bot_cpu = _cpu([bot.pid])[1]
                phase_load = Load(load.pids)
                sent: dict[int, list[float]] = {}
                tasks = []
                start = time.monotonic()
                for n in range(int(rate * seconds)):
                    chat = 900_000_000 + n % users
                    when = start + n / rate
                    delay = when - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    update_id += 1
                    sent.setdefault(chat, []).append(when)
                    tasks.append(asyncio.create_task(post(_text_update(update_id, chat))))
                await asyncio.gather(*tasks)
                end = time.monotonic()
                cpu.append((_cpu([bot.pid])[1] - bot_cpu) / max(end - start, 0.001))
                others_by_phase.append(phase_load.others())
                await asyncio.sleep(2.0)
                replies: dict[int, list[float]] = {}
                others = 0
                for method, chat, at in await timeline():
                    if method == "sendMessage" and chat in sent:
                        replies.setdefault(chat, []).append(at)
                    elif method == "sendMessage" and start <= at <= end:
                        others += 1
                for chat, whens in sent.items():
                    got = replies.get(chat, [])
                    for when in whens:
                        first = next((at for at in got if at >= when), None)
                        if first is not None:
                            out.append(first - when)
                            got.remove(first)
                            samples.append((when, first - when, chat))
                return others / max(end - start, 0.001)

            async def broadcasting(out: list[float]) -> None:
                nonlocal started
                await (service.resume if started else service.start)(broadcast_id)
                started = True
                await asyncio.sleep(2.0)  # at its rate before the phase starts
                broadcast_rates.append(await phase(out, bot_cpu["broadcast"]))
                await service.pause(broadcast_id)
                await asyncio.sleep(3.0)  # the sends claimed before the pause go out

            await phase([], [])  # warm-up: users created, caches filled
            for n in range(rounds):
                got: dict[str, list[float]] = {"quiet": [], "broadcast": []}
                load.mark()
                # ABBA: the order alternates, so a drift in the machine's load weighs on both kinds alike.
                if n % 2 == 0:
                    await phase(got["quiet"], bot_cpu["quiet"])
                    await broadcasting(got["broadcast"])
                else:
                    await broadcasting(got["broadcast"])
                    await phase(got["quiet"], bot_cpu["quiet"])
                loads.append(load.others())
                per_round.append(got)
                for kind in pooled:
                    pooled[kind].extend(got[kind])
                quiet, busy = pct(got["quiet"], 0.99), pct(got["broadcast"], 0.99)
                print(f"  round {n + 1}: p99 quiet {quiet:.0f} ms, broadcast {busy:.0f} ms ({busy / quiet:.2f}x); "
                      f"p50 {pct(got['quiet'], 0.5):.0f} / {pct(got['broadcast'], 0.5):.0f} ms; "
                      f"{len(got['quiet'])} / {len(got['broadcast'])} replies; broadcast "
                      f"{broadcast_rates[-1]:.1f} msg/s; bot CPU {bot_cpu['quiet'][-1]:.0%} / "
                      f"{bot_cpu['broadcast'][-1]:.0%} of a core; other work on the machine {loads[-1]:.2f} cores "
                      f"(by phase, in order: {others_by_phase[-2]:.2f}, {others_by_phase[-1]:.2f})",
                      flush=True)
        rate_setting = service.settings.telegram_broadcast_per_second
        q99 = [pct(r["quiet"], 0.99) for r in per_round]
        b99 = [pct(r["broadcast"], 0.99) for r in per_round]
        ratios = [b / q for b, q in zip(b99, q99, strict=True)]
        med_b, med_q, med_ratio = statistics.median(b99), statistics.median(q99), statistics.median(ratios)
        pool_b, pool_q = pct(pooled["broadcast"], 0.99), pct(pooled["quiet"], 0.99)
        print(f"interactive, {rate:g} updates/s from {users} users, {rounds} rounds of {seconds:g} s phases, "
              f"broadcast at TELEGRAM_BROADCAST_PER_SECOND={rate_setting:g} (median "
              f"{statistics.median(broadcast_rates):.1f} msg/s got through) under a bot-wide 28/s; other work on the "
              f"2 cores: {min(loads):.2f}..{max(loads):.2f} cores (median {statistics.median(loads):.2f}):")
        print(f"  bot CPU, median: {statistics.median(bot_cpu['quiet']):.0%} of a core quiet, "
              f"{statistics.median(bot_cpu['broadcast']):.0%} with the broadcast")
        print(f"  median of per-round p99s: {med_b:.0f} ms with the broadcast vs {med_q:.0f} ms without; median "
              f"per-round ratio {med_ratio:.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})")
        print(f"  pooled: p99 {pool_b:.0f} vs {pool_q:.0f} ms ({pool_b / pool_q:.2f}x), p50 "
              f"{pct(pooled['broadcast'], 0.5):.0f} vs {pct(pooled['quiet'], 0.5):.0f} ms, "
              f"{len(pooled['broadcast'])} and {len(pooled['quiet'])} replies")
        for label, ok in ((f"p99 with the broadcast <= 100 ms (median {med_b:.0f} ms)", med_b <= 100),
                          (f"p99 within 10% of the quiet p99 (median ratio {med_ratio:.2f}x)", med_ratio <= 1.10)):
            print(f"  target {label}: {'MET' if ok else 'NOT MET'}")
        if os.environ.get("BENCH_SAMPLES"):
            Path(os.environ["BENCH_SAMPLES"]).write_text(json.dumps(samples))
    finally:
        for proc in (bot, fake):
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        await db.close()
        scratch.cleanup()


def interactive(seconds: float, rounds: int, rate: float) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    asyncio.run(_interactive(seconds, rounds, users=60, rate=rate, recipients=20_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="*", default=["capacity", "interactive", "memory"])
    parser.add_argument("--users", type=int, default=50_000, help="capacity: recipients")
    parser.add_argument("--memory-users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=45.0, help="interactive: seconds per phase")
    parser.add_argument("--rounds", type=int, default=5, help="interactive: rounds of a quiet and a broadcast phase")
    parser.add_argument("--rate", type=float, default=6.0,
                        help="interactive: user updates per second (with the broadcast's 20/s, under the bot's 28/s)")
    args = parser.parse_args()
    if args.what[:1] == ["_memory_child"]:
        _memory_child(args.what[1])
        return
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "")
    for what in args.what:
        if what == "capacity":
            capacity(args.users, args.runs)
        elif what == "memory":
            memory(args.memory_users)
        elif what == "interactive":
            interactive(args.seconds, args.rounds, args.rate)


if __name__ == "__main__":
    main()
