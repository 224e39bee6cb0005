"""The sandbox registry's decisions, kept pure so tests can hammer them: the tenure rule and request timing.

Nothing here may ever let a binding made on or after the requester's tenure start into an unbind item.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

RefusalReason = Literal["current_tenure", "not_bound", "unsupported"]
Phase = Literal["submitted", "processing", "finished"]

# Reasons a platform gives when it declines; the sandbox picks them deterministically.
REJECTION_REASONS = ("account_already_closed", "identity_check_failed")


@dataclass(frozen=True)
class ActiveBinding:
    id: int
    platform: str
    bound_on: date


@dataclass(frozen=True)
class PlannedItem:
    platform: str
    binding_ids: tuple[int, ...]


@dataclass(frozen=True)
class Refusal:
    platform: str
    reason: RefusalReason


@dataclass(frozen=True)
class UnbindPlan:
    items: tuple[PlannedItem, ...]
    refused: tuple[Refusal, ...]


def tenure_cutoff(requester_tenure_start: date, registry_tenure_start: date) -> date:
    """The first day whose bindings are off limits.

    The earlier of the two dates: a requester who claims a later start must not reach bindings the
    registry knows are theirs, and one who claims an earlier start is taken at their word (it only
    protects more).
    """
    return min(requester_tenure_start, registry_tenure_start)


def plan_unbind(
    requested: Iterable[str],
    active: Sequence[ActiveBinding],
    cutoff: date,
    supported: Collection[str],
) -> UnbindPlan:
    """Which requested platforms become items (with the bindings they cover) and why the rest are refused."""
    items: list[PlannedItem] = []
    refused: list[Refusal] = []
    seen: set[str] = set()
    for platform in requested:
        if platform in seen:
            continue
        seen.add(platform)
        if platform not in supported:
            refused.append(Refusal(platform, "unsupported"))
            continue
        on_platform = [b for b in active if b.platform == platform]
        if not on_platform:
            refused.append(Refusal(platform, "not_bound"))
            continue
        covered = tuple(sorted(b.id for b in on_platform if b.bound_on < cutoff))
        if not covered:
            refused.append(Refusal(platform, "current_tenure"))
            continue
        items.append(PlannedItem(platform, covered))
    return UnbindPlan(tuple(items), tuple(refused))


def phase_at(created_at: datetime, now: datetime, processing_after: float, done_after: float) -> Phase:
    elapsed = (now - created_at).total_seconds()
    if elapsed >= done_after:
        return "finished"
    if elapsed >= processing_after:
        return "processing"
    return "submitted"


def item_outcome(seed: int, phone: str, platform: str) -> str | None:
    """None when the platform completes the unbind, else its rejection reason (about one in ten).

    Keyed on the number and platform, not the request, so asking again gets the same answer.
    """
    digest = hashlib.sha256(f"{seed}:{phone}:{platform}".encode()).digest()
    if digest[0] * 10 // 256 != 0:
        return None
    return REJECTION_REASONS[digest[1] % len(REJECTION_REASONS)]
