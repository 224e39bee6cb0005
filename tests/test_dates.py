"""Typed plan dates, as WeChat users type them."""

from datetime import date

import pytest

from dialogs.dates import parse_plan_date

TODAY = date(2026, 11, 25)  # a Wednesday


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-31", date(2026, 12, 31)),
    ("2026/12/31", date(2026, 12, 31)),
    ("２０２６年１２月３１日", date(2026, 12, 31)),
    ("12月31日", date(2026, 12, 31)),
    ("12月31号", date(2026, 12, 31)),
    ("12-31", date(2026, 12, 31)),
    ("3月1日", date(2027, 3, 1)),
    ("明天", date(2026, 11, 26)),
    ("后天", date(2026, 11, 27)),
    ("下周五", date(2026, 12, 4)),
    ("周五", date(2026, 11, 27)),
    ("星期一", date(2026, 11, 30)),
    ("下下周一", date(2026, 12, 7)),
    ("下个月15号", date(2026, 12, 15)),
    (" 今天 ", TODAY),
])
def test_understood(text: str, expected: date) -> None:
    parsed = parse_plan_date(text, TODAY)
    assert (parsed.problem, parsed.value) == ("ok", expected)


def test_refused_with_a_reason() -> None:
    assert parse_plan_date("2026-11-24", TODAY).problem == "past"
    assert parse_plan_date("这周一", TODAY).problem == "past"
    assert parse_plan_date("2027-11-27", TODAY).problem == "too_far"
    assert parse_plan_date("2028-01-01", TODAY).problem == "too_far"
    assert parse_plan_date("2026-02-30", TODAY).problem == "unreadable"
    assert parse_plan_date("whenever", TODAY).problem == "unreadable"
    assert parse_plan_date("", TODAY).problem == "unreadable"
