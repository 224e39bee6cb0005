"""PostgreSQL restarted under load: while it is down every delivery is answered 503 (so Telegram and WeChat
deliver again) and /readyz says so; once it is back, each delivery counts once.

Runs its own PostgreSQL server (initdb in a temporary folder, on its own port), so stopping it disturbs
nothing else. Under CI=true missing PostgreSQL binaries fail the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.server import start_server
from tests.conftest import IN_CI, Chat, make_settings
from tests.processes import free_port

# Several processes of their own each: the tests of one group run one after another on one pytest worker, so at
# most two such tests (one per group) load the machine's two cores at once.
pytestmark = pytest.mark.xdist_group("processes-a")



@dataclass
class PrivatePostgres:
    bin: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _command(self, *args: str) -> list[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        # initdb and the server refuse to run as root; the Debian package's postgres user runs them.
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    async def run(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(*self._command(*args), stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]

    async def start(self) -> None:
        await self.run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.data / "server.log"), "-o",
                       f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    async def stop(self) -> None:
        await self.run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")


@pytest.fixture
async def private_pg(tmp_path: Path) -> AsyncIterator[PrivatePostgres]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        if IN_CI:
            pytest.fail("PostgreSQL server binaries are missing (Debian's postgresql package)")
        pytest.skip("no PostgreSQL server binaries")
    # Outside pytest's root-only temporary folder: the server runs as the postgres user and must reach it.
    data = Path(tempfile.mkdtemp(prefix="haoqing-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    pg = PrivatePostgres(Path(found[-1]).parent, data, free_port())
    try:
        await pg.run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        await pg.start()
        yield pg
    finally:
        if (data / "postmaster.pid").exists():
            await pg.stop()
        shutil.rmtree(data, ignore_errors=True)


async def deliver(chat: Chat, body: dict[str, Any]) -> tuple[list[int], list[dict[str, Any]]]:
    """Sends `body` as a channel would: again and again while the answer is 503. Returns the statuses seen."""
    statuses = []
    for _ in range(200):
        async with chat.http.post(chat.url, json=body) as r:
            statuses.append(r.status)
            payload = await r.json()
        if r.status != 503:
            assert r.status == 200, payload
            return statuses, payload["messages"]
        assert r.headers.get("Retry-After") == "5"
        await asyncio.sleep(0.1)
    raise AssertionError(f"never answered: {statuses[-5:]}")


async def test_postgres_restart_gets_503_then_each_delivery_once(tmp_path: Path,
                                                                 private_pg: PrivatePostgres) -> None:
    server = await start_server(make_settings(tmp_path, database_url=private_pg.url))
    try:
        async with aiohttp.ClientSession() as http:
            chat = await Chat(http, server.url).open()
            await chat.send({"id": "before", "text": "/start"})
            await private_pg.stop()
            async with http.get(server.url + "/readyz") as r:
                assert r.status == 503
            down = [await chat.http.post(chat.url, json={"id": f"m{i}", "text": "/help"}) for i in range(5)]
            assert [r.status for r in down] == [503] * 5
            for response in down:
                response.release()
            await private_pg.start()
            answers = [await deliver(chat, {"id": f"m{i}", "text": "/help"}) for i in range(5)]
            again = [await deliver(chat, {"id": f"m{i}", "text": "/help"}) for i in range(5)]
            assert [a[1] for a in answers] == [a[1] for a in again], "a repeat gets the first answer"
            seqs = [m["seq"] for _statuses, messages in answers for m in messages]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "each delivery stepped once, in order"
            async with http.get(server.url + "/readyz") as r:
                assert r.status == 200
    finally:
        await server.stop()


async def test_telegram_webhooks_get_503_while_postgres_is_down_and_count_once_after(
        tmp_path: Path, private_pg: PrivatePostgres) -> None:
    from tests.fakes.fake_bot_api import FakeBotApi

    token, secret = "123456:OUTAGE-TEST", "outage-test-secret"
    fake = FakeBotApi(token)
    await fake.start()
    server = await start_server(make_settings(
        tmp_path, database_url=private_pg.url, telegram_bot_token=token, telegram_api_base_url=fake.base_url,
        telegram_webhook_url="https://bot.example.test/telegram/webhook", telegram_webhook_secret=secret))
    chat_id = 424242

    def update(update_id: int, text: str) -> dict[str, Any]:
        who = {"id": chat_id, "is_bot": False, "first_name": "U", "language_code": "zh-hans"}
        return {"update_id": update_id, "message": {"message_id": update_id, "date": 1_790_000_000, "text": text,
                                                    "chat": {"id": chat_id, "type": "private"}, "from": who}}

    try:
        async with aiohttp.ClientSession() as http:
            async def post(body: dict[str, Any]) -> int:
                async with http.post(f"{server.url}/telegram/webhook", json=body,
                                     headers={"X-Telegram-Bot-Api-Secret-Token": secret}) as r:
                    return r.status

            assert await post(update(1, "/start")) == 200
            await private_pg.stop()
            # Telegram retries every non-2xx; more tries than the give-up count, none of them a 200.
            assert [await post(update(2 + i % 3, "/help")) for i in range(9)] == [503] * 9
            await private_pg.start()
            for update_id in (2, 3, 4):
                for _ in range(100):
                    if await post(update(update_id, "/help")) == 200:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"update {update_id} never accepted")
            # Once each: a further retry of the same updates changes nothing.
            assert [await post(update(i, "/help")) for i in (2, 3, 4)] == [200, 200, 200]
            import asyncpg

            db = await asyncpg.connect(private_pg.url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                done = await db.fetchval("SELECT count(*) FROM inbox WHERE channel = 'telegram' "
                                         "AND status = 'done'")
            finally:
                await db.close()
            assert done == 4
    finally:
        await server.stop()
        await fake.stop()
