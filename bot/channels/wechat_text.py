"""Turns the dispatcher's channel-neutral payloads into WeChat text: numbered choices, one message per step,
within WeChat's text size.

It must never add anything the dialog did not say, beyond the choice numbers and the hint how to use them.
"""

from __future__ import annotations

from typing import Any

from bot.i18n import Catalog

# WeChat refuses text messages over 2048 bytes; stay clear of that.
MAX_TEXT_BYTES = 2000


def text_of(catalog: Catalog, key: str, lang: str) -> str:
    return catalog.text(key, lang)


def numbered_index(payloads: list[dict[str, Any]]) -> int | None:
    """The payload whose choices the dispatcher maps typed numbers to: the last one with choices."""
    for index in range(len(payloads) - 1, -1, -1):
        if payloads[index].get("choices"):
            return index
    return None


def payload_text(payload: dict[str, Any], *, numbered: bool, hint: str) -> str:
    text = str(payload.get("text", ""))
    choices = payload.get("choices") or []
    if numbered and choices:
        lines = "\n".join(f"{n}. {choice.get('label', '')}" for n, choice in enumerate(choices, 1))
        text = f"{text}\n\n{lines}\n{hint}" if text else f"{lines}\n{hint}"
    return text


def clip(text: str, limit: int, marker: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    room = max(0, limit - len(marker.encode("utf-8")))
    return raw[:room].decode("utf-8", errors="ignore") + marker


def join_texts(texts: list[str]) -> str:
    return "\n\n".join(t for t in texts if t)


def split_fitting(texts: list[str], limit: int = MAX_TEXT_BYTES) -> int:
    """How many leading texts fit in one message (at least one; an oversized first one is clipped)."""
    total = 0
    for index, text in enumerate(texts):
        total += len(text.encode("utf-8")) + (2 if index else 0)
        if total > limit:
            return max(1, index)
    return len(texts)
