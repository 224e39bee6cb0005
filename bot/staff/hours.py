"""Staff business hours (Beijing time) from settings: whether staff are in now, and when they are next.

Pure arithmetic on an injected moment; it never reads the wall clock itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from domain import beijing

_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class BadHours(ValueError):
    """The STAFF_HOURS or STAFF_DAYS setting cannot be read; the message names the setting."""


@dataclass(frozen=True)
class BusinessHours:
    opens: int  # minutes after Beijing midnight
    closes: int  # minutes after Beijing midnight; 1440 = midnight at the end of the day
    days: frozenset[int]  # ISO weekdays

    @classmethod
    def parse(cls, hours: str, days: str) -> BusinessHours:
        match = _HOURS.match(hours)
        if not match:
            raise BadHours(f"STAFF_HOURS must look like 09:00-18:00, not {hours!r}")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        opens, closes = h1 * 60 + m1, h2 * 60 + m2
        if not (0 <= opens < closes <= 24 * 60) or m1 > 59 or m2 > 59:
            raise BadHours(f"STAFF_HOURS must open before it closes, within one day: {hours!r}")
        chosen: set[int] = set()
        for part in days.replace(" ", "").split(","):
            if not part:
                continue
            low, _, high = part.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise BadHours(f"STAFF_DAYS must list ISO weekdays like 1-5 or 1,2,3: {days!r}")
            first, last = int(low), int(high or low)
            if not 1 <= first <= last <= 7:
                raise BadHours(f"STAFF_DAYS weekdays run from 1 (Monday) to 7 (Sunday): {days!r}")
            chosen.update(range(first, last + 1))
        if not chosen:
            raise BadHours("STAFF_DAYS names no day")
        return cls(opens, closes, frozenset(chosen))

    @property
    def label(self) -> str:
        """`09:00-18:00`, as the user is told."""
        def hhmm(minutes: int) -> str:
            return f"{minutes // 60:02d}:{minutes % 60:02d}"

        return f"{hhmm(self.opens)}-{hhmm(self.closes)}"

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(beijing.TZ)
        minute = local.hour * 60 + local.minute
        return local.isoweekday() in self.days and self.opens <= minute < self.closes

    def next_open(self, now: datetime) -> datetime:
        """`now` when staff are in, else the moment they next start (aware UTC)."""
        if self.is_open(now):
            return now
        day = beijing.today(now)
        for offset in range(8):
            candidate_day = day + timedelta(days=offset)
            if candidate_day.isoweekday() not in self.days:
                continue
            start = beijing.moment(candidate_day, time(self.opens // 60, self.opens % 60))
            if start > now:
                return start
        raise AssertionError("a week always holds a working day")  # parse() refuses an empty week

    def add_business_minutes(self, start: datetime, minutes: int) -> datetime:
        """The moment `minutes` of staffed time after `start` have passed (counted from the next opening)."""
        moment = self.next_open(start)
        left = timedelta(minutes=minutes)
        for _ in range(400):
            local = moment.astimezone(beijing.TZ)
            day_close = beijing.moment(local.date(), time(0, 0)) + timedelta(minutes=self.closes)
            available = day_close - moment
            if left <= available:
                return moment + left
            left -= available
            moment = self.next_open(day_close)
        return moment + left

    def describe_next(self, now: datetime) -> str:
        """When staff are next in, in Beijing time (`2026-12-01 09:00`)."""
        return self.next_open(now).astimezone(beijing.TZ).strftime("%Y-%m-%d %H:%M")
