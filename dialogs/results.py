"""What each effect's runner answers (bot/effects.py), as typed records: mypy checks every runner against the one
its effect kind names here, and a dialog reads the keys these name, nothing else.

They are TypedDicts, so plain JSON-able dicts at run time: an effect's outcome is stored under its delivery's key
and comes back the same on a replay. `ok` is always there; the rest only where the runner has it to say.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Required, TypedDict, TypeVar, cast

from dialogs.model import Event

RecordT = TypeVar("RecordT", bound=Mapping[str, object])


def answer(event: Event, record: type[RecordT]) -> RecordT:
    """A result event's outcome read as the record its runner declares. A view for the type checker only:
    the runner was checked against the same record (bot/effects.py), so nothing is checked again here."""
    return cast(RecordT, event.result)


class Failed(TypedDict, total=False):
    """A refusal or an outside system down, said the same way by every runner."""

    ok: Required[bool]
    reason: str


class Done(TypedDict):
    ok: bool


class PhoneSealed(TypedDict):
    ok: bool
    sealed: str
    masked: str
    then: str


class LetterNumber(TypedDict):
    ok: bool
    phone: str


class CodeSent(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    challenge_id: int
    masked: str
    retry_in: int


class CodeChecked(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    remaining: int
    verification_id: int
    masked: str


class Binding(TypedDict):
    platform: str
    month: str
    remote: bool
    name_zh: str
    name_en: str


class Lookup(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    masked: str
    carrier: str
    original_carrier: str
    ported: bool
    virtual_operator: bool
    tenure_start: str | None
    previous: list[Binding]
    current: list[Binding]


class Forgotten(TypedDict):
    ok: bool
    kept_requests: int


class NameStashed(TypedDict):
    ok: bool
    masked: str


class HolderChecked(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    remaining: int
    match: bool
    masked: str
    tenure_start: str
    check_id: int


class UnbindOptions(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    # platform, month, name_zh, name_en; an eligible one also what became of an earlier request (history, reason)
    eligible: list[dict[str, str]]
    manual: list[dict[str, str]]


class UnbindFiled(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    reference: str
    due: str
    estimated: bool
    queued: bool
    count: int
    refused: int


class RequestList(TypedDict):
    ok: bool
    items: list[dict[str, Any]]
    tags: list[dict[str, str]]
    carrier: str


class GuideList(TypedDict):
    ok: bool
    platforms: list[dict[str, str]]


class GuidePlatform(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    platform: dict[str, Any]


class RecycleAnswer(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    retry_minutes: int
    masked: str
    known: bool
    reissued: bool
    released_days_ago: int | None
    previous_bindings_remain: bool


class TagStatus(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    labelled: bool
    existing: dict[str, dict[str, Any]]


class TagStatement(TypedDict, total=False):
    """A number-tag statement: filed just now, found by its code, or (`existing`) the one filed before."""

    ok: Required[bool]
    reason: str
    existing: bool
    code: str
    kind: str
    since: str
    masked: str
    date: str


class PlanView(TypedDict, total=False):
    ok: Required[bool]
    reason: str
    plan: dict[str, Any] | None


class PlanMarked(TypedDict, total=False):
    """A tick, snooze or untick: the plan as it now stands, and which item the runner changed (the dialog names
    that item in its one-line answer)."""

    ok: Required[bool]
    reason: str
    plan: dict[str, Any] | None
    item_id: int


class TicketOpened(TypedDict, total=False):
    """The user's ticket (new, or the one already open): where it stands in the queue, or who holds it, and when
    staff are next in."""

    ok: Required[bool]
    reason: str
    ticket: int
    status: str
    staff: str | None
    position: int
    wait_minutes: int
    in_hours: bool
    hours: str
    opens_at: str


class StaffJoined(TypedDict):
    """Not an effect's answer: what the ticket service sends into the conversation (`handoff.claimed`) when a staff
    member claims the ticket or is handed it."""

    staff: str
