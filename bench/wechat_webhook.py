"""WeChat webhook messages/s and p50/p99 latency at fixed offered loads, plaintext and safe (AES) mode, on SQLite.

Each request is a real signed WeChat text message ("/menu": inbox insert, state load, machine step, state +
outbox + inbox commit) from one of --users followers, with a fresh MsgId and nonce; in safe mode it is
encrypted and the reply comes back encrypted. The server runs in its own process (`--serve`), so the load
generator does not share its event loop; offered load is open-loop (no coordinated omission).

Usage: .venv/bin/python bench/wechat_webhook.py [--plain-rates 250,500,750,1500] [--safe-rates 250,500,1000]
                                               [--seconds 5] [--users 1000] [--repeats 1] [--server-cpu 0]
--server-cpu N pins the server process (all its threads) to CPU N with taskset, and the load generator to
the other CPUs, for the "one core" figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

# Run as `python bench/wechat_webhook.py`, so bench/ is on sys.path.
from loadgen import closed_loop, free_port, open_loop

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
APP_ID = "wx-bench-app"
AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")


async def serve(port: int, data_dir: str, safe: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from aiohttp import web

    from bot.channels.wechat import WECHAT, setup_wechat
    from bot.config import Settings
    from bot.server import create_app
    from bot.structured_logs import configure
    from bot.web.chat import RUNTIME

    settings = Settings(_env_file=None, host="127.0.0.1", port=port, data_dir=Path(data_dir),
                        secret_key="bench", wechat_token=TOKEN, wechat_app_id=APP_ID,
                        wechat_app_secret="unused", wechat_api_base_url="http://127.0.0.1:9",
                        wechat_aes_key=AES_KEY if safe else "", log_level="WARNING")
    configure(settings.log_level, settings.log_file)
    app = create_app(settings)
    if WECHAT not in app:
        setup_wechat(app, app[RUNTIME])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


async def start_server(data_dir: str, port: int, safe: bool, cpu: int | None) -> asyncio.subprocess.Process:
    args = [sys.executable, __file__, "--serve", str(port), data_dir] + (["--safe"] if safe else [])
    if cpu is not None:
        args = ["taskset", "-c", str(cpu), *args]
    proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise SystemExit("server did not start")
    return proc


# --- the load generator -------------------------------------------------------------------------------------
class Requests:
    """Builds signed (and in safe mode encrypted) deliveries; every call is a new MsgId and nonce."""

    def __init__(self, base: str, users: int, safe: bool) -> None:
        self.url = base + "/wechat"
        self.openids = [f"oBench{i:010d}" for i in range(users)]
        self.safe = safe
        self.msg_id = random.randrange(10**15, 10**16)
        if safe:
            from wechatpy.crypto import WeChatCrypto

            self.crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)

    def __call__(self, i: int) -> tuple[str, dict[str, str], bytes]:
        self.msg_id += 1
        ts, nonce = str(int(time.time())), str(random.randrange(10**9, 10**10))
        signature = hashlib.sha1("".join(sorted([TOKEN, ts, nonce])).encode()).hexdigest()
        inner = (f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA["
                 f"{self.openids[i % len(self.openids)]}]]></FromUserName><CreateTime>{ts}</CreateTime>"
                 f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[/menu]]></Content>"
                 f"<MsgId>{self.msg_id}</MsgId></xml>")
        params = {"signature": signature, "timestamp": ts, "nonce": nonce}
        if not self.safe:
            return self.url, params, inner.encode()
        import xmltodict

        sealed = xmltodict.parse(self.crypto.encrypt_message(inner, nonce, ts))["xml"]
        params.update(encrypt_type="aes", msg_signature=sealed["MsgSignature"])
        body = f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA[{sealed['Encrypt']}]]>" \
               f"</Encrypt></xml>"
        return self.url, params, body.encode()


def sender(http: aiohttp.ClientSession, make: Callable[[int], tuple[str, dict[str, str], bytes]],
           *, prepare: int = 0) -> Callable[[int], Any]:
    # Open-loop requests are built ahead, so building them does not eat into the schedule.
    prepared = [make(i) for i in range(prepare)]

    async def send(i: int) -> bool:
        url, params, body = prepared[i] if i < len(prepared) else make(i)
        try:
            async with http.post(url, params=params, data=body) as r:
                await r.read()
                return r.status == 200
        except aiohttp.ClientError:
            return False

    return send


async def run_mode(safe: bool, rates: list[int], args: argparse.Namespace) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        proc = await start_server(data_dir, port, safe, args.server_cpu)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as http:
                make = Requests(f"http://127.0.0.1:{port}", args.users, safe)
                # Warm-up: every follower exists and has a conversation before anything is measured.
                for start in range(0, args.users, 100):
                    await asyncio.gather(*(_post(http, make(i)) for i in range(start, min(args.users, start + 100))))
                mode = "safe (AES)" if safe else "plaintext"
                for rate in rates:
                    runs = [await open_loop(rate, args.seconds, sender(http, make, prepare=int(rate * args.seconds)))
                            for _ in range(args.repeats)]
                    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                    print(f"{mode:<12}{rate:>10}{med['achieved']:>12.0f}{med['p50']:>9.1f}{med['p99']:>9.1f}"
                          f"{med['errors']:>8.0f}", flush=True)
                peak = await closed_loop(64, args.seconds, sender(http, make))
                print(f"{mode:<12}{'closed/64':>10}{peak:>12.0f}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


async def _post(http: aiohttp.ClientSession, request: tuple[str, dict[str, str], bytes]) -> Any:
    url, params, body = request
    async with http.post(url, params=params, data=body) as r:
        await r.read()
        if r.status != 200:
            raise SystemExit(f"warm-up got HTTP {r.status}: {await r.text()}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plain-rates", default="250,500,750,1500")
    parser.add_argument("--safe-rates", default="250,500,1000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--server-cpu", type=int, default=None)
    args = parser.parse_args()
    if args.server_cpu is not None and hasattr(os, "sched_setaffinity"):
        others = (os.sched_getaffinity(0) - {args.server_cpu}) or {args.server_cpu}
        os.sched_setaffinity(0, others)
    pinned = f"pinned to CPU {args.server_cpu}" if args.server_cpu is not None else "not pinned"
    print(f"# WeChat webhook bench: {args.users} followers, {args.seconds:.0f}s per point, median of "
          f"{args.repeats}; server in its own process ({pinned}); SQLite")
    print(f"{'mode':<12}{'offered/s':>10}{'achieved/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    await run_mode(False, [int(r) for r in args.plain_rates.split(",") if r], args)
    await run_mode(True, [int(r) for r in args.safe_rates.split(",") if r], args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3], "--safe" in sys.argv))
    else:
        asyncio.run(main())
