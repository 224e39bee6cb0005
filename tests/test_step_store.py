"""The hot path's storage (bot/step_store.py), below the dispatcher: the step contract every store keeps, and the
SQLite store's group commit on the loop's own thread, where units submitted together share one transaction, a lock
held elsewhere is waited out on the loop's timer and checkpoints run on a thread of their own."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from bot.step_store import Begin, ConflictError, PureStep, SqliteStepStore, StepStore, step_store_for
from bot.storage import Database


async def keeps_the_step_contract(store: StepStore) -> int:
    """A delivery seen before gets its first answer, a stale version changes nothing, another user's delivery id
    is never replayed to them, and numbers stay dense. Returns the first user's id."""
    alice = await store.resolve_user("web", "alice-ref", "zh_CN", True)
    bob = await store.resolve_user("web", "bob-ref", "en", True)
    assert alice is not None and bob is not None and alice.id != bob.id
    assert await store.resolve_user("web", "alice-ref", "en", True) == alice
    assert await store.resolve_user("web", "nobody", "en", False) is None

    first = await store.begin(alice.id, "web", "k1", alice.lang)
    assert first.answer is None and first.version is None and json.loads(first.data) == {"lang": "zh_CN"}
    payloads = [{"text": "你好", "choices": []}, {"text": "菜单", "choices": [{"id": "a", "label": "甲"}]}]
    await store.commit(alice.id, None, "menu", '{"lang": "zh_CN"}', payloads, first.inbox_id, "web", "zh_CN", True)
    assert [p["seq"] for p in payloads] == [1, 2]
    again = await store.begin(alice.id, "web", "k1", alice.lang)
    assert again.answer == payloads, "a delivery seen before gets its first answer, numbers included"
    stored = await store.messages_after(alice.id, 0, 10)
    assert [json.loads(row) for row in stored] == payloads

    # A stale version: nothing of the step is kept, and the inbox row stays unanswered.
    second = await store.begin(alice.id, "web", "k2", alice.lang)
    assert second.version == 1 and second.state == "menu" and json.loads(second.data) == {"lang": "zh_CN"}
    with pytest.raises(ConflictError):
        await store.commit(alice.id, 0, "other", "{}", [{"text": "x", "choices": []}], second.inbox_id, "web",
                           None, True)
    assert len(await store.messages_after(alice.id, 0, 10)) == 2
    await store.commit(alice.id, 1, "settings", "{}", [{"text": "y", "choices": []}], second.inbox_id, "web",
                       None, False)
    assert (await store.begin(alice.id, "web", "k2", alice.lang)).answer == [{"seq": 3, "text": "y", "choices": []}]
    third = await store.begin(alice.id, "web", "k3", alice.lang)
    assert third.answer is None and (third.state, third.version) == ("settings", 2)

    # Bob sends a delivery id Alice used: processed for him, never answered with hers.
    theirs = await store.begin(bob.id, "web", "k1", bob.lang)
    assert theirs.answer is None and theirs.inbox_id is None and theirs.version is None
    seen = await store.last_seen("web", "alice-ref")
    assert seen is not None and seen[0] == alice.id

    # A step without effects commits with its inbox row; a replay gets the first answer without running again.
    runs: list[Begin] = []

    def menu(begun: Begin) -> PureStep:
        runs.append(begun)
        return PureStep("menu", '{"lang": "en"}', [{"text": "menu", "choices": []}], "en", True, outcome="mine")

    begun, done = await store.begin_step(alice.id, "web", "k4", alice.lang, menu)
    assert done is not None and done.outcome == "mine" and done.payloads[0]["seq"] == 4
    assert begun.version == 2 and runs[-1].state == "settings"
    again, replayed = await store.begin_step(alice.id, "web", "k4", alice.lang, menu)
    assert replayed is None and again.answer == [{"seq": 4, "text": "menu", "choices": []}] and len(runs) == 1
    # A step with effects (run gives None): only the inbox row commits, and the caller goes on from Begin.
    pending, nothing = await store.begin_step(alice.id, "web", "k5", alice.lang, lambda begun: None)
    assert nothing is None and pending.inbox_id is not None and (pending.state, pending.version) == ("menu", 3)
    resumed = await store.begin(alice.id, "web", "k5", alice.lang)
    assert resumed.answer is None and resumed.inbox_id == pending.inbox_id, "the delivery is known, not answered"
    return alice.id


async def test_the_sqlite_step_store_keeps_the_step_contract(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'steps.db'}")
    await db.create_all()
    store = step_store_for(db)
    assert isinstance(store, SqliteStepStore)
    try:
        await keeps_the_step_contract(store)
    finally:
        await store.close()
        await db.close()


async def sqlite_store(tmp_path: Path) -> tuple[Database, SqliteStepStore]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'steps.db'}")
    await db.create_all()
    store = step_store_for(db)
    assert isinstance(store, SqliteStepStore)
    return db, store


async def test_a_failing_unit_leaves_its_batch_neighbours_committed(tmp_path: Path) -> None:
    """Units submitted in one pass of the loop run in one transaction, bare; when one raises, the batch runs again
    with a savepoint per unit, so only the failing unit is undone and its neighbours' rows (and answers) stand."""
    db, store = await sqlite_store(tmp_path)
    try:
        users = [await store.resolve_user("web", f"u{i}", "en", True) for i in range(3)]
        assert all(u is not None for u in users)
        begins = [await store.begin(u.id, "web", f"d{u.id}", "en") for u in users if u is not None]
        lane = store._lanes[asyncio.get_running_loop()]
        batches = lane.batches
        outcomes = await asyncio.gather(*(store.commit(
            b_user.id, 0 if i == 1 else b.version, "menu", "{}", [{"text": f"hi {i}", "choices": []}], b.inbox_id,
            "web", None, True) for i, (b_user, b) in enumerate(zip(users, begins, strict=True)) if b_user is not None),
            return_exceptions=True)
        assert lane.batches == batches + 1, "the three commits shared one batch"
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], ConflictError), "the stale version is refused"
        answered = [await store.begin(b_user.id, "web", f"d{b_user.id}", "en") for b_user in users if b_user]
        assert [a.answer for a in answered] == [[{"seq": 1, "text": "hi 0", "choices": []}], None,
                                                [{"seq": 1, "text": "hi 2", "choices": []}]]
        assert answered[1].version is None, "nothing of the refused unit was kept"
    finally:
        await store.close()
        await db.close()


async def test_a_step_without_effects_is_one_unit_on_sqlite(tmp_path: Path) -> None:
    """The inbox row, the step and its commit in one transaction: one batch, where begin and commit took two."""
    db, store = await sqlite_store(tmp_path)
    try:
        user = await store.resolve_user("web", "one", "en", True)
        assert user is not None
        lane = store._lanes[asyncio.get_running_loop()]
        batches = lane.batches
        _, done = await store.begin_step(user.id, "web", "o1", "en", lambda begun: PureStep(
            "menu", "{}", [{"text": "hi"}], "en", True))
        assert done is not None and lane.batches == batches + 1
        assert (await store.begin(user.id, "web", "o1", "en")).answer == [{"seq": 1, "text": "hi"}]

        def broken(begun: Begin) -> PureStep:
            raise ValueError("a bug in the step")

        with pytest.raises(ValueError):
            await store.begin_step(user.id, "web", "o2", "en", broken)
        fresh = await store.begin(user.id, "web", "o2", "en")
        assert fresh.answer is None and fresh.version == 1, "nothing of the failed step stayed"
    finally:
        await store.close()
        await db.close()


async def test_a_lock_held_elsewhere_is_waited_out_without_stalling_the_loop(tmp_path: Path) -> None:
    """The store runs on the event loop's thread, so it must never wait inside SQLite: while another connection
    holds the write lock, the step's commit waits on the loop's timer and the loop goes on serving others; the
    commit lands once the lock is released."""
    db, store = await sqlite_store(tmp_path)
    other = sqlite3.connect(tmp_path / "steps.db", isolation_level=None)
    try:
        user = await store.resolve_user("web", "held", "en", True)
        assert user is not None
        begun = await store.begin(user.id, "web", "h1", "en")
        other.execute("BEGIN IMMEDIATE")  # the ORM or the broadcast engine in the middle of a write
        commit = asyncio.create_task(store.commit(user.id, begun.version, "menu", "{}", [{"text": "hi"}],
                                                  begun.inbox_id, "web", None, True))
        ticks = 0
        while ticks < 50:  # the loop keeps turning: other chats are served meanwhile
            await asyncio.sleep(0.001)
            ticks += 1
            assert not commit.done(), "nothing can commit while the other connection holds the lock"
        other.execute("COMMIT")
        await asyncio.wait_for(commit, 10)
        assert (await store.begin(user.id, "web", "h1", "en")).answer == [{"seq": 1, "text": "hi"}]
    finally:
        other.close()
        await store.close()
        await db.close()


async def test_a_lock_held_past_the_busy_timeout_fails_the_waiting_units(tmp_path: Path) -> None:
    """As a connection's busy timeout would: a unit waits for the lock at most that long, then fails, and the
    store works again once the lock is gone."""
    db, store = await sqlite_store(tmp_path)
    store.busy_timeout = 0.05
    other = sqlite3.connect(tmp_path / "steps.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await asyncio.wait_for(store.resolve_user("web", "late", "en", True), 10)
        other.execute("COMMIT")
        assert await store.resolve_user("web", "late", "en", True) is not None
    finally:
        other.close()
        await store.close()
        await db.close()


async def test_checkpoints_run_off_the_loop_and_keep_the_wal_from_growing(tmp_path: Path) -> None:
    """Automatic checkpoints (an fsync inside some commit) are off on the loop's connection; the checkpointer
    thread runs passive ones once the WAL passes its size, so the WAL stops growing where, without it, every
    commit would add to it."""
    sizes = {}
    for name, wal_bytes in (("checkpointed", 64 << 10), ("unchecked", 1 << 40)):
        path = tmp_path / name
        path.mkdir()
        db, store = await sqlite_store(path)
        store._checkpointer.wal_bytes = wal_bytes
        store.NUDGE_EVERY = 1
        try:
            user = await store.resolve_user("web", "writer", "en", True)
            assert user is not None
            lane = store._lanes[asyncio.get_running_loop()]
            assert lane.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
            version = None
            for n in range(300):
                begun = await store.begin(user.id, "web", f"w{n}", "en")
                await store.commit(user.id, version, "menu", "{}", [{"text": "x" * 4000}], begun.inbox_id, "web",
                                   None, True)
                version = (version or 0) + 1
                if name == "checkpointed" and n % 25 == 24:
                    # The checkpointer's thread has its turn (however busy the machine), so the WAL's high-water
                    # mark is what 25 commits write, not what a starved thread let pile up.
                    runs = store._checkpointer.runs
                    for _ in range(2000):
                        if store._checkpointer.runs > runs:
                            break
                        await asyncio.sleep(0.005)
                    assert store._checkpointer.runs > runs, "the checkpointer never ran"
            sizes[name] = (path / "steps.db-wal").stat().st_size
            if name == "checkpointed":
                assert store._checkpointer.runs > 0
            else:
                assert store._checkpointer.runs == 0
        finally:
            await store.close()
            await db.close()
    assert sizes["checkpointed"] < sizes["unchecked"] / 2, sizes


async def test_the_store_refuses_work_once_closed(tmp_path: Path) -> None:
    db, store = await sqlite_store(tmp_path)
    await store.resolve_user("web", "x", "en", True)
    await store.close()
    await db.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.resolve_user("web", "y", "en", True)


async def test_keyed_locks_serialise_one_key_and_leave_nothing_behind() -> None:
    """The dispatcher's per-user lock: holders of one key take turns in arrival order, and no entry outlives its
    last holder, whether it left normally or was cancelled while waiting or holding."""
    from bot.locks import KeyedLocks

    locks = KeyedLocks()
    order: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def holder(n: int, wait: bool) -> None:
        async with locks.hold(1):
            order.append(("in", n))
            if wait:
                await gate.wait()
            order.append(("out", n))

    first = asyncio.create_task(holder(1, True))
    others = [asyncio.create_task(holder(n, False)) for n in (2, 3)]
    await asyncio.sleep(0)
    assert order == [("in", 1)] and len(locks) == 1
    gate.set()
    await asyncio.gather(first, *others)
    assert order == [("in", 1), ("out", 1), ("in", 2), ("out", 2), ("in", 3), ("out", 3)]
    assert len(locks) == 0

    gate.clear()
    held = asyncio.create_task(holder(4, True))
    waiting = asyncio.create_task(holder(5, False))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert len(locks) == 1, "the cancelled waiter left; the holder's entry stays"
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
    assert len(locks) == 0


def test_the_hot_path_clock_writes_times_as_the_orm_does() -> None:
    """Raw SQL compares times with the ORM's rows as text, so both must write the same form (naive UTC, a space,
    microseconds always)."""
    import re
    from datetime import UTC, datetime

    from bot.storage import sqlite_now, sqlite_time

    before = sqlite_time(datetime.now(UTC))
    now = sqlite_now()
    after = sqlite_time(datetime.now(UTC))
    shape = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
    assert shape.fullmatch(now) and shape.fullmatch(before)
    assert before <= now <= after
