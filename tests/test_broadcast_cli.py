"""`python -m bot broadcast ...` as an operator runs it (issue 14): a separate process on the data folder of a running
bot, whose engine picks up what the CLI starts. Dry run, create, start, status --watch to the end with its progress
bar, the report as CSV, list, the schedule with pause/resume/cancel, bad input and the wrong state as exit codes,
and the audit log.

The bot is a real process. The CLI runs in this process (`bot.broadcast_cli.run_cli`, what `python -m bot broadcast`
runs, with its own database connection as the command has), except where the separate process is the point: the
`start` that the running bot's engine picks up, and the first command on a fresh data folder (`python -m bot
broadcast` as an operator types it, migrating the folder). A CLI process costs about 2 s of CPU to start."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bot.broadcast_cli import run_cli
from bot.config import Settings
from tests.conftest import Chat
from tests.processes import ROOT, free_port, start_bot

SECRET = "broadcast-cli-secret"
TEXT_ZH = "号清提醒：命令行群发测试。"
TEXT_EN = "Haoqing: a broadcast from the command line."


class Cli:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "DATA_DIR": str(data_dir), "SECRET_KEY": SECRET, "LOG_LEVEL": "WARNING"}

    async def __call__(self, *args: str, expect: int = 0, process: bool = False) -> tuple[str, str]:
        """The command's (stdout, stderr), in this process or, with `process`, as `python -m bot broadcast`."""
        if process:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "broadcast", *args, cwd=ROOT,
                                                        env=self.env, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            raw_out, raw_err = await asyncio.wait_for(proc.communicate(), timeout=300)
            code, out, err = proc.returncode, raw_out.decode(), raw_err.decode()
        else:
            settings = Settings(_env_file=None, data_dir=self.data_dir, secret_key=SECRET)  # type: ignore[call-arg]
            out_io, err_io = io.StringIO(), io.StringIO()
            code = await asyncio.wait_for(run_cli(list(args), settings, out_io, err_io), timeout=300)
            out, err = out_io.getvalue(), err_io.getvalue()
        assert code == expect, (args, code, out, err)
        return out, err

    async def json(self, *args: str, process: bool = False) -> Any:
        out, _err = await self(*args, "--json", process=process)
        return json.loads(out)


async def test_the_cli_composes_starts_watches_and_reports_against_a_running_bot(tmp_path: Path) -> None:
    port = free_port()
    bot = await start_bot(port, {"DATA_DIR": str(tmp_path), "SECRET_KEY": SECRET})
    base = f"http://127.0.0.1:{port}"
    cli = Cli(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            chats = []
            for lang in ("zh_CN", "zh_CN", "en"):
                chat = await Chat(http, base).open(lang)
                await chat.say("/start")
                chats.append(chat)
            quiet = await Chat(http, base).open("zh_CN")
            await quiet.say("/start")
            await quiet.pick("settings")
            await quiet.pick("reminders")

            # The dry run counts per channel and creates nothing.
            out, _err = await cli("create", "--text-zh", TEXT_ZH, "--text-en", TEXT_EN, "--dry-run")
            assert "3 recipients" in out and "1 more turned reminders off" in out and "web: 3" in out, out
            dry = await cli.json("create", "--text-zh", TEXT_ZH, "--text-en", TEXT_EN, "--lang", "en", "--dry-run")
            assert dry["id"] is None and dry["recipients"] == 1
            assert (await cli.json("list")) == []

            made = await cli.json("create", "--text-zh", TEXT_ZH, "--text-en", TEXT_EN, "--channel", "web")
            assert made["status"] == "draft" and made["recipients"] == 3
            broadcast = str(made["id"])
            _out, err = await cli("pause", broadcast, expect=1)
            assert "bad_state" in err

            # A separate CLI process starts it; the bot's engine (another process) sends it.
            out, _err = await cli("start", broadcast, process=True)
            assert f"broadcast #{broadcast}: " in out
            # The bot's engine sends it; --watch shows a progress bar until it is done.
            out, err = await cli("status", broadcast, "--watch", "--interval", "0.2")
            assert f"broadcast #{broadcast}: done" in out and "sent 3, failed 0, unreachable 0, left 0" in out, out
            assert "3/3" in err and "100%" in err, err

            for chat in chats:
                texts = [m["text"] for m in await chat.pushed(0)]
                mine = TEXT_EN if chat is chats[2] else TEXT_ZH
                assert sum(mine in t for t in texts) == 1, texts
            assert not any(TEXT_ZH in m["text"] for m in await quiet.pushed(0))

            report = tmp_path / "report.csv"
            _out, err = await cli("report", broadcast, "-o", str(report))
            rows = list(csv.DictReader(io.StringIO(report.read_text())))
            assert {"channel": "web", "outcome": "sent", "reason": "", "count": "3"} in rows, rows
            out, _err = await cli("report", broadcast)
            assert out.splitlines()[0] == "channel,outcome,reason,count"
            out, _err = await cli("list")
            assert out.startswith(f"#{broadcast}\tdone\t"), out
            assert (await cli.json("status", broadcast))["sent"] == 3
    finally:
        bot.kill()
        await bot.wait()


async def test_schedule_pause_resume_cancel_and_bad_input(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0).isoformat()
    # `python -m bot broadcast` itself, on a data folder no bot has used yet: the command migrates it.
    assert not (tmp_path / "haoqing.sqlite3").exists()
    made = await cli.json("create", "--text-zh", TEXT_ZH, "--text-en", TEXT_EN, "--at", later,
                          "--has-open-requests", "--has-plan", "--active-days", "30", process=True)
    broadcast = str(made["id"])
    assert made["segment"] == {"has_open_requests": True, "has_plan": True, "active_days": 30}
    assert made["scheduled_at"] is not None
    assert (await cli.json("start", broadcast))["status"] == "scheduled"
    assert (await cli.json("pause", broadcast))["status"] == "paused"
    assert (await cli.json("resume", broadcast))["status"] == "scheduled"
    out, _err = await cli("cancel", broadcast)
    assert f"broadcast #{broadcast}: cancelled" in out
    # A finished broadcast's watch ends at once.
    out, _err = await cli("status", broadcast, "--watch")
    assert "cancelled" in out

    # Bad input exits 2 with the reason; an unknown id or the wrong state 1.
    _out, err = await cli("create", "--text-zh", " ", "--text-en", TEXT_EN, expect=2)
    assert "bad_texts" in err
    _out, err = await cli("create", "--text-zh", "长" * 501, "--text-en", TEXT_EN, expect=2)
    assert "bad_texts" in err
    _out, err = await cli("create", "--text-zh", TEXT_ZH, "--text-en", TEXT_EN, "--at", "tomorrow", expect=2)
    assert "bad_schedule" in err
    _out, err = await cli("create", "--text-zh", TEXT_ZH, "--text-en", TEXT_EN, "--active-days", "0", expect=2)
    assert "bad_segment" in err
    _out, err = await cli("create", "--text-zh", TEXT_ZH, "--text-en", TEXT_EN, "--channel", "sms", expect=2)
    assert "invalid choice" in err
    _out, err = await cli("status", "424242", expect=1)
    assert "not_found" in err
    _out, err = await cli("resume", broadcast, expect=1)
    assert "bad_state" in err

    # Every change is in the staff audit log, under the operator's login name.
    with sqlite3.connect(tmp_path / "haoqing.sqlite3") as conn:
        logged = conn.execute("SELECT staff_name, action, detail FROM staff_audit ORDER BY id").fetchall()
    actions = [action for _name, action, _detail in logged]
    for action in ("broadcast_create", "broadcast_start", "broadcast_pause", "broadcast_resume", "broadcast_cancel"):
        assert action in actions, logged
    assert all(name.startswith("cli") for name, _action, _detail in logged)
