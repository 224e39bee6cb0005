"""Mainland mobile number parsing with `phonenumbers`. Pure; the result never carries a raw input echo."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

PhoneProblem = Literal["ok", "empty", "not_a_number", "foreign", "landline", "iot", "length", "invalid_range"]

_IOT_PREFIXES = ("140", "141", "142", "143", "144", "146", "148", "149")
_SEPARATORS = re.compile(r"[\s\-().·]")


@dataclass(frozen=True)
class PhoneParse:
    problem: PhoneProblem
    # 11 national digits, set only when problem == "ok".
    national: str = ""


def parse_mainland_mobile(raw: str) -> PhoneParse:
    """Accepts `+86 138-0013-8000`, `8613800138000`, `0086…` and full-width digits."""
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw))
    if not text:
        return PhoneParse("empty")
    if not re.fullmatch(r"\+?\d+", text):
        return PhoneParse("not_a_number")
    try:
        number = phonenumbers.parse(text, "CN")
    except NumberParseException:
        return PhoneParse("not_a_number")
    if number.country_code != 86:
        return PhoneParse("foreign")
    national = str(number.national_number)
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.FIXED_LINE or (not national.startswith("1") and phonenumbers.is_valid_number(number)):
        return PhoneParse("landline")
    if not national.startswith("1") or len(national) != 11:
        return PhoneParse("length" if national.startswith("1") else "invalid_range")
    if national.startswith(_IOT_PREFIXES):
        return PhoneParse("iot")
    if not re.fullmatch(r"1[3-9]\d{9}", national) or not phonenumbers.is_valid_number(number):
        return PhoneParse("invalid_range")
    return PhoneParse("ok", national)
