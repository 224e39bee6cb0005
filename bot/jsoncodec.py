"""JSON on the hot path: orjson, several times faster than the standard library's json on a Telegram update,
a send's body and its answer. Where orjson refuses what json accepted (a lone surrogate from a "\\ud800" escape,
an integer over 64 bits), the standard library does the job, so nothing that was accepted before is refused.

orjson writes compact JSON (no spaces after "," and ":"): stored rows written before read the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

# Int keys become strings, as json.dumps does; datetimes, dataclasses and subclasses of str, int, dict and list go
# the standard library's way (through `default`, else refused), so orjson accepts nothing json would refuse.
_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_SUBCLASS)


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # raises ValueError when it is not JSON at all


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """UTF-8 JSON bytes."""
    try:
        return orjson.dumps(value, default=default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(value, default=default, separators=(",", ":")).encode()  # escaped: always valid UTF-8


def dumps_str(value: Any) -> str:
    """JSON text, for a text column."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"))
