"""The load generator the benches share: fixed offered load (open loop, no coordinated omission) and a
closed-loop peak, around a `send(i) -> ok` coroutine each bench supplies."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

Send = Callable[[int], Awaitable[bool]]


async def wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    """Returns once `url` answers 200; stops the bench if the process behind it exits or never comes up."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.returncode is not None:
                raise SystemExit(f"{url}: the process exited with {proc.returncode}")
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not become ready")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """The q-quantile in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def open_loop(rate: int, seconds: float, send: Send) -> dict[str, float]:
    """One request every 1/rate s whatever the server does; latency counts from the scheduled time."""
    latencies: list[float] = []
    errors = 0
    tasks = []

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        if not await send(i):
            errors += 1
        latencies.append(time.perf_counter() - scheduled)

    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {"offered": rate, "achieved": total / elapsed, "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "errors": errors}


async def closed_loop(workers: int, seconds: float, send: Send) -> float:
    """Requests/s with `workers` always in flight."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.perf_counter() < stop_at:
            await send(i)
            done += 1
            i += workers

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return done / (time.perf_counter() - started)
