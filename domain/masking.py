"""Masking of personal data for screens and logs. Pure; never returns an unmasked value."""

from __future__ import annotations

import re

_PHONE_RE = re.compile(r"(?<!\d)(?:\+?86[\s-]?)?(1[3-9]\d)[\s-]?(\d{4})[\s-]?(\d{4})(?!\d)")
_ID_RE = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8})(\d{3})([0-9Xx])(?![0-9A-Za-z])")


def mask_phone(phone: str) -> str:
    """`13800138000` -> `138****8000`; anything not 11 digits is masked whole."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    if len(digits) >= 11:
        digits = digits[-11:]
        return f"{digits[:3]}****{digits[-4:]}"
    return "*" * len(phone)


def mask_id_number(id_number: str) -> str:
    """`11010519491231002X` -> `1101**********002X`."""
    value = id_number.strip()
    if len(value) < 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def mask_name(name: str) -> str:
    """`张三丰` -> `张**`; the family name alone is kept."""
    value = name.strip()
    if not value:
        return ""
    return value[0] + "*" * max(1, len(value) - 1)


def scrub(text: str) -> str:
    """Masks every mainland mobile number and ID number found inside free text."""
    text = _ID_RE.sub(lambda m: mask_id_number(m.group(0)), text)
    return _PHONE_RE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)
