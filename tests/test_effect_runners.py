"""Every effect a dialog can ask for has exactly one registered runner, and every runner is asked for by some
dialog: the table is explicit (@runs), so a typo in either place fails here instead of in a user's step."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from bot.effects import ACTING, RUNNERS
from dialogs import results

DIALOGS = Path(__file__).resolve().parent.parent / "dialogs"


def asked_for() -> set[str]:
    kinds: set[str] = set()
    for module in DIALOGS.glob("*.py"):
        kinds |= set(re.findall(r'Effect\(\s*"([a-z_]+\.[a-z_]+)"', module.read_text()))
    return kinds


def test_every_effect_a_dialog_asks_for_has_a_runner_and_no_runner_is_orphaned() -> None:
    kinds = asked_for()
    assert kinds, "the scan found no effects: the pattern is out of date"
    assert sorted(kinds - set(RUNNERS)) == [], "effects with no runner"
    assert sorted(set(RUNNERS) - kinds) == [], "runners no dialog asks for"


def test_acting_effects_are_real_kinds() -> None:
    assert sorted(ACTING - set(RUNNERS)) == []


def test_every_runner_declares_the_record_it_answers_with() -> None:
    """A runner's answer is a typed record from dialogs/results.py (mypy checks the runner against it), or
    nothing; only the ticket service answers in its own shape (bot/staff/tickets.py)."""
    untyped = []
    for kind, runner in RUNNERS.items():
        answer = typing.get_type_hints(runner)["return"]
        records = typing.get_args(answer) or (answer,)
        if kind.startswith("ticket."):
            continue
        if not all(r is type(None) or (typing.is_typeddict(r) and r.__module__ == results.__name__)
                   for r in records):
            untyped.append(kind)
    assert untyped == []
