"""bot/jsoncodec.py: orjson on the hot path, and the standard library wherever orjson refuses what json accepted."""

from __future__ import annotations

import json

import pytest

from bot import jsoncodec


def test_an_update_reads_as_the_standard_library_reads_it() -> None:
    raw = '{"update_id": 7, "message": {"text": "解绑 ✅", "chat": {"id": -1001234567890}}}'.encode()
    assert jsoncodec.loads(raw) == json.loads(raw)


def test_what_orjson_refuses_and_json_accepted_is_still_read() -> None:
    # A lone surrogate escape and an integer past 64 bits: valid JSON that orjson will not read.
    raw = b'{"text": "\\ud800 x", "big": 123456789012345678901234567890}'
    assert jsoncodec.loads(raw) == {"text": "\ud800 x", "big": 123456789012345678901234567890}
    with pytest.raises(ValueError):
        jsoncodec.loads(b'{"text": ')


def test_written_json_reads_back_the_same_and_is_utf8() -> None:
    value = {"text": "号清 Haoqing", 3: [1, 2.5, None, True], "nested": {"k": "v"}}
    written = jsoncodec.dumps(value)
    assert "号清".encode() in written  # not escaped
    assert json.loads(written) == {"text": "号清 Haoqing", "3": [1, 2.5, None, True], "nested": {"k": "v"}}
    assert jsoncodec.dumps_str(value) == written.decode()


def test_what_orjson_cannot_write_comes_out_escaped_and_valid() -> None:
    value = {"text": "\ud800", "big": 2**70}
    written = jsoncodec.dumps(value)
    written.decode("utf-8")  # always valid UTF-8, whatever it holds
    assert json.loads(written) == value
    assert json.loads(jsoncodec.dumps_str(value)) == value


def test_a_default_turns_other_objects_into_json() -> None:
    class Markup:
        def to_dict(self) -> dict[str, object]:
            return {"inline_keyboard": []}

    assert json.loads(jsoncodec.dumps({"reply_markup": Markup()}, lambda o: o.to_dict())) == {
        "reply_markup": {"inline_keyboard": []}}
    with pytest.raises(TypeError):
        jsoncodec.dumps({"x": object()})


def test_what_json_refuses_is_refused_and_str_subclasses_still_write() -> None:
    """A datetime or a dataclass in a step's data failed loudly before orjson; it still does, rather than turning
    into a string that reads back as another type."""
    import dataclasses
    import enum
    from datetime import UTC, datetime

    @dataclasses.dataclass
    class Point:
        x: int

    for value in ({"at": datetime.now(UTC)}, {"p": Point(1)}):
        with pytest.raises(TypeError):
            jsoncodec.dumps(value)
        with pytest.raises(TypeError):
            jsoncodec.dumps_str(value)

    class Mode(enum.StrEnum):
        HTML = "HTML"

    assert json.loads(jsoncodec.dumps({"parse_mode": Mode.HTML})) == {"parse_mode": "HTML"}
    assert jsoncodec.dumps_str({"parse_mode": Mode.HTML}) == '{"parse_mode":"HTML"}'
