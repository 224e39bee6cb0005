"""Typed dates for the pre-cancellation plan: `2026-12-31`, `2026/12/31`, `12月31日`, `2026年12月31日`,
`12-31`, `明天`, `后天`, `下周五`, `周五`, `下个月15号`. Pure; today is passed in."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

DateProblem = Literal["ok", "unreadable", "past", "too_far"]
MAX_AHEAD = timedelta(days=366)

_WEEKDAYS = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6}
_FULL = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*[日号]?")
_MONTH_DAY = re.compile(r"(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*[日号]?")
_WEEKDAY = re.compile(r"(下下|下|这|本)?\s*(?:周|星期|礼拜)([一二三四五六日天])")
_NEXT_MONTH_DAY = re.compile(r"下个?月\s*(\d{1,2})\s*[日号]")


@dataclass(frozen=True)
class DateParse:
    problem: DateProblem
    value: date | None = None


def _safe(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _read(text: str, today: date) -> date | None:
    if text in ("今天", "today"):
        return today
    if text in ("明天", "tomorrow"):
        return today + timedelta(days=1)
    if text == "后天":
        return today + timedelta(days=2)
    if match := _FULL.fullmatch(text):
        return _safe(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    if match := _MONTH_DAY.fullmatch(text):
        month, day = int(match.group(1)), int(match.group(2))
        candidate = _safe(today.year, month, day)
        if candidate is not None and candidate < today:
            candidate = _safe(today.year + 1, month, day)
        return candidate
    if match := _NEXT_MONTH_DAY.fullmatch(text):
        year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
        return _safe(year, month, int(match.group(1)))
    if match := _WEEKDAY.fullmatch(text):
        prefix, weekday = match.group(1) or "", _WEEKDAYS[match.group(2)]
        monday = today - timedelta(days=today.weekday())
        if prefix in ("下",):
            return monday + timedelta(days=7 + weekday)
        if prefix == "下下":
            return monday + timedelta(days=14 + weekday)
        candidate = monday + timedelta(days=weekday)
        # A bare 周五 means the coming one; 这周五 / 本周五 means this week's even if it has passed.
        if not prefix and candidate < today:
            candidate += timedelta(days=7)
        return candidate
    return None


def parse_plan_date(raw: str, today: date) -> DateParse:
    text = re.sub(r"\s+", "", unicodedata.normalize("NFKC", raw)).lower()
    value = _read(text, today)
    if value is None:
        return DateParse("unreadable")
    if value < today:
        return DateParse("past", value)
    if value - today > MAX_AHEAD:
        return DateParse("too_far", value)
    return DateParse("ok", value)
