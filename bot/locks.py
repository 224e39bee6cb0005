"""Per-user serialisation inside one process: one step at a time per user, no lock left behind."""

from __future__ import annotations

import asyncio
from types import TracebackType


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    def hold(self, key: int) -> _Held:
        """`async with locks.hold(key):` one holder per key at a time; the entry goes with its last user.
        A plain class rather than an @asynccontextmanager: it is taken on every step."""
        return _Held(self._locks, key)

    def __len__(self) -> int:
        return len(self._locks)


class _Held:
    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: dict[int, tuple[asyncio.Lock, int]], key: int) -> None:
        self._locks, self._key = locks, key

    async def __aenter__(self) -> None:
        entry = self._locks.get(self._key)
        self._lock = asyncio.Lock() if entry is None else entry[0]
        self._locks[self._key] = (self._lock, 1 if entry is None else entry[1] + 1)
        try:
            await self._lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users <= 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)
