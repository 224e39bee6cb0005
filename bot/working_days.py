"""Due dates counted in Chinese working days (statutory holidays and make-up workdays included).

Never guesses silently: a date computed without official holiday data is marked estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import chinese_calendar


@dataclass(frozen=True)
class DueDate:
    due: date
    estimated: bool


def is_working_day(day: date) -> tuple[bool, bool]:
    """(is a working day, estimated): official data where the package has it, else a guess."""
    try:
        return bool(chinese_calendar.is_workday(day)), False
    except NotImplementedError:
        # The State Council publishes each year's arrangement only in the autumn before, so the
        # package lacks next year for part of every year. Guess Monday to Friday, but keep 1 January
        # a holiday: it is one every year and it is always within reach of a request filed in late December.
        return day.weekday() < 5 and (day.month, day.day) != (1, 1), True


def add_working_days(start: date, n: int) -> DueDate:
    """The n-th working day after `start` (the day after `start` counts as the first candidate)."""
    if n < 0:
        raise ValueError("n must not be negative")
    day = start
    estimated = False
    remaining = n
    while remaining:
        day += timedelta(days=1)
        working, guessed = is_working_day(day)
        estimated = estimated or guessed
        if working:
            remaining -= 1
    return DueDate(due=day, estimated=estimated)
