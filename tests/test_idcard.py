"""GB 11643-1999 format checks, including properties over generated numbers."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialogs.idcard import (
    IdCheck,
    check_char,
    id_keyed_hash,
    normalise_id_number,
    validate_id_number,
)

TODAY = date(2026, 6, 1)
PROVINCES = [*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47), *range(50, 55), *range(61, 66)]
PROVINCES += [71, 81, 82, 83, 91]


def test_known_valid_example() -> None:
    assert validate_id_number("11010519491231002X", TODAY) == IdCheck(True, "ok", "11010519491231002X")


def test_lower_case_x_is_accepted_and_normalised() -> None:
    check = validate_id_number("11010519491231002x", TODAY)
    assert check.ok and check.normalised == "11010519491231002X"


def test_known_bad_checksum() -> None:
    check = validate_id_number("340524198001010013", TODAY)
    assert (check.ok, check.reason) == (False, "checksum")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" 1101 0519 4912 3100 2X ", "11010519491231002X"),
        ("１１０１０５１９４９１２３１００２ｘ", "11010519491231002X"),
        ("１１０１０５１９４９１２３１００２Ｘ", "11010519491231002X"),
        ("110105\u300019491231002x", "11010519491231002X"),
        ("\t\n", ""),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise_id_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("110105491231002", "legacy_15"),
        ("11010519491231002", "length"),
        ("11010519491231002XX", "length"),
        ("1101051949123100", "length"),
        ("11010519491231002Y", "chars"),
        ("1101051949123100X2", "chars"),
        ("11010519491231A02X", "chars"),
        ("110105194912310٠2X", "chars"),  # an Arabic-Indic zero is a digit to str.isdigit, not to us
        ("00010519491231002X", "area"),
        ("16010519491231002X", "area"),
        ("99010519491231002X", "area"),
        ("110105194902300021", "birth_date"),  # 30 February
        ("110105189912310021", "birth_date"),  # before 1900
        ("110105194913010021", "birth_date"),  # month 13
        ("110105203001010021", "future_birth"),
    ],
)
def test_rejections(raw: str, reason: str) -> None:
    check = validate_id_number(raw, TODAY)
    assert not check.ok
    assert check.reason == reason


def test_birth_today_is_fine_and_tomorrow_is_not() -> None:
    def build(born: date) -> str:
        first17 = f"110105{born:%Y%m%d}123"
        return first17 + check_char(first17)

    assert validate_id_number(build(TODAY), TODAY).ok
    assert validate_id_number(build(TODAY + timedelta(days=1)), TODAY).reason == "future_birth"


def test_check_char_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        check_char("1234")
    with pytest.raises(ValueError):
        check_char("1101051949123100X")


def test_keyed_hash_is_stable_keyed_and_normalising() -> None:
    a = id_keyed_hash(b"k1", "11010519491231002X")
    assert a == id_keyed_hash(b"k1", "11010519491231002x")
    assert a == id_keyed_hash(b"k1", "１１０１０５１９４９１２３１００２Ｘ")
    assert a != id_keyed_hash(b"k2", "11010519491231002X")
    assert len(a) == 64 and "11010519491231002X" not in a
    with pytest.raises(ValueError):
        id_keyed_hash(b"", "11010519491231002X")


@st.composite
def valid_id_numbers(draw: st.DrawFn) -> str:
    province = draw(st.sampled_from(PROVINCES))
    rest_of_area = draw(st.integers(0, 9999))
    born = draw(st.dates(min_value=date(1900, 1, 1), max_value=TODAY))
    sequence = draw(st.integers(0, 999))
    first17 = f"{province:02d}{rest_of_area:04d}{born:%Y%m%d}{sequence:03d}"
    return first17 + check_char(first17)


@given(valid_id_numbers())
def test_any_well_formed_number_validates(number: str) -> None:
    check = validate_id_number(number, TODAY)
    assert check == IdCheck(True, "ok", number)
    assert validate_id_number(number.lower(), TODAY).ok


@given(valid_id_numbers(), st.integers(0, 17), st.integers(1, 10))
def test_changing_any_single_character_fails(number: str, position: int, shift: int) -> None:
    if position < 17:
        replacement = str((int(number[position]) + shift) % 10)
        if replacement == number[position]:  # shift of 10 would be a no-op
            replacement = str((int(replacement) + 1) % 10)
    else:
        alphabet = "10X98765432"
        replacement = alphabet[(alphabet.index(number[17]) + shift) % 11]
    changed = number[:position] + replacement + number[position + 1 :]
    assert changed != number
    assert not validate_id_number(changed, TODAY).ok
