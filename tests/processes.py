"""Starting the real bot as a separate process (`python -m bot run`) for restart and kill -9 tests."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp

from tests.sandbox_template import provide_sandbox_population, provide_schema

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_bot(port: int, env: dict[str, str], probe: str = "/readyz") -> asyncio.subprocess.Process:
    """Starts the bot on `port` with `env` added, and returns once `probe` answers 200."""
    full_env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", **env}
    if full_env.get("DATA_DIR") and not full_env.get("REGISTRY_URL"):
        provide_sandbox_population(Path(full_env["DATA_DIR"]))
    if full_env.get("DATA_DIR") and not full_env.get("DATABASE_URL"):
        provide_schema(Path(full_env["DATA_DIR"]))  # migrated to head, as a first start would leave it
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", cwd=ROOT, env=full_env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    await wait_ready(f"http://127.0.0.1:{port}{probe}", proc)
    return proc


async def wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path | None = None) -> None:
    """Returns once `url` answers 200. If the process exits first, fails with the end of what it said (its log
    file, or its stderr pipe); if it never answers, kills it and fails."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.returncode is not None:
                if log is not None:
                    said = log.read_text(errors="replace") if log.exists() else ""
                else:
                    said = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"{url}: exited {proc.returncode}: {said[-3000:]}")
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{url} never became ready")
