"""Twenty rapid messages from one user: processed one at a time, in arrival order, none lost (aiogram #1317 style)."""

from __future__ import annotations

import asyncio

from tests.conftest import Chat


async def test_burst_from_one_user_is_serialised(chat: Chat) -> None:
    await chat.say("/start")
    choices = ["settings", "menu"] * 10
    replies = await asyncio.gather(*(chat.send({"id": f"burst-{i}", "choice": c}) for i, c in enumerate(choices)))
    seqs = sorted(m["seq"] for r in replies for m in r)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(r for r in replies)
