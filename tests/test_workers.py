"""`python -m bot serve --workers N` as an operator runs it: real gunicorn workers on PostgreSQL, the sandbox
registry as its own process, a fake SMS provider; deliveries spread over the workers by the kernel.

Needs PostgreSQL on loopback; under CI=true a missing server fails the tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import IN_CI, Chat
from tests.fakes.fake_tencent_sms import FakeTencentSms, codes_to
from tests.processes import ROOT, free_port, wait_ready
from tests.test_postgres import pg_url  # noqa: F401 - the fixture

# Several processes of their own each: the tests of one group run one after another on one pytest worker, so at
# most two such tests (one per group) load the machine's two cores at once. With tests/test_scale_telegram.py in
# group b: their workers hold up to 42 and 63 PostgreSQL connections, together more than the server's default
# max_connections (100) allows ("too many clients already").
pytestmark = pytest.mark.xdist_group("processes-b")


REGISTRY_TOKEN = "workers-test-registry-token"


class WorkerChat(Chat):
    """A web chat user whose codes come from the fake SMS provider and whose demo numbers come from the
    standalone sandbox registry (the bot itself mounts no sandbox when REGISTRY_URL is set)."""

    sms: FakeTencentSms
    registry: str

    async def latest_code(self, phone: str) -> str:
        codes = codes_to(self.sms, phone)
        assert codes, f"no code sent; {self.text}"
        return codes[-1]

    async def demos(self, kind: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.registry}/numbers", params={"kind": kind},
                                 headers={"Authorization": f"Bearer {REGISTRY_TOKEN}"}) as r:
            assert r.status == 200, await r.text()
            return list(await r.json())


@dataclass
class Topology:
    tmp_path: Path
    database_url: str
    sms: FakeTencentSms
    registry_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    bot: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def registry(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING",
                "DATA_DIR": str(self.tmp_path), "SECRET_KEY": "workers-test-secret",
                "DATABASE_URL": self.database_url, "REGISTRY_URL": self.registry,
                "SMS_PROVIDER": "tencent", "TENCENT_SECRET_ID": self.sms.secret_id,
                "TENCENT_SECRET_KEY": self.sms.secret_key, "TENCENT_SMS_APP_ID": "1400000000",
                "TENCENT_SMS_SIGN_NAME": "号清", "TENCENT_SMS_TEMPLATE_ID": "100001",
                "TENCENT_SMS_ENDPOINT": self.sms.endpoint, "SANDBOX_REGISTRY_TOKEN": REGISTRY_TOKEN,
                "REGISTRY_TOKEN": REGISTRY_TOKEN,
                # Six users verify from this one address: past the third code the web chat would ask for a proof
                # of work (tests/test_browser_guards.py covers it), depending on how their requests interleave.
                "OTP_POW_AFTER": "100", **extra}

    async def start_registry(self, *args: str) -> asyncio.subprocess.Process:
        log_file = (self.tmp_path / "registry.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "integrations.sandbox_registry", "--port", str(self.registry_port),
            "--db", str(self.tmp_path / "registry.sqlite3"), *args, cwd=ROOT, env=self.env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file)
        log_file.close()
        self.procs.append(proc)
        await wait_ready(f"{self.registry}/v1/health", proc, self.tmp_path / "registry.log")
        return proc

    async def start_bot(self, workers: int, **extra: str) -> asyncio.subprocess.Process:
        # Logs go to a file, not a pipe: a pipe nobody drains fills up and then blocks every worker's writes.
        log_file = (self.tmp_path / "bot.log").open("ab")
        self.bot = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", "--workers", str(workers), cwd=ROOT, env=self.env(**extra),
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file)
        log_file.close()
        self.procs.append(self.bot)
        await wait_ready(f"{self.url}/readyz", self.bot, self.tmp_path / "bot.log")
        return self.bot

    def worker_pids(self) -> set[int]:
        assert self.bot is not None
        children = Path(f"/proc/{self.bot.pid}/task/{self.bot.pid}/children").read_text().split()
        return {int(pid) for pid in children}

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


@pytest.fixture
async def topology(tmp_path: Path, pg_url: str) -> AsyncIterator[Topology]:  # noqa: F811
    sms = FakeTencentSms()
    await sms.start()
    top = Topology(tmp_path, pg_url, sms)
    try:
        yield top
    finally:
        await top.stop()
        await sms.close()


async def metric(top: Topology, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{top.url}/metrics") as r:
        assert r.status == 200
        body = await r.text()
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_serve_refuses_what_only_one_process_can_do(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path), "PORT": str(free_port())}
    env.pop("DATABASE_URL", None)
    env.pop("REGISTRY_URL", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve", "--workers", "2", cwd=ROOT,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _out, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"DATABASE_URL" in err and b"REGISTRY_URL" in err


async def test_two_workers_one_transition_per_delivery(topology: Topology) -> None:
    await topology.start_registry()
    await topology.start_bot(2)
    assert len(topology.worker_pids()) == 2
    async with aiohttp.ClientSession() as http:
        probe = WorkerChat(http, topology.url)
        probe.sms, probe.registry = topology.sms, topology.registry
        demos = (await probe.demos("recycled"))[:6]

        async def user(demo: dict[str, Any]) -> tuple[list[str], int]:
            chat = WorkerChat(http, topology.url)
            chat.sms, chat.registry = topology.sms, topology.registry
            await chat.open()
            await chat.verify(demo["phone"])
            assert "前任机主期间绑定" in chat.text, chat.text
            seen = []
            for i in range(8):
                # Each message is delivered three times at once: over a pool of connections, so the copies
                # land on different workers; all three must get the one answer of the one step.
                body = {"id": f"burst-{i}", "text": "/menu" if i % 2 else "/help"}
                answers = await asyncio.gather(*(chat.send(dict(body)) for _ in range(3)))
                assert answers[0] == answers[1] == answers[2]
                seen.extend(str(m["seq"]) for m in answers[0])
            return seen, chat.counter

        per_user = await asyncio.gather(*(user(demo) for demo in demos))
    for seqs, _count in per_user:
        numbers = [int(s) for s in seqs]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), "per-user order, no gaps doubled"
    steps = await metric(topology, "haoqing_updates_total", channel="web", outcome="step")
    replayed = await metric(topology, "haoqing_updates_total", channel="web", outcome="replayed")
    # Every distinct delivery is one step (the verification walk plus 8 bursts a user); the two extra copies of
    # each burst are answered from the inbox.
    assert replayed == 6 * 8 * 2
    assert steps == sum(count for _seqs, count in per_user) + 6 * 8


async def test_sigterm_hands_back_claimed_jobs_and_exits(topology: Topology) -> None:
    registry = await topology.start_registry()
    bot = await topology.start_bot(2, UNBIND_POLL_SECONDS="1", SCHEDULER_POLL_SECONDS="0.2",
                                   REGISTRY_TIMEOUT="60")
    async with aiohttp.ClientSession() as http:
        chat = WorkerChat(http, topology.url)
        chat.sms, chat.registry = topology.sms, topology.registry
        await chat.open()
        demo = (await chat.demos("recycled"))[0]
        await chat.unbind_ready(demo)
        await chat.file_every_unbind()
        assert re.search(r"HQ\d{8}-\w{6}", chat.text), chat.text
    # The registry freezes: the next status sweep claims its job and hangs inside the registry call.
    registry.send_signal(signal.SIGSTOP)
    dsn = topology.database_url.replace("postgresql+asyncpg://", "postgresql://")
    db = await asyncpg.connect(dsn)
    try:
        for _ in range(300):
            running = await db.fetchval("SELECT count(*) FROM jobs WHERE kind = 'unbind.sweep' "
                                        "AND status = 'running'")
            if running:
                break
            await asyncio.sleep(0.1)
        assert running == 1, "the sweep never got stuck in the registry call"
        bot.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bot.wait(), 60) == 0
        row = await db.fetchrow("SELECT status, locked_by, lease_until FROM jobs WHERE kind = 'unbind.sweep'")
    finally:
        await db.close()
        registry.send_signal(signal.SIGCONT)
    assert (row["status"], row["locked_by"], row["lease_until"]) == ("pending", None, None)


async def start_proxy(top: Topology) -> tuple[asyncio.subprocess.Process, str]:
    """docs/nginx.conf, as compose runs it, in front of the workers: only the addresses differ."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        if IN_CI:
            pytest.fail("nginx is not installed (scripts/ensure-services.sh installs nginx-light)")
        pytest.skip("no nginx here")
    port = free_port()
    conf = (ROOT / "docs" / "nginx.conf").read_text()
    conf = conf.replace("server bot:8080", f"server 127.0.0.1:{top.port}").replace("listen 8080", f"listen {port}")
    prefix = top.tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(conf)
    proc = await asyncio.create_subprocess_exec(
        nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
        "-g", f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    top.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    await wait_ready(f"{url}/healthz", proc, prefix / "logs" / "error.log")
    return proc, url


async def test_behind_the_proxy_as_compose_runs_it(topology: Topology) -> None:
    await topology.start_registry()
    await topology.start_bot(2, TRUSTED_PROXIES="127.0.0.1/32")
    _proxy, url = await start_proxy(topology)
    async with aiohttp.ClientSession() as http:
        chat = WorkerChat(http, url)
        chat.sms, chat.registry = topology.sms, topology.registry
        await chat.open()
        demo = (await chat.demos("recycled"))[0]
        await chat.verify(demo["phone"])
        assert "前任机主期间绑定" in chat.text, chat.text
        for path in ("/metrics", "/sandbox/sms?phone=13800138000"):
            async with http.get(url + path) as r:
                assert r.status == 404, path
        # One address opening sessions as fast as it can is slowed at the proxy, before any worker.
        statuses = []
        for _ in range(40):
            async with http.post(url + "/chat/api/sessions", json={}) as r:
                statuses.append(r.status)
        assert 429 in statuses and all(s in (201, 429) for s in statuses), statuses


async def test_kill_9_of_a_worker_its_claimed_job_is_taken_over_once(topology: Topology) -> None:
    registry = await topology.start_registry("--processing-after", "1", "--done-after", "2")
    await topology.start_bot(2, UNBIND_POLL_SECONDS="0.5", SCHEDULER_POLL_SECONDS="0.2", JOB_LEASE_SECONDS="2",
                             REGISTRY_TIMEOUT="60")
    async with aiohttp.ClientSession() as http:
        chat = WorkerChat(http, topology.url)
        chat.sms, chat.registry = topology.sms, topology.registry
        await chat.open()
        demo = (await chat.demos("recycled"))[1]
        await chat.unbind_ready(demo)
        await chat.file_every_unbind()
        assert re.search(r"HQ\d{8}-\w{6}", chat.text), chat.text
        seen = max(m["seq"] for m in chat.last)
        registry.send_signal(signal.SIGSTOP)
        dsn = topology.database_url.replace("postgresql+asyncpg://", "postgresql://")
        db = await asyncpg.connect(dsn)
        try:
            holder = None
            for _ in range(300):
                holder = await db.fetchval("SELECT locked_by FROM jobs WHERE kind = 'unbind.sweep' "
                                           "AND status = 'running'")
                if holder:
                    break
                await asyncio.sleep(0.1)
            assert holder, "the sweep never got stuck in the registry call"
            victim = int(holder.split("-")[0])
            assert victim in topology.worker_pids()
            os.kill(victim, signal.SIGKILL)
            registry.send_signal(signal.SIGCONT)
            # Another worker takes the job over once its lease runs out, and the request runs to its end.
            status = ""
            for _ in range(600):
                status = await db.fetchval("SELECT status FROM unbind_requests")
                if status in ("done", "rejected"):
                    break
                await asyncio.sleep(0.1)
            assert status in ("done", "rejected"), status
            taken_over = await db.fetchval("SELECT locked_by FROM jobs WHERE kind = 'unbind.sweep'")
            assert taken_over is None or not taken_over.startswith(f"{victim}-")
        finally:
            await db.close()
        pushed: list[dict[str, Any]] = []
        for _ in range(100):
            pushed = await chat.pushed(seen)
            if any(status in m["text"] for m in pushed for status in ("已完成", "未能解绑", "完成")):
                break
            await asyncio.sleep(0.1)
    # One message per change of status, none doubled by the takeover.
    texts = [m["text"] for m in pushed]
    assert len(texts) == len(set(texts)) and 1 <= len(texts) <= 3, texts
