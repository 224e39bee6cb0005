"""The event loop the server runs on (EVENT_LOOP): uvloop's where it is installed, else asyncio's own. Light on
purpose: the gunicorn master reads it before any worker imports the application."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bot.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


def uses_uvloop(settings: Settings) -> bool:
    if settings.event_loop != "uvloop":
        return False
    if importlib.util.find_spec("uvloop") is None:
        log.warning("EVENT_LOOP=uvloop but uvloop is not installed: running on asyncio's loop")
        return False
    return True


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """For asyncio.Runner: uvloop's loop when EVENT_LOOP says so and it is installed (not on Windows), else None
    (asyncio's own)."""
    if not uses_uvloop(settings):
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def stop_requested() -> None:
    """Raises CancelledError when the running task was asked to stop, even if the request got lost on the way.
    Python 3.11's asyncio.wait_for returns its result instead of raising when a cancellation lands just as what it
    waits for finishes (gh-86296, fixed in 3.12); a task that loops forever then never stops, and the closing loop
    (asyncio.run, pytest's) waits for it for good. Such a loop calls this once a round."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def run_until_done(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the event loop the settings name."""
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        return runner.run(main)
