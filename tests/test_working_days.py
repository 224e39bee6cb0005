"""Due dates in Chinese working days, checked against the chinese_calendar package's own data."""

from __future__ import annotations

from datetime import date, timedelta

import chinese_calendar
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.working_days import DueDate, add_working_days, is_working_day


def test_the_package_data_these_tests_rely_on() -> None:
    # National Day 2025: 1-8 October off, with Sunday 28 September and Saturday 11 October worked.
    assert all(not chinese_calendar.is_workday(date(2025, 10, d)) for d in range(1, 9))
    assert chinese_calendar.is_workday(date(2025, 9, 28))
    assert chinese_calendar.is_workday(date(2025, 10, 11))
    # Spring Festival 2026: 15-23 February off, Saturdays 14 and 28 February worked.
    assert all(not chinese_calendar.is_workday(date(2026, 2, d)) for d in range(15, 24))
    assert chinese_calendar.is_workday(date(2026, 2, 14))
    assert chinese_calendar.is_workday(date(2026, 2, 28))


def test_counting_starts_the_day_after() -> None:
    assert add_working_days(date(2025, 6, 3), 1) == DueDate(date(2025, 6, 4), False)
    assert add_working_days(date(2025, 6, 3), 0) == DueDate(date(2025, 6, 3), False)


def test_national_day_2025_skips_the_holiday_and_counts_the_make_up_saturday() -> None:
    # 9, 10, 11 (Saturday, make-up), 13, 14 October.
    assert add_working_days(date(2025, 9, 30), 5) == DueDate(date(2025, 10, 14), False)


def test_make_up_sunday_before_national_day_counts() -> None:
    # 28 (Sunday, make-up), 29, 30 September, then 9 and 10 October.
    assert add_working_days(date(2025, 9, 26), 5) == DueDate(date(2025, 10, 10), False)


def test_spring_festival_2026() -> None:
    # 14 February is a make-up Saturday; 15-23 are off; then 24, 25, 26, 27 February.
    assert add_working_days(date(2026, 2, 13), 5) == DueDate(date(2026, 2, 27), False)


def test_pure_weekend_start() -> None:
    # Saturday 7 March 2026: Sunday is off, Monday 9 is the first working day.
    assert add_working_days(date(2026, 3, 7), 1) == DueDate(date(2026, 3, 9), False)
    assert add_working_days(date(2026, 3, 7), 5) == DueDate(date(2026, 3, 13), False)
    assert add_working_days(date(2026, 3, 8), 5) == DueDate(date(2026, 3, 13), False)


def test_request_filed_late_december_2026_crosses_into_a_year_without_data() -> None:
    # 29, 30, 31 December from the package; 1 January 2027 is kept a holiday; then 4 and 5 January.
    assert add_working_days(date(2026, 12, 28), 5) == DueDate(date(2027, 1, 5), True)


def test_staying_inside_known_data_is_not_an_estimate() -> None:
    assert add_working_days(date(2026, 12, 24), 5) == DueDate(date(2026, 12, 31), False)


def test_fallback_is_monday_to_friday_with_new_year_off() -> None:
    assert is_working_day(date(2027, 1, 1)) == (False, True)
    assert is_working_day(date(2027, 1, 4)) == (True, True)
    assert is_working_day(date(2027, 1, 9)) == (False, True)
    assert add_working_days(date(2027, 3, 5), 5) == DueDate(date(2027, 3, 12), True)


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        add_working_days(date(2026, 1, 5), -1)


@given(st.dates(min_value=date(2004, 1, 1), max_value=date(2026, 11, 30)), st.integers(1, 10))
def test_due_is_the_nth_official_working_day(start: date, n: int) -> None:
    result = add_working_days(start, n)
    assert not result.estimated
    assert chinese_calendar.is_workday(result.due)
    days = [start + timedelta(days=i) for i in range(1, (result.due - start).days + 1)]
    assert sum(chinese_calendar.is_workday(d) for d in days) == n
