"""The one Beijing clock: China has a single time zone (UTC+8, no daylight saving), and every "day" the
product speaks of (daily limits, due dates, plan dates, reminders) is a Beijing calendar day."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

OFFSET = timedelta(hours=8)
TZ = timezone(OFFSET, "Asia/Shanghai")


def today(now: datetime | None = None) -> date:
    """The Beijing calendar day at `now` (an aware or naive-UTC moment; default: the current moment)."""
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return (moment + OFFSET).date()


def day_start(now: datetime) -> datetime:
    """The moment the Beijing day containing `now` began, in the same form (aware or naive UTC) as `now`."""
    day = today(now)
    start = datetime.combine(day, time(0, 0)) - OFFSET
    return start.replace(tzinfo=UTC) if now.tzinfo is not None else start


def moment(day: date, at: time) -> datetime:
    """The aware UTC moment of `at` o'clock Beijing time on `day`."""
    return (datetime.combine(day, at) - OFFSET).replace(tzinfo=UTC)
