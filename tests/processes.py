"""Starting the real bot as a separate process (`python -m bot run`) for restart and kill -9 tests."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp

from tests.sandbox_template import provide_sandbox_population

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
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", cwd=ROOT, env=full_env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{port}{probe}") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            if proc.returncode is not None:
                raise AssertionError((await proc.stderr.read()).decode()[-2000:])  # type: ignore[union-attr]
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("the bot did not become ready")
