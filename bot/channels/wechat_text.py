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
        if payload.get("numbered") is False:
            # The labels carry the list's own numbers ("10. 备份通讯录"): numbering them again makes "10" ambiguous.
            lines = "\n".join(f"· {choice.get('label', '')}" for choice in choices)
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


def paginate(text: str, limit: int) -> list[str]:
    """Pages of at most `limit` UTF-8 bytes, cut at line ends where a line allows, so a numbered choice is never
    split across two pages."""
    pages: list[str] = []
    current = ""
    for line in text.split("\n"):
        candidate = f"{current}\n{line}" if current else line
        if len(candidate.encode("utf-8")) <= limit:
            current = candidate
            continue
        if current:
            pages.append(current)
        while len(line.encode("utf-8")) > limit:
            head = line.encode("utf-8")[:limit].decode("utf-8", errors="ignore")
            pages.append(head)
            line = line[len(head):]
        current = line
    if current or not pages:
        pages.append(current)
    return pages


# --- template messages ----------------------------------------------------------------------------------
# What a template field can carry. Since 2023 WeChat shows no first/remark lines, colours or emoji, and cuts
# each keyword field short, so a push is spread over the template's fields as the operator maps them.
TEMPLATE_VALUES = ("summary", "detail", "text", "time")
# Limits by field type (the name without its number): thing 20 characters, character_string 32, phrase 5…
_TYPE_LIMITS = {"thing": 20, "character_string": 32, "phrase": 5, "name": 10, "number": 32, "letter": 32,
                "symbol": 5, "car_number": 8, "phone_number": 17, "amount": 32, "const": 20}


class TemplateFieldsError(ValueError):
    """WECHAT_TEMPLATE_FIELDS does not parse or names a value we do not have."""


def parse_template_fields(spec: str) -> dict[str, str]:
    """`thing1=summary,time2=time` -> {"thing1": "summary", "time2": "time"}."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not name or not name.replace("_", "").isalnum():
            raise TemplateFieldsError(f"WECHAT_TEMPLATE_FIELDS: `{part}` is not FIELD=VALUE")
        if value not in TEMPLATE_VALUES:
            raise TemplateFieldsError(f"WECHAT_TEMPLATE_FIELDS: `{value}` is not one of {', '.join(TEMPLATE_VALUES)}")
        mapping[name] = value
    return mapping


def field_limit(name: str, default: int) -> int:
    kind = name.rstrip("0123456789")
    return _TYPE_LIMITS.get(kind, default)


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())  # template fields are one line; newlines would show as nothing or as garbage
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def template_data(text: str, mapping: dict[str, str], when: str, default_limit: int) -> dict[str, dict[str, str]]:
    """The `data` of a template message: each mapped field filled from the push and cut to its type's limit."""
    first, _sep, rest = text.strip().partition("\n")
    values = {"summary": first, "detail": rest.strip() or first, "text": text, "time": when}
    return {name: {"value": values[value] if value == "time" else _cut(values[value], field_limit(name, default_limit))}
            for name, value in mapping.items()}
