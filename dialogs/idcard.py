"""Format checks for mainland resident ID numbers (GB 11643-1999) and their keyed hashes.

Pure: no I/O. A passing check proves the format only, never that the number belongs to anyone.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import date
from typing import Literal

IdReason = Literal["ok", "empty", "legacy_15", "length", "chars", "area", "birth_date", "future_birth", "checksum"]

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
_DIGITS = frozenset("0123456789")
# 83 (Taiwan residents' residence permits) and 91 (foreigners' permanent residence, 2023 format)
# share the 18-character layout, so their holders must pass too.
_PROVINCES = frozenset(
    {11, 12, 13, 14, 15, 21, 22, 23, *range(31, 38), *range(41, 47), *range(50, 55), *range(61, 66)}
    | {71, 81, 82, 83, 91}
)
_EARLIEST_BIRTH = date(1900, 1, 1)
# People paste from PDFs and IMEs: full-width digits and X arrive as often as ASCII ones.
_FULL_WIDTH = str.maketrans({chr(0xFF10 + i): str(i) for i in range(10)} | {"ｘ": "X", "Ｘ": "X", "x": "X"})


@dataclass(frozen=True)
class IdCheck:
    ok: bool
    reason: IdReason
    normalised: str


def normalise_id_number(raw: str) -> str:
    """Drops whitespace (full-width too), turns full-width digits and x/X into ASCII, x into X."""
    return "".join(raw.split()).translate(_FULL_WIDTH)


def check_char(first17: str) -> str:
    """The GB 11643-1999 check character for 17 ASCII digits."""
    if len(first17) != 17 or not set(first17) <= _DIGITS:
        raise ValueError("check_char needs exactly 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def _birth_date(digits: str) -> date | None:
    try:
        return date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def validate_id_number(raw: str, today: date) -> IdCheck:
    """Checks length, characters, province, birth date and check character, in that order."""
    value = normalise_id_number(raw)

    def fail(reason: IdReason) -> IdCheck:
        return IdCheck(ok=False, reason=reason, normalised=value)

    if not value:
        return fail("empty")
    if len(value) == 15 and set(value) <= _DIGITS:
        return fail("legacy_15")
    if len(value) != 18:
        return fail("length")
    first17, last = value[:17], value[17]
    if not set(first17) <= _DIGITS or last not in _CHECK_CHARS:
        return fail("chars")
    if int(value[:2]) not in _PROVINCES:
        return fail("area")
    born = _birth_date(value[6:14])
    if born is None or born < _EARLIEST_BIRTH:
        return fail("birth_date")
    if born > today:
        return fail("future_birth")
    if check_char(first17) != last:
        return fail("checksum")
    return IdCheck(ok=True, reason="ok", normalised=value)


def id_keyed_hash(secret: bytes, normalised: str) -> str:
    """HMAC-SHA256 hex of the normalised number: what we store instead of the number itself."""
    if not secret:
        # An empty key makes this a plain hash, which anyone can reverse by enumerating the ID space.
        raise ValueError("id_keyed_hash needs a non-empty secret")
    message = normalise_id_number(normalised).encode("utf-8")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
